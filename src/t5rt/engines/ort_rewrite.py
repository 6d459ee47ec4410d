"""ONNX Runtime-only rewrite at load time: residual Add + RMSNorm -> SkipSimplifiedLayerNormalization.

Why: a small T5's decoder step under ORT is bound by per-kernel overhead. T5 is pre-norm, so
every residual sum h = Add(a, b) feeds both the next RMSNorm and the next residual Add. ORT's own
SkipLayerNormFusion only fires when the Add has the norm as its single consumer, so for T5 it
never does, and each sublayer costs an Add kernel plus a SimplifiedLayerNormalization kernel.
ORT's contrib op `com.microsoft.SkipSimplifiedLayerNormalization` computes both in one kernel:

    inputs  (input, skip, gamma)        outputs (normed, mean, inv_std_var, input_skip_bias_sum)

before (fp32, as the exporter writes HF's T5LayerNorm, see exporters/precision.py find_rmsnorms):

    x = Add(a, b)                                        # [B, T, d] residual sum -> other consumers
    [Cast(x, to=FLOAT)] -> Pow(., 2) -> ReduceMean(-1, keepdims) -> Add(eps) -> Sqrt
      -> Div(1, .) | Reciprocal -> Mul(x, .)   (or Div(x, sqrt))  -> Mul(weight) = y

after:

    y, _, _, x = SkipSimplifiedLayerNormalization(a, b, weight, epsilon=eps)

The fused node's outputs keep the names `y` and `x`, so every other consumer of the residual sum
(the next residual Add, a graph output) reads output 3 without being touched.

Only exact rewrites are made (fp32: the kernel computes sum, mean of squares and the scaling in
fp32, equal to the subgraph within fp32 rounding). Not rewritten, each for a logged reason:

- low-precision residual streams (fp16 / bf16 Adds): the kernel normalises the fp32 sum before
  rounding it to fp16, and fp16 exports clip the residual sum (Clip(±64000)) *between* the Add
  and the norm, which a fused kernel cannot reproduce (it would normalise the unclipped sum);
  bf16 is not exact either, and ORT registers no bf16 SkipSimplifiedLayerNormalization.
- the first norm of a stack (its input is an embedding Gather, not an Add): ORT already folds it
  into SimplifiedLayerNormalization.
- graphs whose weights live in external data files (> 2 GiB): the rewritten model could not be
  handed to ORT as in-memory bytes; they load unchanged.

bf16 graphs on the CUDA EP (`rewrite_model_file(..., cuda=True)`, `fuse_bf16_rmsnorm`): the
exporter keeps each norm's statistics in an fp32 island (Cast -> Pow -> ... -> Cast -> Mul(weight),
8 kernels). ORT's own SimplifiedLayerNormFusion would fold it into a mixed-type node its CUDA EP
has no kernel for, so t5rt turns that fusion off for bf16 graphs (ort.py `disabled_optimizers`),
and the island stays 8 kernels. The CUDA EP does register SimplifiedLayerNormalization for
(T=bf16, U=float, V=bf16) (onnxruntime/contrib_ops/cuda/layer_norm.cc; statistics in fp32), so
the island becomes that one node with bf16 in / weight / out. Not exact: HF rounds x * inv_rms
to bf16 before the weight multiply, the kernel rounds once after it (<= 1 bf16 ulp per element).
The residual Add stays separate: SkipSimplifiedLayerNormalization is registered for float and
MLFloat16 only (contrib_ops/cuda/cuda_contrib_kernels.cc). The decoder's final norm feeds the
fp32 logits island (fp32 weight; no (bf16, float, float) kernel) and is left alone. ORT's CPU EP
has SimplifiedLayerNormalization for float / double only, so the bf16 mode is CUDA-only.

This module needs the `onnx` package; without it `rewrite_model_file` returns no rewrite and the
reason (onnx is not a runtime dependency of t5rt).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("t5rt.ort_rewrite")

FUSED_OP = "SkipSimplifiedLayerNormalization"
NORM_OP = "SimplifiedLayerNormalization"  # ORT's, in the default domain (bf16 mode)
MS_DOMAIN = "com.microsoft"
_FLOAT = 1  # onnx.TensorProto.FLOAT
_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16
# Why fp16 / bf16 norms are left alone (see the module docstring).
LOW_PRECISION = "low-precision residual stream (fp16/bf16 norm island: fusing would not be exact)"


@dataclass
class RewriteReport:
    """What `fuse_skip_rmsnorm` did to one graph."""

    fused: int = 0                                    # Add + RMSNorm subgraphs replaced
    removed_nodes: int = 0                            # net nodes removed (incl. dead Constants)
    skipped: Counter = field(default_factory=Counter)  # reason -> RMSNorms left alone

    def summary(self) -> str:
        left = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{self.fused} fused ({self.removed_nodes} nodes fewer); left alone: {left}"


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def rewrite_model_file(path: str | Path, *, cuda: bool = False) -> tuple[bytes | None, str]:
    """-> (serialized rewritten model, why) or (None, why not). Never raises on graph content.

    None means: load `path` unchanged (onnx missing, external data, nothing to fuse).
    """
    onnx = _import_onnx()
    path = Path(path)
    if onnx is None:
        return None, "the onnx package is not installed"
    try:
        model = onnx.load(str(path), load_external_data=False)
        if _uses_external_data(model):
            return None, "weights are in external data files (> 2 GiB graph); loaded unchanged"
        report = fuse_skip_rmsnorm(model)
        if cuda and any(t.data_type == _BFLOAT16 for t in model.graph.initializer):
            # bf16 norm islands: ORT's CUDA EP has the all-bf16 kernel, its CPU EP has none
            bf16 = fuse_bf16_rmsnorm(model)
            if bf16.fused:
                report.skipped.pop(LOW_PRECISION, None)  # those were the bf16 islands, now fused
                report.skipped.update(bf16.skipped)
                report.fused += bf16.fused
                report.removed_nodes += bf16.removed_nodes
    except Exception as e:  # noqa: BLE001 - a speed rewrite must never stop a load
        log.warning("ort_rewrite: %s left unchanged: %s: %s", path.name, type(e).__name__, e)
        return None, f"rewrite failed ({type(e).__name__}: {e}); loaded unchanged"
    if report.fused == 0:
        return None, f"nothing to fuse ({report.summary()})"
    return model.SerializeToString(), report.summary()


def _uses_external_data(model: Any) -> bool:
    def ext(t: Any) -> bool:
        return t.data_location == 1  # TensorProto.EXTERNAL

    if any(ext(t) for t in model.graph.initializer):
        return True
    for n in model.graph.node:
        for a in n.attribute:
            if a.HasField("t") and ext(a.t):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# the rewrite
# ---------------------------------------------------------------------------------------------

class _Graph:
    """Index of one onnx GraphProto: producers, consumers, constants, inferred types."""

    def __init__(self, model: Any):
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.g = model.graph
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.g.output}
        self.inits = {t.name: t for t in self.g.initializer}
        self._np = numpy_helper
        self.types = self._infer_types(model)

    def _infer_types(self, model: Any) -> dict[str, tuple[int, list]]:
        """name -> (elem_type, dims) where dims are int | str (dim_param) | None."""
        from onnx import shape_inference

        # Infer on a copy without weight bytes: only the initializers' dims matter here, and
        # copying t5-base's weights through protobuf twice would double the load time.
        light = self.onnx.ModelProto(ir_version=model.ir_version)
        light.opset_import.extend(model.opset_import)
        src, dst = model.graph, light.graph
        for f in ("node", "input", "output", "value_info"):
            getattr(dst, f).extend(getattr(src, f))
        for t in src.initializer:
            if len(t.raw_data) > 4096:
                dst.input.append(self.onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            else:
                dst.initializer.append(t)
        try:
            inferred = shape_inference.infer_shapes(light)
        except Exception as e:  # noqa: BLE001 - inference is best effort; no types means no rewrite
            log.info("ort_rewrite: shape inference failed (%s); no types known", e)
            inferred = light
        types = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            tt = vi.type.tensor_type
            if not tt.HasField("elem_type"):
                continue
            dims = None
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            types[vi.name] = (tt.elem_type, dims)
        for t in model.graph.initializer:
            types[t.name] = (t.data_type, list(t.dims))
        return types

    def const(self, name: str) -> Any:
        """numpy value of an initializer or Constant node output, else None."""
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
                if a.name == "value_float":
                    return float(a.f)
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None:
            return None
        import numpy as np

        v = np.asarray(v)
        return float(v.reshape(())) if v.size == 1 else None

    def only_consumer(self, name: str, op: str) -> Any:
        cs = self.consumers.get(name, [])
        if len(cs) == 1 and cs[0].op_type == op and name not in self.outputs:
            return cs[0]
        return None


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class _Match:
    add: Any            # the residual Add(a, b)
    body: list          # [Cast], Pow, ReduceMean, Add(eps), Sqrt, [Div(1,.)|Reciprocal], Mul(x)|Div(x)
    weight_mul: Any     # Mul(weight, normed)
    gamma: str          # the weight's tensor name, 1-D float32 [d]
    eps: float


@dataclass
class _Stats:
    """The fp32 statistics of one RMSNorm: xf -> Pow .. Mul(xf, inv_rms) = normed."""

    xf: str             # the fp32 tensor normalised
    body: list          # Pow, ReduceMean, Add(eps), Sqrt, [Div(1,.)|Reciprocal], Mul(x)|Div(x)
    normed: Any         # the node computing xf * inv_rms
    mean: Any           # the ReduceMean (its axis is checked by the caller's form)
    eps: float


def _match_stats(G: _Graph, pow_: Any) -> _Stats | None:
    """Pow(xf, 2) -> ReduceMean -> Add(eps) -> Sqrt -> [Div(1, .) | Reciprocal] -> Mul(xf) | Div(xf)."""
    if len(pow_.input) != 2 or G.scalar(pow_.input[1]) != 2.0:
        return None
    xf = pow_.input[0]
    mean = G.only_consumer(pow_.output[0], "ReduceMean")
    add_eps = mean is not None and G.only_consumer(mean.output[0], "Add")
    if not add_eps:
        return None
    eps_in = [i for i in add_eps.input if i != mean.output[0]]
    eps = G.scalar(eps_in[0]) if len(eps_in) == 1 else None
    sqrt = eps is not None and G.only_consumer(add_eps.output[0], "Sqrt")
    if not sqrt:
        return None
    body = [pow_, mean, add_eps, sqrt]
    # x / sqrt(.)  or  x * (1 / sqrt(.))
    cs = G.consumers.get(sqrt.output[0], [])
    if len(cs) != 1 or sqrt.output[0] in G.outputs:
        return None
    c = cs[0]
    if c.op_type == "Div" and list(c.input) == [xf, sqrt.output[0]]:
        normed = c
    elif c.op_type == "Reciprocal" or (c.op_type == "Div" and c.input[1] == sqrt.output[0]
                                       and G.scalar(c.input[0]) == 1.0):
        normed = G.only_consumer(c.output[0], "Mul")
        if normed is None or sorted(normed.input) != sorted([xf, c.output[0]]):
            return None
        body.append(c)
    else:
        return None
    body.append(normed)
    return _Stats(xf=xf, body=body, normed=normed, mean=mean, eps=float(eps))


def _last_axis_keepdims(G: _Graph, mean: Any, x: str) -> str | None:
    """None if ReduceMean `mean` reduces the last axis of `x` with keepdims, else why not."""
    rank_dims = G.types.get(x, (None, None))[1]
    axes = _attr(mean, "axes")
    if axes is None and len(mean.input) > 1:
        a = G.const(mean.input[1])
        axes = None if a is None else [int(v) for v in a.reshape(-1)]
    if _attr(mean, "keepdims", 1) != 1 or axes is None or len(axes) != 1:
        return "ReduceMean is not over one axis with keepdims"
    if not (axes[0] == -1 or (rank_dims is not None and axes[0] == len(rank_dims) - 1)):
        return "ReduceMean is not over the last axis"
    return None


def _match_norm(G: _Graph, pow_: Any) -> tuple[_Match | None, str | None]:
    """RMSNorm whose Pow is `pow_` -> (match, None) | (None, reason) | (None, None) if not a norm."""
    st = _match_stats(G, pow_)
    if st is None:
        return None, None
    xf, body, normed, mean, eps = st.xf, st.body, st.normed, st.mean, st.eps
    wmul = G.only_consumer(normed.output[0], "Mul")
    if wmul is None:
        if G.only_consumer(normed.output[0], "Cast") is not None:
            return None, LOW_PRECISION
        return None, "no weight Mul after the norm"
    gamma = next((i for i in wmul.input if i != normed.output[0]), None)
    gval = G.const(gamma) if gamma else None
    if gval is None or getattr(gval, "ndim", 0) != 1 or str(gval.dtype) != "float32":
        return None, "norm weight is not a 1-D float32 constant"

    # the statistics must be over the last axis, keepdims
    why = _last_axis_keepdims(G, mean, xf)
    if why:
        return None, why

    # optional entry Cast(to=FLOAT) of an already-float32 tensor (a no-op the tracer left)
    x = xf
    p = G.producer.get(xf)
    if p is not None and p.op_type == "Cast":
        if _attr(p, "to") != _FLOAT or G.types.get(p.input[0], (None,))[0] != _FLOAT:
            return None, LOW_PRECISION
        if len(G.consumers.get(xf, [])) != 2 or xf in G.outputs:
            return None, "the norm's entry Cast has other consumers"
        body.insert(0, p)
        x = p.input[0]

    add = G.producer.get(x)
    if add is None or add.op_type != "Add":
        kind = "nothing" if add is None else add.op_type
        return None, f"norm input comes from {kind}, not a residual Add"
    a, b = add.input
    if G.const(a) is not None or G.const(b) is not None:
        return None, "Add has a constant input (not a residual sum)"
    ta, tb, tx = (G.types.get(n, (None, None)) for n in (a, b, x))
    if not (ta[0] == tb[0] == tx[0] == _FLOAT):
        return None, "residual Add is not float32"
    if not _same_shape_rank3(ta[1], tb[1]):
        return None, "Add inputs are not known to share one [B, T, d] shape"
    d = ta[1][2]
    if isinstance(d, int) and d > 0 and gval.shape[0] != d:
        return None, "norm weight length differs from d_model"
    return _Match(add=add, body=body, weight_mul=wmul, gamma=gamma, eps=eps), None


def _same_shape_rank3(da: list | None, db: list | None) -> bool:
    """Both rank 3 and no dimension known to differ (the kernel does not broadcast).

    Symbolic dims are compared as unknown: ONNX shape inference names the batch dim of a
    sublayer's output afresh (`unk__N`) after each Reshape, though it equals the residual's. A
    known 1 against an unknown dim could be a broadcast and is refused.
    """
    if da is None or db is None or len(da) != 3 or len(db) != 3:
        return False
    for x, y in zip(da, db):
        xi, yi = isinstance(x, int) and x > 0, isinstance(y, int) and y > 0
        if xi and yi and x != y:
            return False
        if xi != yi and 1 in (x, y):
            return False
    return True


@dataclass
class _Rewrite:
    replaced: Any       # the node whose place (and output names) the new node takes
    new: Any            # the fused node
    dropped: list       # the other matched nodes, removed


def fuse_skip_rmsnorm(model: Any) -> RewriteReport:
    """Rewrite `model` (an onnx.ModelProto) in place; see the module docstring for the pattern."""
    import onnx

    report = _rewrite_norms(model, _skip_rmsnorm_node)
    if report.fused and not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return report


def _skip_rmsnorm_node(G: _Graph, pow_: Any) -> tuple[_Rewrite | None, str | None]:
    """Residual Add + fp32 RMSNorm at `pow_` -> one SkipSimplifiedLayerNormalization."""
    import onnx

    m, why = _match_norm(G, pow_)
    if m is None:
        return None, why
    a, b = m.add.input
    fused = onnx.helper.make_node(
        FUSED_OP, [a, b, m.gamma], [m.weight_mul.output[0], "", "", m.add.output[0]],
        name=(m.weight_mul.name or m.add.name or "rmsnorm") + "/skip_rmsnorm",
        domain=MS_DOMAIN, epsilon=m.eps)
    return _Rewrite(m.weight_mul, fused, [m.add, *m.body]), None


def _rewrite_norms(model: Any, rewrite_at: Any) -> RewriteReport:
    """Apply `rewrite_at(G, pow_) -> (_Rewrite | None, why)` at every Pow of `model`, in place."""
    report = RewriteReport()
    if any(a.type in (5, 10) for n in model.graph.node for a in n.attribute):  # GRAPH / GRAPHS
        report.skipped["graph has control-flow subgraphs"] += 1
        return report
    G = _Graph(model)
    before = len(model.graph.node)
    drop: set[int] = set()
    replace: dict[int, Any] = {}   # id(replaced node) -> the fused node that takes its place
    for pow_ in list(model.graph.node):
        if pow_.op_type != "Pow":
            continue
        r, why = rewrite_at(G, pow_)
        if r is None:
            if why:
                report.skipped[why] += 1
            continue
        replace[id(r.replaced)] = r.new
        drop.update(id(n) for n in r.dropped)
        report.fused += 1
    if report.fused:
        _apply(model, G, replace, drop)
        report.removed_nodes = before - len(model.graph.node)
    return report


def _apply(model: Any, G: _Graph, replace: dict[int, Any], drop: set[int]) -> None:
    """Put each fused node in its replaced node's place, drop the matched ones, tidy up."""
    nodes = [replace.get(id(n), n) for n in model.graph.node if id(n) not in drop]
    nodes = _drop_dead_constants(nodes, {o.name for o in model.graph.output})
    nodes = _toposort(nodes, {i.name for i in model.graph.input} | set(G.inits))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    dead = [k for k, t in enumerate(model.graph.initializer) if t.name not in used]  # eps / 2 / 1
    for k in reversed(dead):  # in place: re-adding the kept weights would copy them all
        del model.graph.initializer[k]


# ---------------------------------------------------------------------------------------------
# bf16 graphs on the CUDA EP: the fp32 norm island -> one all-bf16 SimplifiedLayerNormalization
# ---------------------------------------------------------------------------------------------

def _bf16_norm_node(G: _Graph, pow_: Any) -> tuple[_Rewrite | None, str | None]:
    """bf16 RMSNorm island whose Pow is `pow_` -> (one SimplifiedLayerNormalization, None) |
    (None, reason) | (None, None) if `pow_` is no norm."""
    import onnx

    st = _match_stats(G, pow_)
    if st is None:
        return None, None
    entry = G.producer.get(st.xf)
    if entry is None or entry.op_type != "Cast" or _attr(entry, "to") != _FLOAT \
            or G.types.get(entry.input[0], (None,))[0] != _BFLOAT16:
        return None, None  # not a bf16 island (fp32 graphs are fuse_skip_rmsnorm's)
    x = entry.input[0]
    if sorted(id(c) for c in G.consumers.get(st.xf, [])) != sorted([id(pow_), id(st.normed)]) \
            or st.xf in G.outputs:
        return None, "the norm's entry Cast has other consumers"
    why = _last_axis_keepdims(G, st.mean, x)
    if why:
        return None, why
    exit_ = G.only_consumer(st.normed.output[0], "Cast")
    if exit_ is None or _attr(exit_, "to") != _BFLOAT16:
        # the decoder's final norm feeds the fp32 logits island (exporters keep_logits_fp32):
        # bf16 x with an fp32 weight has no CUDA kernel ((bf16, float, bf16) only)
        return None, "norm output stays fp32 (final norm before fp32 logits)"
    wmul = G.only_consumer(exit_.output[0], "Mul")
    gamma = wmul is not None and next((i for i in wmul.input if i != exit_.output[0]), None)
    gtype, gdims = G.types.get(gamma, (None, None)) if gamma else (None, None)
    if not gamma or gtype != _BFLOAT16 or gdims is None or len(gdims) != 1 or G.const(gamma) is None:
        return None, "norm weight is not a 1-D bfloat16 constant"
    xdims = G.types.get(x, (None, None))[1]
    d = xdims[-1] if xdims else None
    if not (isinstance(d, int) and d > 0 and gdims[0] == d):
        return None, "norm weight length is not known to equal the hidden size"
    norm = onnx.helper.make_node(
        NORM_OP, [x, gamma], [wmul.output[0]], name=(wmul.name or "rmsnorm") + "/rmsnorm_bf16",
        axis=-1, epsilon=st.eps, stash_type=1)
    return _Rewrite(wmul, norm, [entry, *st.body, exit_]), None


def fuse_bf16_rmsnorm(model: Any) -> RewriteReport:
    """Rewrite a bf16 graph's RMSNorm islands in place (CUDA EP only; see the module docstring).

    before (exporters/precision.py keep_rmsnorm_fp32, HF's T5LayerNorm in bf16):
        x [B, T, d] bf16 -> Cast(to=FLOAT) -> Pow(2) -> ReduceMean(-1) -> Add(eps) -> Sqrt
          -> Div(1, .) -> Mul(xf, .) -> Cast(to=BFLOAT16) -> Mul(weight [d] bf16) = y [B, T, d] bf16
    after:
        y = SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)
    One rounding differs: HF rounds x * inv_rms to bf16 before the weight multiply, the kernel
    multiplies in fp32 and rounds once (at most one bf16 ulp per element).
    """
    return _rewrite_norms(model, _bf16_norm_node)


def _drop_dead_constants(nodes: list, graph_outputs: set[str]) -> list:
    """Constant nodes (eps, 2, 1) that fed only the removed norms."""
    used = {i for n in nodes for i in n.input} | graph_outputs
    return [n for n in nodes if n.op_type != "Constant" or any(o in used for o in n.output)]


def _toposort(nodes: list, available: set[str]) -> list:
    """Stable topological order (original order where it is already valid)."""
    have = set(available) | {""}
    producers = {o for n in nodes for o in n.output}
    have |= {i for n in nodes for i in n.input if i not in producers}  # outer-scope / optional names
    out: list = []
    pending = list(nodes)
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise ValueError(f"ort_rewrite produced a cycle at node {rest[0].name!r}")
        pending = rest
    return out
