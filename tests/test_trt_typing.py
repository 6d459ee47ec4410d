"""mypy over the TensorRT backend against tensorrt-stubs (TensorRT 10.13 Python API).

tensorrt-stubs 10.13.0.35.1 installs tensorrt/__init__.pyi without py.typed and its generated
tensorrt.pyi has a few lines mypy cannot parse (parameters named `in`, a non-default parameter
after defaults). This test writes a repaired copy of the installed stubs to a temp dir, points
MYPYPATH at it and runs mypy with mypy-trt.ini. Skips when mypy or the stubs are absent.
Install: pip install --no-deps tensorrt-stubs==10.13.0.35.1
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["src/t5rt/engines/trt_compat.py", "src/t5rt/engines/trt_build.py", "src/t5rt/engines/trt.py"]


def _stub_dirs() -> list[Path]:
    out = []
    for name in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return []
        d = Path(list(spec.submodule_search_locations)[0])
        if not (d / "__init__.pyi").is_file():
            return []
        out.append(d)
    return out


def write_repaired_stubs(dest: Path) -> Path:
    """Copy the installed tensorrt stubs to dest with their syntax errors repaired."""
    for src in _stub_dirs():
        (dest / src.name).mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.pyi"):
            text = f.read_text()
            text = re.sub(r"\b(in|out)(: list\[)", r"\1_\2", text)
            text = re.sub(r"(def \w+\(self[^)]*?), channel_axis: int\)", r"\1, channel_axis: int = ...)", text)
            (dest / src.name / f.name).write_text(text)
    return dest


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.skipif(not _stub_dirs(), reason="tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
def test_trt_backend_type_checks(tmp_path):
    stubs = write_repaired_stubs(tmp_path / "stubs")
    env = dict(os.environ, MYPYPATH=str(stubs))
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy-trt.ini",
                        "--cache-dir", str(tmp_path / "cache"), *FILES],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
