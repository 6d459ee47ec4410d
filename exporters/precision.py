"""fp16 / bf16 precision passes over an fp32 T5 graph (DESIGN.md §4, issue 2 item 3).

The exporter traces every graph in fp32 (the parity reference). For `--precision fp16|bf16`
the pipeline calls `apply_precision(graph, precision)`, which runs these passes in a fixed order:

    clamp_residuals          (fp16 only by default) Clip(±64000) after every residual Add
    keep_rmsnorm_fp32        every T5LayerNorm's variance/rsqrt/x*rsqrt in fp32
    keep_logits_fp32         final RMSNorm -> (d_model**-0.5 scale) -> lm_head -> logits in fp32
    keep_ffn_output_fp32     (off by default) FFN `wo` MatMul and the residual stream in fp32
    convert_precision        every other float32 tensor -> fp16/bf16, Casts at island borders

TensorRT >= 10 strongly typed networks take their precision from the graph itself, so the
result must say everything with typed initializers and Casts; it passes
`onnx.checker.check_model(full_check=True)` with strict shape inference.

How the pieces fit: the keep_* passes do not change dtypes themselves; each adds the names of
the nodes that must compute in fp32 to a `PrecisionPlan`. `convert_precision` then gives every
node a compute dtype (fp32 if planned or "index math", else the low dtype), every float tensor
the dtype of its producer, and inserts one Cast wherever a consumer computes in another dtype.
"Index math" is float arithmetic that depends on no activation and no weight (T5's relative
position buckets: int -> float -> log -> int; the additive attention mask built from finfo.min):
it stays fp32 exactly as HF computes it (`relative_position.float()`), and where it meets
activations it is saturated to the low dtype's finite range before the Cast (fp32 finfo.min
would become -inf in fp16).

Structure is found by patterns (names are not relied on). RMSNorm as the legacy exporter
(torch.onnx.export(dynamo=False), torch 2.13) emits HF's T5LayerNorm:

    x -> Cast(to=FLOAT) -> Pow(., 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Div(1, .)
      -> Mul(x_f32, .) -> Mul(weight, .)

(Reciprocal instead of Div(1, .), Div(x, sqrt) instead of Mul, and a missing Cast are accepted.)
Residual Adds are the Adds whose output is the x of an RMSNorm: T5 is pre-norm, so every
residual sum feeds the next norm (the last one feeds final_layer_norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from t5rt.errors import InvalidOptionError, T5rtError

FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16
BFLOAT16 = onnx.TensorProto.BFLOAT16

LOW_DTYPES = {"fp16": FLOAT16, "bf16": BFLOAT16}
# Largest finite value of each low dtype: constants and index math are saturated to it.
FINITE_MAX = {FLOAT16: 65504.0, BFLOAT16: float(np.frombuffer(np.uint32(0x7F7F0000).tobytes(), np.float32)[0])}
# HF's T5Block clamps fp16 hidden states to finfo(fp16).max - 1000 once they overflowed.
DEFAULT_CLAMP = 64000.0

# Ops whose float input need not match the node's compute dtype (they accept any type).
_TYPE_AGNOSTIC = {"Cast", "Shape", "Size"}
# Index math never needs more than this many nodes between an output and its RMSNorm.
_MAX_WALK = 64


class PrecisionPassError(T5rtError, ValueError):
    """A precision pass met a graph it cannot handle (not fp32, or no T5 structure where needed)."""


@dataclass(frozen=True)
class PrecisionOptions:
    """What `apply_precision` does besides the dtype conversion itself.

    residual_clamp None means: on for fp16 (T5 v1.1 / Flan-T5 / t5-large+ overflow 65504),
    off for bf16 (bf16 has fp32's range).
    """

    rmsnorm_fp32: bool = True
    logits_fp32: bool = True
    residual_clamp: bool | None = None
    clamp_value: float = DEFAULT_CLAMP
    ffn_output_fp32: bool = False      # HF's _keep_in_fp32_modules=["wo"]: exact but slower
    logits_outputs: tuple[str, ...] = ("logits",)   # graph outputs that stay float32

    def clamp_for(self, precision: str) -> bool:
        return precision == "fp16" if self.residual_clamp is None else self.residual_clamp


@dataclass
class PrecisionPlan:
    """Names of the nodes that compute in fp32 after conversion (everything else: low dtype)."""

    fp32_nodes: set[str] = field(default_factory=set)
    fp32_outputs: set[str] = field(default_factory=set)   # float graph outputs kept float32

    def keep(self, nodes: Iterable[gs.Node]) -> None:
        self.fp32_nodes.update(n.name for n in nodes)


@dataclass
class RMSNorm:
    """One T5LayerNorm found in a graph."""

    x: gs.Tensor                 # the residual-stream input (before the entry Cast)
    body: list[gs.Node]          # entry Cast (if any), Pow, ReduceMean, Add, Sqrt, Div/Recip, Mul(x)
    weight_mul: gs.Node | None   # Mul(weight, normed); None when the weight was folded away
    out: gs.Tensor               # the norm's output (weight_mul's output, else Mul(x)'s)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

def apply_precision(graph: gs.Graph, precision: str, options: PrecisionOptions | None = None) -> gs.Graph:
    """Convert an fp32 T5 graph (encoder, cross_kv or decoder_step) to `precision`.

    fp32 returns the graph unchanged. fp16 / bf16 run the passes of the module docstring in
    a fixed order and return the same (modified) graph.
    """
    options = options or PrecisionOptions()
    if precision == "fp32":
        return graph
    if precision not in LOW_DTYPES:
        raise InvalidOptionError(f"precision {precision!r} is not one of fp32, fp16, bf16")
    prepare_graph(graph)
    if options.clamp_for(precision):
        clamp_residuals(graph, options.clamp_value)
    plan = PrecisionPlan(fp32_outputs=set(options.logits_outputs))
    if options.rmsnorm_fp32:
        keep_rmsnorm_fp32(graph, plan)
    if options.logits_fp32:
        keep_logits_fp32(graph, plan, options.logits_outputs)
    if options.ffn_output_fp32:
        keep_ffn_output_fp32(graph, plan)
    return convert_precision(graph, precision, plan)


def prepare_graph(graph: gs.Graph) -> gs.Graph:
    """Make the graph easy to pattern-match and convert.

    before: float `Constant` nodes; nodes may share or lack names; intermediate dtypes unknown
    after:  float constants are gs.Constant inputs of their consumers; every node has a unique
            name; every float32 Variable carries dtype float32 (from ONNX type inference)
    Raises PrecisionPassError if the graph already holds float16/bfloat16 tensors.
    """
    _lower_float_constant_nodes(graph)
    _fold_constant_identities(graph)
    _unique_node_names(graph)
    _annotate_dtypes(graph)
    low = [t.name for t in graph.tensors().values() if _elem(t) in (FLOAT16, BFLOAT16)]
    if low:
        raise PrecisionPassError(
            f"precision passes expect the fp32 trace, but {len(low)} tensors are already "
            f"float16/bfloat16 (first: {low[0]!r}); export in fp32 and convert once")
    return graph.cleanup().toposort()


# ---------------------------------------------------------------------------------------------
# structure: RMSNorm and residual Adds
# ---------------------------------------------------------------------------------------------

def find_rmsnorms(graph: gs.Graph) -> list[RMSNorm]:
    """Every T5LayerNorm in the graph, by pattern (see the module docstring)."""
    norms = []
    for pow_ in graph.nodes:
        if pow_.op != "Pow" or len(pow_.inputs) != 2 or _scalar(pow_.inputs[1]) != 2.0:
            continue
        xf = pow_.inputs[0]
        mean = _only_consumer(pow_.outputs[0], "ReduceMean")
        add = mean and _only_consumer(mean.outputs[0], "Add")
        if add is None or not any(_scalar(i) is not None for i in add.inputs):
            continue
        sqrt = _only_consumer(add.outputs[0], "Sqrt")
        if sqrt is None:
            continue
        body = [pow_, mean, add, sqrt]
        normed_node = None
        for c in sqrt.outputs[0].outputs:
            if c.op == "Div" and c.inputs[0] is xf and c.inputs[1] is sqrt.outputs[0]:
                normed_node = c                                  # x / sqrt(var + eps)
            elif (c.op == "Reciprocal") or (c.op == "Div" and _scalar(c.inputs[0]) == 1.0):
                mul = next((m for m in c.outputs[0].outputs
                            if m.op == "Mul" and xf in m.inputs and c.outputs[0] in m.inputs), None)
                if mul is not None:
                    body.append(c)
                    normed_node = mul                           # x * (1 / sqrt(var + eps))
        if normed_node is None:
            continue
        body.append(normed_node)
        x = xf
        entry = xf.inputs[0] if xf.inputs else None
        if entry is not None and entry.op == "Cast" and entry.attrs.get("to") == FLOAT:
            body.insert(0, entry)
            x = entry.inputs[0]
        out = normed_node.outputs[0]
        weight_mul = _only_consumer(out, "Mul")
        if weight_mul is not None and any(isinstance(i, gs.Constant) and i.values.ndim >= 1
                                          for i in weight_mul.inputs):
            out = weight_mul.outputs[0]
        else:
            weight_mul = None
        norms.append(RMSNorm(x=x, body=body, weight_mul=weight_mul, out=out))
    return norms


def find_residual_adds(graph: gs.Graph, norms: list[RMSNorm] | None = None) -> list[gs.Node]:
    """Adds whose output is the x of an RMSNorm (through an existing residual Clip)."""
    adds = []
    for norm in norms if norms is not None else find_rmsnorms(graph):
        x = norm.x
        p = x.inputs[0] if x.inputs else None
        if p is not None and p.op == "Clip" and p.inputs[0].inputs:
            p = p.inputs[0].inputs[0]
        if p is not None and p.op == "Add" and all(not isinstance(i, gs.Constant) for i in p.inputs):
            if all(p is not a for a in adds):
                adds.append(p)
    return adds


# ---------------------------------------------------------------------------------------------
# the passes
# ---------------------------------------------------------------------------------------------

def clamp_residuals(graph: gs.Graph, limit: float = DEFAULT_CLAMP) -> gs.Graph:
    """Clip the residual stream after every residual Add, as HF's T5Block does in fp16.

    before: h = Add(h, sublayer(norm(h)))            -> norm / next Add / graph output
    after:  h = Clip(Add(h, sublayer(norm(h))), -limit, limit) -> the same consumers
    An fp16 overflow to ±inf in a sublayer becomes ±limit instead of poisoning every later
    layer with inf/NaN. Idempotent: an Add already followed by a Clip is left alone.
    """
    for add in find_residual_adds(graph):
        h = add.outputs[0]
        if any(c.op == "Clip" for c in h.outputs):
            continue
        lo = gs.Constant(f"{add.name}/clamp_min", np.array(-limit, np.float32))
        hi = gs.Constant(f"{add.name}/clamp_max", np.array(limit, np.float32))
        _insert_after(graph, h, "Clip", f"{add.name}/residual_clamp", extra_inputs=[lo, hi])
    return graph.cleanup().toposort()


def keep_rmsnorm_fp32(graph: gs.Graph, plan: PrecisionPlan) -> gs.Graph:
    """Plan every RMSNorm's statistics and normalisation in fp32 (HF: x.to(float32)...).

    before (after conversion, without this pass): Cast(x, to=low) -> Pow -> ReduceMean ... in low
    after (after conversion): Cast(x, to=FLOAT) -> Pow -> ReduceMean -> Add(eps) -> Sqrt ->
          Div(1, .) -> Mul(x) all fp32 -> Cast(to=low) -> Mul(weight) in low, as HF does
          (`hidden_states.to(self.weight.dtype)` before the weight multiply).
    """
    for norm in find_rmsnorms(graph):
        plan.keep(norm.body)
    return graph.cleanup().toposort()


def keep_logits_fp32(graph: gs.Graph, plan: PrecisionPlan,
                     logits_outputs: Iterable[str] = ("logits",)) -> gs.Graph:
    """Plan everything between the final RMSNorm and the logits output in fp32.

    before (after conversion, without this pass): final norm -> Mul(d_model**-0.5) -> lm_head
          MatMul in low -> Cast(to=FLOAT) -> logits
    after: final norm's Mul(weight) -> Mul(d_model**-0.5) -> lm_head MatMul (fp32 weight) ->
          logits all in fp32; the logits output is float32 in every precision.
    Found by walking back from the logits output to the first RMSNorm output.
    """
    norm_outs = {id(n.out): n for n in find_rmsnorms(graph)}
    outputs = [t for t in graph.outputs if t.name in set(logits_outputs)]
    for out in outputs:
        plan.fp32_outputs.add(out.name)
        island, stack, found = [], [out], False
        while stack:
            t = stack.pop()
            if id(t) in norm_outs:
                norm = norm_outs[id(t)]
                if norm.weight_mul is not None:
                    island.append(norm.weight_mul)
                found = True
                continue
            if isinstance(t, gs.Constant) or not t.inputs or _elem(t) != FLOAT:
                continue
            node = t.inputs[0]
            if any(node is n for n in island):
                continue
            island.append(node)
            if len(island) > _MAX_WALK:
                break
            stack.extend(i for i in node.inputs if _elem(i) == FLOAT)
        if not found or len(island) > _MAX_WALK:
            raise PrecisionPassError(
                f"cannot find the final RMSNorm within {_MAX_WALK} nodes of output {out.name!r}; "
                "is this a T5 decoder graph? (pass logits_fp32=False to skip this pass)")
        plan.keep(island)
    return graph.cleanup().toposort()


def keep_ffn_output_fp32(graph: gs.Graph, plan: PrecisionPlan) -> gs.Graph:
    """Plan every FFN output projection `wo` and the residual stream in fp32.

    HF keeps `wo` in fp32 (_keep_in_fp32_modules=["wo"]); its fp32 output added to the fp16
    residual promotes the residual stream to fp32 from the first FFN on. This pass does the
    same for the whole stream:
    before (after conversion): ... -> wo MatMul (fp16 weight) -> Add(h, .) [-> Clip] in fp16
    after:  ... -> Cast(to=FLOAT) -> wo MatMul (fp32 weight) -> Add(h_f32, .) [-> Clip] in fp32;
            attention outputs are cast up before their residual Add; norms read fp32 h directly.
    A wo is a MatMul with a constant weight feeding a residual Add whose activation input
    does not come from a Softmax within the sublayer (that would be attention's `o`).
    """
    norms = find_rmsnorms(graph)
    norm_outs = {id(n.out) for n in norms}
    for add in find_residual_adds(graph, norms):
        stream = [add] + [c for c in add.outputs[0].outputs if c.op == "Clip"]
        plan.keep(stream)
        for branch in add.inputs:
            mm = branch.inputs[0] if branch.inputs else None
            if (mm is not None and mm.op == "MatMul" and isinstance(mm.inputs[1], gs.Constant)
                    and not _softmax_upstream(mm.inputs[0], norm_outs)):
                plan.keep([mm])
    return graph.cleanup().toposort()


def convert_precision(graph: gs.Graph, precision: str, plan: PrecisionPlan | None = None) -> gs.Graph:
    """Convert float32 tensors to fp16/bf16 except the fp32 islands of `plan` and index math.

    before: every float tensor, initializer, Constant and Cast(to=FLOAT) in float32
    after:  float graph inputs and outputs in the low dtype (plan.fp32_outputs: float32);
            initializers converted where a low node reads them (saturated to the finite range;
            duplicated where fp32 and low nodes share one); Cast(to=FLOAT) outside islands
            cast to low; a Cast at every border between an fp32 and a low node
            (Clip-saturated when the fp32 side is index math). int64/bool tensors untouched.
    """
    if precision not in LOW_DTYPES:
        raise InvalidOptionError(f"convert_precision: precision {precision!r} is not fp16 or bf16")
    low = LOW_DTYPES[precision]
    plan = plan or PrecisionPlan()
    prepare_graph(graph)
    # int64/bool tensors are left as they are: only originally-float32 tensors are touched.
    is_f32 = {name for name, t in graph.tensors().items() if _elem(t) == FLOAT}

    # 1. taint: a float tensor is an activation if it depends on a float graph input or weight.
    tainted = {t.name for t in graph.inputs if t.name in is_f32}
    compute: dict[str, int] = {}            # node name -> FLOAT or low
    for node in graph.nodes:
        f_in = [t for t in node.inputs if t.name in is_f32]
        f_out = [t for t in node.outputs if t.name in is_f32]
        if not f_in and not f_out:
            continue
        hot = any(t.name in tainted or (isinstance(t, gs.Constant) and int(np.prod(t.shape)) > 1) for t in f_in)
        if hot:
            tainted.update(t.name for t in f_out)
        compute[node.name] = low if hot and node.name not in plan.fp32_nodes else FLOAT

    # 2. the dtype each float Variable will have: its producer's compute dtype.
    have: dict[str, int] = {t.name: low for t in graph.inputs if t.name in is_f32}
    for node in graph.nodes:
        for t in node.outputs:
            if t.name in is_f32:
                have[t.name] = compute[node.name]

    # 3. rewrite nodes: constants, Cast targets, border Casts.
    low_consts: dict[str, gs.Constant] = {}
    border: dict[tuple[str, int], gs.Variable] = {}
    for node in list(graph.nodes):
        want = compute.get(node.name)
        if want is None:
            continue
        if node.op == "Cast" and node.attrs.get("to") == FLOAT:
            node.attrs["to"] = want
        if node.op in _TYPE_AGNOSTIC:
            continue
        for i, t in enumerate(node.inputs):
            if t.name not in is_f32:
                continue
            if isinstance(t, gs.Constant):
                if want != FLOAT:
                    if t.name not in low_consts:
                        low_consts[t.name] = _low_constant(t, low)
                    node.inputs[i] = low_consts[t.name]
            elif have[t.name] != want:
                key = (t.name, want)
                if key not in border:
                    saturate = want != FLOAT and t.name not in tainted
                    border[key] = _cast(graph, t, want, saturate, low)
                node.inputs[i] = border[key]

    # 4. dtypes of Variables; graph outputs in the dtype the contract says.
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and name in have:
            t.dtype = _np_or_onnx(have[name])
    for k, out in enumerate(list(graph.outputs)):
        if out.name not in is_f32:
            continue
        need = FLOAT if out.name in plan.fp32_outputs else low
        if have[out.name] != need:
            graph.outputs[k] = _recast_output(graph, out, need, saturate=need != FLOAT, low=low)
    return graph.cleanup().toposort()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _elem(t: gs.Tensor) -> int | None:
    """ONNX element type of a tensor (None if unknown)."""
    dt = t.export_dtype if isinstance(t, gs.Constant) else t.dtype
    if dt is None:
        return None
    if isinstance(dt, int):
        return dt
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt))
    except (TypeError, KeyError, ValueError):
        return None


def _np_or_onnx(elem: int):
    return {FLOAT: np.float32, FLOAT16: np.float16}.get(elem, elem)


def _scalar(t: gs.Tensor) -> float | None:
    """Value of a one-element constant (a gs.Constant or a Constant node's output)."""
    if isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op == "Constant":
        v = t.inputs[0].attrs.get("value")
        t = v if isinstance(v, gs.Constant) else None
    if isinstance(t, gs.Constant) and int(np.prod(t.shape)) == 1:
        return float(np.asarray(t.values, dtype=np.float64).reshape(()))
    return None


def _only_consumer(t: gs.Tensor, op: str) -> gs.Node | None:
    cs = [c for c in t.outputs if c.op == op]
    return cs[0] if len(cs) == 1 else None


def _softmax_upstream(t: gs.Tensor, stop: set[int]) -> bool:
    """Whether a Softmax lies behind `t` before reaching an RMSNorm output (id in `stop`)."""
    seen, stack = set(), [t]
    while stack and len(seen) < 4 * _MAX_WALK:
        t = stack.pop()
        if id(t) in stop or id(t) in seen or not t.inputs:
            continue
        seen.add(id(t))
        node = t.inputs[0]
        if node.op == "Softmax":
            return True
        stack.extend(i for i in node.inputs if isinstance(i, gs.Variable))
    return False


def _insert_after(graph: gs.Graph, t: gs.Variable, op: str, name: str,
                  extra_inputs=(), attrs=None, dtype=None) -> gs.Variable:
    """Put `op(t, *extra_inputs)` between `t` and all its consumers (and graph outputs)."""
    out = gs.Variable(f"{name}_output_0", dtype=dtype if dtype is not None else t.dtype, shape=t.shape)
    consumers = list(t.outputs)
    graph.nodes.append(gs.Node(op, name, attrs=attrs or {}, inputs=[t, *extra_inputs], outputs=[out]))
    for c in consumers:
        for i, inp in enumerate(c.inputs):
            if inp is t:
                c.inputs[i] = out
    for k, o in enumerate(graph.outputs):
        if o is t:       # keep the graph output's name on the new tensor
            t.name, out.name = out.name, t.name
            graph.outputs[k] = out
    return out


def _cast(graph: gs.Graph, t: gs.Variable, to: int, saturate: bool, low: int) -> gs.Variable:
    """A new tensor `Cast(t, to)` (Clip to the low dtype's finite range first if `saturate`)."""
    src = t
    base = t.name.replace(":", "_")
    if saturate:
        m = FINITE_MAX[low]
        src = gs.Variable(f"{base}/saturate_output_0", dtype=t.dtype, shape=t.shape)
        graph.nodes.append(gs.Node("Clip", f"{base}/saturate", inputs=[
            t, gs.Constant(f"{base}/saturate_min", np.array(-m, np.float32)),
            gs.Constant(f"{base}/saturate_max", np.array(m, np.float32))], outputs=[src]))
    tag = {FLOAT: "fp32", FLOAT16: "fp16", BFLOAT16: "bf16"}[to]
    out = gs.Variable(f"{base}/to_{tag}_output_0", dtype=_np_or_onnx(to), shape=t.shape)
    graph.nodes.append(gs.Node("Cast", f"{base}/to_{tag}", attrs={"to": to}, inputs=[src], outputs=[out]))
    return out


def _recast_output(graph: gs.Graph, out: gs.Variable, to: int, saturate: bool, low: int) -> gs.Variable:
    """Cast a graph output to `to`, keeping its name on the graph output."""
    name = out.name
    out.name = f"{name}/pre_cast"
    new = _cast(graph, out, to, saturate, low)
    new.name = name
    return new


def _low_constant(c: gs.Constant, low: int) -> gs.Constant:
    """fp32 constant -> fp16/bf16 constant, saturated to the finite range (finfo.min stays finite)."""
    m = FINITE_MAX[low]
    v = np.asarray(np.clip(np.asarray(c.values, np.float32), -m, m), np.float32)
    if low == FLOAT16:
        return gs.Constant(f"{c.name}_fp16", np.asarray(v.astype(np.float16)))
    # bf16 = the top 16 bits of fp32, rounded to nearest even (no ml_dtypes needed).
    bits = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = np.asarray(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16))
    rounded = np.where(np.isnan(v), np.uint16(0x7FC0), rounded).astype(np.uint16)
    tp = onnx.helper.make_tensor(f"{c.name}_bf16", BFLOAT16, list(v.shape), rounded.tobytes(), raw=True)
    return gs.Constant(tp.name, LazyValues(tp))


def _lower_float_constant_nodes(graph: gs.Graph) -> None:
    """Constant nodes with a float32 tensor value -> gs.Constant inputs of their consumers."""
    outs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        v = node.attrs.get("value") if node.op == "Constant" else None
        if not isinstance(v, gs.Constant) or _elem(v) != FLOAT or id(node.outputs[0]) in outs:
            continue
        old = node.outputs[0]
        const = gs.Constant(old.name, v.values)
        old.name = f"{old.name}/lowered"
        _replace_uses(old, const)
        node.outputs.clear()
    graph.cleanup()


def _fold_constant_identities(graph: gs.Graph) -> None:
    """Identity(weight) -> weight (the legacy exporter dedups equal initializers this way)."""
    outs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Identity" or not isinstance(node.inputs[0], gs.Constant) or id(node.outputs[0]) in outs:
            continue
        _replace_uses(node.outputs[0], node.inputs[0])
        node.outputs.clear()
    graph.cleanup()


def _replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads `old` reads `new` instead."""
    for c in list(old.outputs):
        for i, inp in enumerate(c.inputs):
            if inp is old:
                c.inputs[i] = new


def _unique_node_names(graph: gs.Graph) -> None:
    seen: set[str] = set()
    for k, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.name or node.op}/t5rt_{k}"
        seen.add(node.name)


def _annotate_dtypes(graph: gs.Graph) -> None:
    """Give every Variable its element type from ONNX type inference (weights left out)."""
    g = graph.copy()
    for t in list(g.tensors().values()):
        # Big constants only matter by their type; leaving their bytes out keeps the model
        # under protobuf's 2 GiB and the inference fast.
        if isinstance(t, gs.Constant) and int(np.prod(t.shape)) > 64:
            dt, shape = t.export_dtype, list(t.shape)
            t.to_variable(dtype=dt, shape=shape)
            t.type = "tensor_type"      # gs's to_variable leaves this Variable field unset
            g.inputs.append(t)
    model = gs.export_onnx(g, do_type_check=False)
    model = onnx.shape_inference.infer_shapes(model)
    elems = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Variable) and t.dtype is None and elems.get(name):
            t.dtype = _np_or_onnx(elems[name])
