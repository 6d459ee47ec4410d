"""Graph passes for speed: fewer kernels per graph run under ONNX Runtime (and TensorRT).

The decoder step of a small T5 is bound by kernel launches, not by memory (t5-small fp32 on an
H100: ~0.42 ms per step against a ~0.05 ms memory floor, ~1.5-4 us per kernel even inside a CUDA
graph). These passes cut the number of nodes ORT turns into kernels while keeping the graph
standard ONNX (TensorRT must parse it) and the values equal within fp32 rounding:

    drop_noop_casts        Cast(to=float) of a float tensor -> its input (the tracer routes T5's
                           residual stream through RMSNorm's `.to(float32)`; in fp16 exports that
                           became a fp16->fp32->fp16 Cast round trip per norm)
    static_reshapes        Reshape shapes computed from Shape/Slice/Concat -> constants with 0 / -1
    fuse_sibling_matmuls   MatMuls that read the same activation with constant weights -> one
                           MatMul on the concatenated weight + Split (q/k/v, gated wi_0/wi_1,
                           the cross_kv graph's 2L projections -> one GEMM)
    fuse_head_transposes   per-head Reshape -> Transpose after such a Split -> one Reshape, one
                           Transpose, then a Split on the head axis (K^T as a last-two-dims
                           Transpose that ORT folds into FusedMatMul)

`apply_fusion(graph, options)` runs the enabled passes in that order; the pipeline calls it in
its patch stage on the fp32 graphs (before the opset upgrade and the precision passes), and the
validate stage then checks each fused graph against the torch module.

Every pass can be switched off, for measuring, with `FusionOptions` or the environment variable
T5RT_FUSION: "all" (default), "none", or a comma list of pass names; a leading "-" removes one
from "all" (`T5RT_FUSION=-fuse_head_transposes`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from t5rt.errors import InvalidOptionError

PASSES = ("drop_noop_casts", "static_reshapes", "fuse_sibling_matmuls", "fuse_head_transposes")
ENV = "T5RT_FUSION"
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class FusionOptions:
    """Which speed passes run (all by default). See the module docstring for what each does."""

    drop_noop_casts: bool = True
    static_reshapes: bool = True
    fuse_sibling_matmuls: bool = True
    fuse_head_transposes: bool = True

    @classmethod
    def from_spec(cls, spec: str | None) -> "FusionOptions":
        """Parse "all" | "none" | "a,b" | "-a,-b" (see the module docstring); None or "" -> all."""
        spec = (spec or "all").strip()
        if spec == "all":
            return cls()
        if spec == "none":
            return cls(**{p: False for p in PASSES})
        names = [s.strip() for s in spec.split(",") if s.strip()]
        unknown = [n.lstrip("-") for n in names if n.lstrip("-") not in PASSES]
        if unknown:
            raise InvalidOptionError(f"{ENV}: unknown fusion pass {unknown[0]!r}; use all, none, or a comma "
                                     f"list of {', '.join(PASSES)} (a leading '-' removes one from all)")
        if all(n.startswith("-") for n in names):
            return cls(**{p: p not in {n[1:] for n in names} for p in PASSES})
        if any(n.startswith("-") for n in names):
            raise InvalidOptionError(f"{ENV}={spec!r} mixes enabled and '-' removed passes; use one form")
        return cls(**{p: p in names for p in PASSES})

    @classmethod
    def from_env(cls) -> "FusionOptions":
        return cls.from_spec(os.environ.get(ENV))

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(p for p in PASSES if getattr(self, p))


def apply_fusion(graph: gs.Graph, options: FusionOptions | None = None) -> gs.Graph:
    """Run the enabled passes, in PASSES order, on an fp32 graph (any of the three)."""
    options = options or FusionOptions.from_env()
    for name in options.enabled:
        graph = globals()[name](graph)
    return graph


# ---------------------------------------------------------------------------------------------
# drop_noop_casts
# ---------------------------------------------------------------------------------------------

def drop_noop_casts(graph: gs.Graph) -> gs.Graph:
    """Casts to the dtype their input already has are removed.

    before: x -> Cast(to=FLOAT) -> xf; RMSNorm reads xf and so does the next residual Add (a no-op
            `.to(float32)` returns the same tensor, and the tracer records later uses of it as xf).
            precision.py then makes that Cast fp16->fp32 and adds fp32->fp16 for the residual Add:
            two Cast kernels per norm on the residual stream.
    after:  every reader of xf reads x; in fp16/bf16 exports the norm gets the one fp32 Cast it needs.
    A Cast that produces a graph output is kept (its name is the output's).
    """
    elems = {name: e for name, (_, e) in _infer(graph).items()}
    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Cast" or id(node.outputs[0]) in outputs:
            continue
        x, y = node.inputs[0], node.outputs[0]
        src = elems.get(x.name) if not isinstance(x, gs.Constant) else None
        if src is None or src != node.attrs.get("to"):
            continue
        for consumer in list(y.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is y:
                    consumer.inputs[i] = x
        node.outputs.clear()
    return graph.cleanup().toposort()


# ---------------------------------------------------------------------------------------------
# static_reshapes
# ---------------------------------------------------------------------------------------------

def static_reshapes(graph: gs.Graph) -> gs.Graph:
    """Reshape targets built at run time from the input's own shape become constants.

    before: x [B,S,512] -> Shape -> Slice[0:2] -> Concat(., [8, 64], Slice[3:]) -> Reshape(x, .)
            (torch's unflatten / flatten: 3 Shape + 6 Slice + 3 Concat per attention layer)
    after:  Reshape(x, [0, 0, 8, 64])  (0 copies the input dim, allowzero=0), or [0, 0, -1]
            for the head merge; the shape subgraph is removed when nothing else reads it.
    Only rewrites a target whose every entry is a literal or input dim i placed at position i;
    at most one other input-derived entry becomes -1.
    """
    ranks = {name: r for name, (r, _) in _infer(graph).items() if r is not None}
    for node in graph.nodes:
        if node.op != "Reshape" or isinstance(node.inputs[1], gs.Constant) or node.attrs.get("allowzero", 0):
            continue
        data = node.inputs[0]
        dims = _shape_expr(node.inputs[1], ranks)
        if dims is None:
            continue
        target, unknown = [], 0
        for pos, d in enumerate(dims):
            if isinstance(d, int):
                if d == -1:
                    unknown += 1
                target.append(d)
            elif d[0] is data and d[1] == pos:
                target.append(0)
            else:
                unknown += 1
                target.append(-1)
        if unknown > 1:
            continue
        node.inputs[1] = gs.Constant(f"{node.name}/static_shape", np.array(target, np.int64))
    return graph.cleanup().toposort()


def _shape_expr(t: gs.Tensor, ranks: dict[str, int]) -> list | None:
    """A 1-D int64 shape tensor as a list of ints and (tensor, dim) pairs, or None if not understood."""
    if isinstance(t, gs.Constant):
        v = np.asarray(t.values)
        return [int(x) for x in v.reshape(-1)] if v.ndim <= 1 and v.dtype.kind == "i" else None
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.op == "Concat" and node.attrs.get("axis", 0) == 0:
        out: list = []
        for part in node.inputs:
            e = _shape_expr(part, ranks)
            if e is None:
                return None
            out += e
        return out
    if node.op == "Unsqueeze":
        src = node.inputs[0]
        if src.inputs and src.inputs[0].op == "Gather":
            return _shape_expr(src, ranks)
        return None
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0:
        shape_node = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if shape_node is None or shape_node.op != "Shape" or not isinstance(node.inputs[1], gs.Constant):
            return None
        idx = int(np.asarray(node.inputs[1].values).reshape(-1)[0])
        x = shape_node.inputs[0]
        r = ranks.get(x.name)
        if idx < 0:
            if r is None:
                return None
            idx += r
        return [(x, idx)]
    if node.op == "Slice":
        shape_node = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if (shape_node is None or shape_node.op != "Shape" or shape_node.attrs
                or not all(isinstance(i, gs.Constant) for i in node.inputs[1:])):
            return None
        starts, ends = (int(np.asarray(c.values).reshape(-1)[0]) for c in node.inputs[1:3])
        axes = int(np.asarray(node.inputs[3].values).reshape(-1)[0]) if len(node.inputs) > 3 else 0
        steps = int(np.asarray(node.inputs[4].values).reshape(-1)[0]) if len(node.inputs) > 4 else 1
        x = shape_node.inputs[0]
        r = ranks.get(x.name)
        if axes != 0 or steps != 1 or r is None:
            return None
        starts, ends = (max(0, min(v + r if v < 0 else v, r)) for v in (starts, ends))
        return [(x, i) for i in range(starts, ends)]
    return None


def _infer(graph: gs.Graph) -> dict[str, tuple[int | None, int]]:
    """(rank or None, ONNX elem type) of every tensor ONNX shape inference can type (weights' bytes left out)."""
    g = graph.copy()
    for t in list(g.tensors().values()):
        if isinstance(t, gs.Constant) and int(np.prod(t.shape)) > 64:
            t.to_variable(dtype=t.export_dtype, shape=list(t.shape))
            t.type = "tensor_type"
            g.inputs.append(t)
    model = onnx.shape_inference.infer_shapes(gs.export_onnx(g, do_type_check=False))
    out = {}
    for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        tt = vi.type.tensor_type
        out[vi.name] = (len(tt.shape.dim) if tt.HasField("shape") else None, tt.elem_type)
    return out


# ---------------------------------------------------------------------------------------------
# fuse_sibling_matmuls
# ---------------------------------------------------------------------------------------------

def fuse_sibling_matmuls(graph: gs.Graph) -> gs.Graph:
    """MatMuls of one activation by constant weights -> one MatMul + Split on the last axis.

    before: h -> MatMul(h, Wq[d,HDk]) -> q;  h -> MatMul(h, Wk) -> k;  h -> MatMul(h, Wv) -> v
    after:  h -> MatMul(h, [Wq|Wk|Wv] [d,3HDk]) -> Split(axis=-1, [HDk]*3) -> q, k, v
    Also fuses gated FFN wi_0/wi_1, and in the cross_kv graph the k/v projections of every
    decoder layer ([d, 2*L*H*Dk], one GEMM instead of 2L). Weights are concatenated in graph
    order; each column block computes exactly the dot products it did before.
    """
    if graph.opset < 13:       # Split takes its sizes as an input from opset 13 on
        return graph
    groups: dict[tuple, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2:
            continue
        a, w = node.inputs
        if not isinstance(a, gs.Variable) or not isinstance(w, gs.Constant) or len(w.shape) != 2:
            continue
        groups.setdefault((id(a), int(w.shape[0]), np.dtype(w.dtype).str), []).append(node)
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        a = nodes[0].inputs[0]
        weights = [np.asarray(n.inputs[1].values) for n in nodes]
        sizes = [int(w.shape[1]) for w in weights]
        name = _fused_name([n.name for n in nodes])
        fused_w = gs.Constant(f"{name}.weight", np.ascontiguousarray(np.concatenate(weights, axis=1)))
        fused = gs.Variable(f"{name}_output_0", dtype=nodes[0].outputs[0].dtype)
        graph.nodes.append(gs.Node("MatMul", name, inputs=[a, fused_w], outputs=[fused]))
        outs = [n.outputs[0] for n in nodes]
        for n in nodes:
            n.outputs.clear()
        split_sizes = gs.Constant(f"{name}/split_sizes", np.array(sizes, np.int64))
        graph.nodes.append(gs.Node("Split", f"{name}/Split", attrs={"axis": -1},
                                   inputs=[fused, split_sizes], outputs=outs))
    return graph.cleanup().toposort()


def _fused_name(names: list[str]) -> str:
    """'/a/b/q/MatMul', '/a/b/k/MatMul' -> '/a/b/q+k/MatMul' (common prefix, joined differing parts)."""
    parts = [n.split("/") for n in names]
    pre = 0
    while all(len(p) > pre + 1 and p[pre] == parts[0][pre] for p in parts):
        pre += 1
    mids = ["_".join(p[pre:-1]) or p[-1] for p in parts]
    joined = "+".join(mids) if len(mids) <= 4 else f"{mids[0]}+...+{mids[-1]}({len(mids)})"
    return "/".join(parts[0][:pre] + [joined, "MatMul"])


# ---------------------------------------------------------------------------------------------
# fuse_head_transposes
# ---------------------------------------------------------------------------------------------

_BSHD_TO_BHSD = [0, 2, 1, 3]      # [B,S,H,Dk] -> [B,H,S,Dk]
_BSHD_TO_BHDS = [0, 2, 3, 1]      # [B,S,H,Dk] -> [B,H,Dk,S]  (K^T)


def fuse_head_transposes(graph: gs.Graph) -> gs.Graph:
    """Head split of a fused projection: one Reshape and one Transpose instead of one per part.

    before: X [B,S,n*HDk] -> Split(-1) -> x_i -> Reshape([0,0,H,Dk]) -> Transpose([0,2,1,3]) -> y_i
            (k: Transpose([0,2,3,1]) -> K^T [B,H,Dk,S])
    after:  X -> Reshape([0,0,n*H,Dk]) -> Transpose([0,2,1,3]) [B,nH,S,Dk] -> Split(axis=1) -> y_i
            (k: y_k -> Transpose([0,1,3,2]), which ORT's MatmulTransposeFusion folds into the
            following MatMul as FusedMatMul(transB=1))
    Runs after static_reshapes (needs constant head shapes) and fuse_sibling_matmuls.
    """
    outputs = {id(t) for t in graph.outputs}
    for split in list(graph.nodes):
        if split.op != "Split" or split.attrs.get("axis") != -1 or len(split.inputs) != 2:
            continue
        sizes = split.inputs[1]
        if not isinstance(sizes, gs.Constant) or len(set(np.asarray(sizes.values).tolist())) != 1:
            continue
        chain = []
        for part in split.outputs:
            if id(part) in outputs or len(part.outputs) != 1 or part.outputs[0].op != "Reshape":
                break
            reshape = part.outputs[0]
            shape = reshape.inputs[1]
            mid = reshape.outputs[0]
            if (not isinstance(shape, gs.Constant) or id(mid) in outputs or len(mid.outputs) != 1
                    or mid.outputs[0].op != "Transpose" or reshape.attrs.get("allowzero", 0)):
                break
            target = np.asarray(shape.values).tolist()
            perm = list(mid.outputs[0].attrs.get("perm", []))
            if len(target) != 4 or target[:2] != [0, 0] or perm not in (_BSHD_TO_BHSD, _BSHD_TO_BHDS):
                break
            chain.append((tuple(target[2:]), perm, mid.outputs[0]))
        if len(chain) != len(split.outputs) or len({c[0] for c in chain}) != 1:
            continue
        (h, dk), n = chain[0][0], len(chain)
        x = split.inputs[0]
        base = split.name.rsplit("/", 1)[0]
        heads = gs.Variable(f"{base}/heads_output_0", dtype=x.dtype)
        bhsd = gs.Variable(f"{base}/heads_transposed_output_0", dtype=x.dtype)
        graph.nodes.append(gs.Node("Reshape", f"{base}/heads", inputs=[
            x, gs.Constant(f"{base}/heads_shape", np.array([0, 0, n * h, dk], np.int64))], outputs=[heads]))
        graph.nodes.append(gs.Node("Transpose", f"{base}/heads_transpose", attrs={"perm": _BSHD_TO_BHSD},
                                   inputs=[heads], outputs=[bhsd]))
        parts = []
        for i, (_, perm, transpose) in enumerate(chain):
            y = transpose.outputs[0]
            transpose.outputs.clear()
            if perm == _BSHD_TO_BHSD:
                parts.append(y)
            else:
                p = gs.Variable(f"{base}/head_part{i}_output_0", dtype=x.dtype)
                graph.nodes.append(gs.Node("Transpose", f"{base}/head_part{i}_T", attrs={"perm": [0, 1, 3, 2]},
                                           inputs=[p], outputs=[y]))
                parts.append(p)
        split.outputs.clear()
        graph.nodes.append(gs.Node("Split", f"{base}/heads_split", attrs={"axis": 1}, outputs=parts, inputs=[
            bhsd, gs.Constant(f"{base}/heads_split_sizes", np.array([h] * n, np.int64))]))
    return graph.cleanup().toposort()


def count_ops(graph_or_model: gs.Graph | onnx.ModelProto | Iterable) -> dict[str, int]:
    """Op type -> node count, most frequent first (a gs.Graph, a ModelProto or an iterable of nodes)."""
    if isinstance(graph_or_model, onnx.ModelProto):
        ops = [n.op_type for n in graph_or_model.graph.node]
    elif isinstance(graph_or_model, gs.Graph):
        ops = [n.op for n in graph_or_model.nodes]
    else:
        ops = [getattr(n, "op_type", None) or n.op for n in graph_or_model]
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
