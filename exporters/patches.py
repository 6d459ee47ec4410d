"""onnx-graphsurgeon passes applied to the traced fp32 graphs (pipeline stage "patch").

Each pass is one function `pass(graph, ...) -> graph` with a before/after comment and ends
with `graph.cleanup().toposort()`. The precision passes (fp16 safety, fp16/bf16 conversion)
live in exporters/precision.py and run on the graphs these passes leave.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from t5rt.manifest import TensorSpec

from .errors import ExportError

# manifest dtype name -> numpy dtype used by graphsurgeon (bfloat16 has none: onnx enum instead)
_NP = {"int64": np.int64, "int32": np.int32, "bool": np.bool_, "float32": np.float32, "float16": np.float16,
       "bfloat16": onnx.TensorProto.BFLOAT16}


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Constant folding + dead-node removal.

    before: Shape->Gather->Unsqueeze chains on static dims, Gather(relative_attention_bias, Constant
            buckets), Casts/Reshapes of constants, nodes whose outputs nobody reads.
    after:  those subgraphs are initializers; only nodes that depend on graph inputs remain.
    """
    graph.fold_constants()
    return graph.cleanup().toposort()


def fuse_bias_lookup(graph: gs.Graph) -> gs.Graph:
    """One Gather per relative-position lookup instead of two.

    before: idx -> Gather(bucket_table[R], idx) -> buckets -> Gather(relative_attention_bias.weight[NB,H]) -> [.., H]
    after:  idx -> Gather(bias_by_position[R, H], idx) -> [.., H]   (bias_by_position = weight[bucket_table])
    """
    for node in list(graph.nodes):
        if node.op != "Gather" or node.attrs.get("axis", 0) != 0:
            continue
        weight, buckets = node.inputs[0], node.inputs[1]
        inner = buckets.inputs[0] if buckets.inputs else None
        if not (isinstance(weight, gs.Constant) and inner is not None and inner.op == "Gather"
                and inner.attrs.get("axis", 0) == 0 and isinstance(inner.inputs[0], gs.Constant)
                and len(buckets.outputs) == 1):
            continue
        table = inner.inputs[0].values
        fused = gs.Constant(f"{weight.name}.by_position", np.ascontiguousarray(weight.values[table]))
        node.inputs = [fused, inner.inputs[1]]
    return graph.cleanup().toposort()


def find_cache_merges(graph: gs.Graph, self_k: Sequence[str], self_v: Sequence[str]) -> dict[str, gs.Node]:
    """cache input name -> the Where(row == t, new_row, cache) node that merges this token's row into it."""
    by_name = {t.name: t for t in graph.inputs}
    merges = {}
    for name in (*self_k, *self_v):
        if name not in by_name:
            raise ExportError(f"decoder_step has no input {name!r}; was it traced from exporters/wrap.py?")
        users = [n for n in by_name[name].outputs if n.op == "Where" and n.inputs[2] is by_name[name]]
        if len(users) != 1:
            raise ExportError(f"decoder_step: expected one cache-merge Where reading {name!r}, found {len(users)}")
        merges[name] = users[0]
    return merges


def name_io(graph: gs.Graph, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
            graph_name: str = "graph") -> gs.Graph:
    """Graph inputs/outputs carry exactly the manifest's names, dtypes and symbolic shapes, in its order.

    before: tracer shapes (`["batch", 1]`, outputs with dims like "Reshapelogits_dim_0"), tracer order.
    after:  e.g. logits [batch, V] float32, self_k.0 [batch, H, cache_len, Dk]; order = manifest order.
            Cache-merge Where nodes (write form) are named /decoder/block.{l}/cache_merge_{k|v}.
    """
    for want, where in ((inputs, graph.inputs), (outputs, graph.outputs)):
        have = {t.name: t for t in where}
        missing = [s.name for s in want if s.name not in have]
        extra = sorted(set(have) - {s.name for s in want})
        if missing or extra:
            raise ExportError(f"{graph_name}: I/O does not match the manifest contract "
                              f"(missing {missing}, unexpected {extra})")
        ordered = []
        for s in want:
            t = have[s.name]
            t.dtype = _NP[s.dtype]
            t.shape = list(s.shape)
            ordered.append(t)
        where[:] = ordered
    for node in graph.nodes:
        if node.op == "Where" and len(node.inputs) == 3 and node.inputs[2] in graph.inputs:
            name = node.inputs[2].name
            if name.startswith(("self_k.", "self_v.")):
                kind, layer = name.split(".")
                node.name = f"/decoder/block.{layer}/cache_merge_{kind[-1]}"
    return graph.cleanup().toposort()


def cache_update_inplace(graph: gs.Graph, self_k: Sequence[str], self_v: Sequence[str],
                         position: str = "position") -> gs.Graph:
    """The in-place cache form (needs opset >= 24: run upgrade_opset first).

    before: K_eff = Where(row == t, new_k, self_k.l)  [B,H,T,Dk], attention reads K_eff;
            outputs new_self_k.l = new_k [B,H,1,Dk] (the runtime writes row t).
    after:  present_self_k.l = TensorScatter(self_k.l, new_k, position, axis=2) [B,H,T,Dk],
            attention reads it; it is a graph output that aliases input self_k.l (TensorRT's
            in-place KV-cache update); new_self_k.l is no longer an output. Same for V.
    """
    if graph.opset < 24:
        raise ExportError(f"cache_update_inplace needs opset >= 24 (TensorScatter); graph is at {graph.opset}")
    pos = next((t for t in graph.inputs if t.name == position), None)
    if pos is None:
        raise ExportError(f"decoder_step has no input {position!r}")
    merges = find_cache_merges(graph, self_k, self_v)
    new_outputs = {}
    for cache_name, where in merges.items():
        cache, new_row, merged = where.inputs[2], where.inputs[1], where.outputs[0]
        present = gs.Variable(f"present_{cache_name}", dtype=cache.dtype, shape=cache.shape)
        scatter = gs.Node("TensorScatter", name=where.name.replace("cache_merge", "cache_scatter") or
                          f"/cache_scatter/{cache_name}", attrs={"axis": 2},
                          inputs=[cache, new_row, pos], outputs=[present])
        for user in list(merged.outputs):
            user.inputs[user.inputs.index(merged)] = present
        where.outputs.clear()
        graph.nodes.append(scatter)
        new_outputs[f"new_{cache_name}"] = present
    graph.outputs = [new_outputs.get(t.name, t) for t in graph.outputs]
    return graph.cleanup().toposort()


def upgrade_opset(graph: gs.Graph, opset: int) -> gs.Graph:
    """Raise the default-domain opset with onnx.version_converter (the tracer stops at opset 20).

    before: opset 17, e.g. ReduceMean(axes=[-1]) as an attribute.
    after:  opset `opset`, e.g. ReduceMean(x, axes) with axes an input (opset 18+); same values.
    """
    if graph.opset >= opset:
        return graph
    model = gs.export_onnx(graph)
    # The converter serialises the model (2 GiB protobuf limit): convert without the weights.
    stash = {}
    for init in model.graph.initializer:
        if len(init.raw_data) > 4096:
            stash[init.name] = init.raw_data
            init.raw_data = b""
    model = version_converter.convert_version(model, opset)
    for init in model.graph.initializer:
        if init.name in stash:
            init.raw_data = stash.pop(init.name)
    if stash:
        raise ExportError(f"upgrade_opset lost initializers {sorted(stash)[:3]}...")
    graph = gs.import_onnx(model)
    return graph.cleanup().toposort()
