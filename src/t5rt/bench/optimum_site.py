"""Make a folder + launcher that give a Python interpreter optimum-onnx, for --optimum-python.

optimum-onnx 0.1.0 pins transformers<4.58; the bench's main process uses transformers 5. This
downloads the Optimum side as wheels into DIR/wheels (about 25 MB; only the pins below: torch,
numpy, onnx and onnxruntime come from the interpreter that runs the launcher) and writes
DIR/python, a launcher that installs them offline into DIR/site on first use, puts DIR/site
first on PYTHONPATH and runs python3. The folder can be made on one machine and carried to
another (same CPU arch; --python-version names the target interpreter):

    python -m t5rt.bench.optimum_site .gpu/optimum --python-version 3.12
    python -m t5rt.bench --optimum-python .gpu/optimum/python

(On a GPU, the onnxruntime it finds must be onnxruntime-gpu for the CUDA EP.)
"""

from __future__ import annotations

import argparse
import stat
import subprocess
import sys
from pathlib import Path

# Exact versions verified together (bench/README.md); transformers<4.58 is optimum-onnx's pin.
PINS = ("optimum-onnx==0.1.0", "optimum==2.1.0", "transformers==4.57.6", "tokenizers==0.22.2",
        "huggingface_hub==0.36.2", "safetensors", "requests", "urllib3", "charset-normalizer",
        "idna", "certifi", "filelock", "fsspec", "tqdm", "pyyaml", "regex", "packaging")

LAUNCHER = """#!/bin/sh
# Python with optimum-onnx (made by python -m t5rt.bench.optimum_site)
here="$(cd "$(dirname "$0")" && pwd)"
py="${T5RT_OPTIMUM_BASE_PYTHON:-python3}"
if [ ! -f "$here/site/.done" ]; then
  "$py" -m pip install --quiet --no-deps --no-index --target "$here/site" "$here"/wheels/*.whl >&2 \\
    && touch "$here/site/.done" || exit 1
fi
PYTHONPATH="$here/site${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$@"
"""


def build(out: Path, python_version: str | None = None) -> Path:
    wheels = out / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), *PINS]
    if python_version:  # wheels for another interpreter (e.g. the GPU machine's 3.12)
        cmd[4:4] = ["--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_28_x86_64"]
    subprocess.run(cmd, check=True)
    launcher = out / "python"
    launcher.write_text(LAUNCHER)
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m t5rt.bench.optimum_site", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to create (wheels/ and the python launcher)")
    p.add_argument("--python-version", default=None, help="target interpreter, e.g. 3.12")
    a = p.parse_args(argv)
    print(build(a.out.resolve(), a.python_version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
