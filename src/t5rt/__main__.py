"""`python -m t5rt ...` = the `t5rt` command."""

import sys

from .cli import main

sys.exit(main())
