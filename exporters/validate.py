"""Pipeline stage "validate": each written graph in ONNX Runtime (CPU) against its torch module.

Random inputs (padded source rows, random cache positions), every output compared; prints
max abs / rel error per output; raises ExportValidationError naming graph and output when
rel = max|ort - torch| / max|torch| exceeds the tolerance. Runs on the fp32 graphs (the parity
reference) before precision passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import ExportValidationError
from .trace import decoder_step_dummy_inputs


def compare(graph: str, names: list[str], got: list[np.ndarray], want: list[np.ndarray], rtol: float,
            log=print) -> dict[str, tuple[float, float]]:
    """Per output (abs, rel) error; raises on the first output beyond rtol (after printing all)."""
    errors = {}
    for name, g, w in zip(names, got, want):
        if g.shape != w.shape:
            raise ExportValidationError(graph, name, float("inf"), float("inf"), rtol)
        abs_err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
        rel_err = abs_err / max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-12)
        errors[name] = (abs_err, rel_err)
        log(f"    {graph}/{name}: max abs {abs_err:.2e} rel {rel_err:.2e}")
    for name, (a, r) in errors.items():
        if not r <= rtol:  # also catches NaN
            raise ExportValidationError(graph, name, a, r, rtol)
    return errors


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT CPU warns that TensorScatter copies instead of aliasing: expected here
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # do not starve torch of CPUs
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds)


def validation_inputs(graph: str, cfg, max_input_len: int, max_output_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of graph (in wrapper argument order): batch 2, a padded source row."""
    g = torch.Generator().manual_seed(seed)
    B, S, T = 2, min(11, max_input_len), min(13, max_output_len)
    if graph == "encoder":
        ids = torch.randint(0, cfg.vocab_size, (B, S), generator=g)
        mask = torch.ones(B, S, dtype=torch.long)
        mask[1, S - S // 3:] = 0
        return ids, mask
    if graph == "cross_kv":
        return (torch.randn(B, S, cfg.d_model, generator=g),)
    return decoder_step_dummy_inputs(cfg, B, S, T, seed=seed)


def validate_graph(graph: str, path: Path, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                   input_names: list[str], cache_update: str = "write", rtol: float = 1e-4,
                   log=print) -> dict[str, tuple[float, float]]:
    """Run `path` in ORT and `module` in torch on `inputs`; compare every output of the graph."""
    with torch.no_grad():
        want = module(*inputs)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    want = [w.detach().cpu().numpy() for w in want]
    feeds = {n: x.cpu().numpy() for n, x in zip(input_names, inputs)}
    names, got = run_ort(path, feeds)
    if graph == "decoder_step" and cache_update == "inplace":
        want = _expected_present(want, feeds, names)
    return compare(graph, names, got, want, rtol, log)


def _expected_present(want: list[np.ndarray], feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Torch gives logits + new rows; the in-place graph gives logits + caches with row t replaced."""
    new_rows = dict(zip([n.replace("present_", "new_") for n in names[1:]], want[1:]))
    out = [want[0]]
    pos = feeds["position"]
    for n in names[1:]:
        cache = feeds[n.replace("present_", "")].copy()  # [B, H, T, Dk]
        row = new_rows[n.replace("present_", "new_")]  # [B, H, 1, Dk]
        for b, t in enumerate(pos):
            cache[b, :, t] = row[b, :, 0]
        out.append(cache)
    return out
