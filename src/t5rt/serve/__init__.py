"""`t5rt serve`: the service core behind HTTP on Ray Serve (DESIGN.md §10).

    t5rt serve DIR --replicas 2                  # CLI: local Ray, http://127.0.0.1:8000
    app = t5rt.serve.deployment(DIR, replicas=2) # Python: a Ray Serve application to run or compose

Modules: protocol (the HTTP documents and error statuses), placement (what each replica
reserves), app (the application and ServeOptions), ingress (HTTP routes, auth, retries),
replica (one runtime per replica), metrics (/metrics), cli (`t5rt serve`), client (a small
Python client). Needs the `serve` extra (ray[serve]); `import t5rt` does not import this package.
"""

from __future__ import annotations

from typing import Any

from .app import ServeOptions


def deployment(directory: Any, options: ServeOptions | None = None, **kwargs: Any) -> Any:
    """A Ray Serve application serving the export in `directory` (see t5rt.serve.app.deployment)."""
    from .app import deployment as build

    return build(directory, options, **kwargs)


__all__ = ["ServeOptions", "deployment"]
