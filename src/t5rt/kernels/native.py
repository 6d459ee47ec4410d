"""The native decoder step's kernels (kernels/native_decoder.cu): host-side model, device table, launches.

    model = NativeModel.from_weights(arrays, config, precision, spec)   # host numpy, torch-free
    dev = DeviceModel(model)                                            # weights on the GPU, once
    step = StepTable(dev, rows, src_len, cache_len, buffers)            # one per bucket
    step.launch()              # the whole step: one persistent kernel (grid barrier between phases)
    step.launch_phases()       # the same step, one launch per phase (fallback, tests, workbench)
    step.launch_phases(pdl=True)  # ... with programmatic dependent launch between the phases
    step.launch_phase(ph, l)   # one phase

`NativeModel` (host arrays in the layout the kernels read: q/k/v concatenated, gated FFN as two
matrices) is what both the engine uploads and the NumPy reference (native_reference.py) computes
with, so the two cannot disagree about the weights. Importing this module needs no cupy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import BackendError, InvalidInputError
from ..weights import from_storage

# Mirrors enum T5rtNativePhase in kernels/native_decoder.cu.
class Phase(enum.IntEnum):
    EMBED = 0
    SELF_QKV = 1
    SELF_ATTN = 2
    SELF_OUT = 3
    CROSS_Q = 4
    CROSS_ATTN = 5
    CROSS_OUT = 6
    FFN_IN = 7
    FFN_OUT = 8
    LM_HEAD = 9


LAYER_PHASES = tuple(Phase(p) for p in range(Phase.SELF_QKV, Phase.FFN_OUT + 1))


class Act(enum.IntEnum):
    """FFN activation; mirrors enum T5rtNativeAct (native_decoder.cu)."""

    RELU = 0
    GELU_NEW = 1
    GELU = 2
    SILU = 3


THREADS = 256  # T5RT_NATIVE_THREADS: the largest (and default) block
PART = 4096  # T5RT_NATIVE_PART: floats of shared memory for the projections' split-K partial sums
ACT_NAMES = {"relu": Act.RELU, "gelu_new": Act.GELU_NEW, "gelu_pytorch_tanh": Act.GELU_NEW, "gelu": Act.GELU,
             "silu": Act.SILU, "swish": Act.SILU}
SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
KERNEL_NAMES: tuple[str, ...] = tuple(f"t5rt_native_{k}_{s}" for k in ("step", "phase") for s in SUFFIX.values())

# Field order of struct T5rtNativeStep / T5rtNativeLayer (8 bytes each).
STEP_INTS = ("words", "N", "d", "H", "Dk", "F", "V", "T", "S", "L", "R", "act", "gated", "smem_floats", "prefetch", "pack")
STEP_FLOATS = ("eps", "clamp", "logit_scale")
STEP_PTRS = ("ids", "position", "enc_mask", "emb", "rel_bias", "buckets", "final_norm", "lm_head", "logits",
             "x", "q", "a", "h", "barrier", "layers")
STEP_WORDS = len(STEP_INTS) + len(STEP_FLOATS) + len(STEP_PTRS)
LAYER_WEIGHTS = ("sa_norm", "qkv", "sa_o", "ca_norm", "ca_q", "ca_o", "ff_norm", "wi0", "wi1", "wo")
LAYER_BUFFERS = ("self_k", "self_v", "new_k", "new_v", "cross_k", "cross_v")


def activation(config: dict[str, Any]) -> tuple[Act, bool]:
    """(activation, gated) of a T5 config dict, as transformers' T5Config derives them."""
    proj = str(config.get("feed_forward_proj", "relu"))
    gated = bool(config.get("is_gated_act", proj.startswith("gated-")))
    name = config.get("dense_act_fn") or proj.split("-")[-1]
    if name == "gelu" and proj == "gated-gelu":
        name = "gelu_new"  # T5Config: gated-gelu means gelu_new
    if name not in ACT_NAMES:
        raise InvalidInputError(f"activation {name!r} is not supported by the native engine "
                                f"(supported: {', '.join(ACT_NAMES)})")
    return ACT_NAMES[name], gated


@dataclass
class NativeLayer:
    sa_norm: np.ndarray  # [d] act storage
    qkv: np.ndarray      # [3I, d]
    sa_o: np.ndarray     # [d, I]
    ca_norm: np.ndarray  # [d]
    ca_q: np.ndarray     # [I, d]
    ca_o: np.ndarray     # [d, I]
    ff_norm: np.ndarray  # [d]
    wi0: np.ndarray      # [F, d]
    wi1: np.ndarray | None  # [F, d] (gated) or None
    wo: np.ndarray       # [d, F]


@dataclass
class NativeModel:
    """Host arrays of the decoder in the kernels' layout; act storage = float32 | float16 | uint16 (bf16)."""

    act_dtype: str       # "float32" | "float16" | "bfloat16"
    d: int
    heads: int
    d_kv: int
    d_ff: int
    vocab: int
    eps: float
    act: Act
    gated: bool
    clamp: float         # residual clip (0: off)
    logit_scale: float
    emb: np.ndarray      # [V, d] act
    rel_bias: np.ndarray  # [buckets, H] act
    buckets: np.ndarray  # [R + 1] int32
    final_norm: np.ndarray  # [d] f32
    lm_head: np.ndarray  # [V, d] f32
    layers: list[NativeLayer] = field(default_factory=list)

    @property
    def inner(self) -> int:
        return self.heads * self.d_kv

    @property
    def radius(self) -> int:
        return int(self.buckets.shape[0]) - 1

    @classmethod
    def from_weights(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], act_dtype: str,
                     logit_scale: float, clamp: float) -> "NativeModel":
        """From t5rt.weights.read() of an export's decoder_weights.safetensors."""
        def get(name: str) -> np.ndarray:
            if name not in arrays:
                raise InvalidInputError(f"the decoder weights file lacks {name!r}; re-export the model")
            return arrays[name]

        act, gated = activation(config)
        emb = get("decoder.embed_tokens.weight")
        lm = arrays.get("lm_head.weight")
        if lm is None:
            lm = from_storage(emb, act_dtype)  # tied fp32 export: one copy on disk
        n_layers = int(config.get("num_decoder_layers") or config["num_layers"])
        layers = []
        for i in range(n_layers):
            p = f"decoder.block.{i}.layer"
            sa, ca, ff = f"{p}.0.SelfAttention", f"{p}.1.EncDecAttention", f"{p}.2.DenseReluDense"
            layers.append(NativeLayer(
                sa_norm=get(f"{p}.0.layer_norm.weight"),
                qkv=np.concatenate([get(f"{sa}.q.weight"), get(f"{sa}.k.weight"), get(f"{sa}.v.weight")], axis=0),
                sa_o=get(f"{sa}.o.weight"),
                ca_norm=get(f"{p}.1.layer_norm.weight"),
                ca_q=get(f"{ca}.q.weight"),
                ca_o=get(f"{ca}.o.weight"),
                ff_norm=get(f"{p}.2.layer_norm.weight"),
                wi0=get(f"{ff}.wi_0.weight") if gated else get(f"{ff}.wi.weight"),
                wi1=get(f"{ff}.wi_1.weight") if gated else None,
                wo=get(f"{ff}.wo.weight"),
            ))
        model = cls(act_dtype=act_dtype, d=int(config["d_model"]), heads=int(config["num_heads"]),
                    d_kv=int(config["d_kv"]), d_ff=int(config["d_ff"]), vocab=int(lm.shape[0]),
                    eps=float(config.get("layer_norm_epsilon", 1e-6)), act=act, gated=gated, clamp=float(clamp),
                    logit_scale=float(logit_scale), emb=emb,
                    rel_bias=get("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                    buckets=np.ascontiguousarray(get("decoder.relative_buckets"), np.int32),
                    final_norm=np.ascontiguousarray(get("decoder.final_layer_norm.weight"), np.float32),
                    lm_head=np.ascontiguousarray(lm, np.float32), layers=layers)
        model.check_shapes()
        return model

    def check_shapes(self) -> None:
        """Every tensor has the shape the kernels index it with (a weights file from an
        untrusted export that disagrees would make them read out of bounds)."""
        d, I, F, V, H = self.d, self.inner, self.d_ff, self.vocab, self.heads
        want: list[tuple[str, Any, tuple[int, ...]]] = [
            ("decoder.embed_tokens.weight", self.emb, (V, d)), ("lm_head.weight", self.lm_head, (V, d)),
            ("decoder.final_layer_norm.weight", self.final_norm, (d,)),
            ("relative_attention_bias", self.rel_bias, (self.rel_bias.shape[0], H))]
        for i, w in enumerate(self.layers):
            want += [(f"layer {i} self-attention norm", w.sa_norm, (d,)), (f"layer {i} q/k/v", w.qkv, (3 * I, d)),
                     (f"layer {i} self-attention o", w.sa_o, (d, I)), (f"layer {i} cross norm", w.ca_norm, (d,)),
                     (f"layer {i} cross q", w.ca_q, (I, d)), (f"layer {i} cross o", w.ca_o, (d, I)),
                     (f"layer {i} ffn norm", w.ff_norm, (d,)), (f"layer {i} ffn in", w.wi0, (F, d)),
                     (f"layer {i} ffn out", w.wo, (d, F))]
            if w.wi1 is not None:
                want.append((f"layer {i} ffn gate", w.wi1, (F, d)))
        for name, a, shape in want:
            if tuple(a.shape) != shape:
                raise InvalidInputError(f"the decoder weights file's {name} is {tuple(a.shape)}, not {shape} as "
                                        "the model config says; the export is inconsistent: re-export the model")
        nb = int(self.rel_bias.shape[0])
        if self.buckets.ndim != 1 or self.buckets.size < 1 or int(self.buckets.min()) < 0 \
                or int(self.buckets.max()) >= nb:
            raise InvalidInputError(f"the decoder weights file's relative bucket table must be a non-empty 1-D "
                                    f"table of buckets in [0, {nb}); re-export the model")


def unsupported_reason(model: NativeModel) -> str | None:
    """Why the kernels cannot run this model, or None."""
    if model.d_kv > THREADS:
        return f"d_kv={model.d_kv} > {THREADS}"
    if model.act_dtype not in SUFFIX:
        return f"activation dtype {model.act_dtype}"
    return None


# ----------------------------------------------------------------------------------------------
# Device side
# ----------------------------------------------------------------------------------------------


def _ptr(a: Any) -> int:
    if a is None:
        return 0
    if isinstance(a, np.ndarray):
        return int(a.ctypes.data)
    return int(a.data.ptr)


HOST_GRID = 3  # blocks of a launch on the host build (any count is correct; few are fast)
# T5rtPhaseArgs of a phase that reads its operands from the step table (w0 == 0)
_NO_ARGS = (np.uint64(0), np.uint64(0), np.uint64(0), np.int32(0), np.int32(0), np.int32(0), np.int32(0))


class DeviceModel:
    """A NativeModel's arrays where the launcher's kernels run (one copy shared by every bucket).

    launcher: t5rt.kernels' CUDA launcher (default: cupy arrays on the current device) or the host
    build (t5rt.kernels.host.HostKernels: numpy arrays, for CPU tests).
    """

    def __init__(self, model: NativeModel, launcher: Any = None):
        from . import _launcher

        self.launcher = _launcher(launcher)
        xp = self.launcher.xp
        self.model = model
        up = lambda a: None if a is None else xp.asarray(np.ascontiguousarray(a))  # noqa: E731
        self.emb, self.rel_bias, self.buckets = up(model.emb), up(model.rel_bias), up(model.buckets)
        self.final_norm, self.lm_head = up(model.final_norm), up(model.lm_head)
        self.layers = [{k: up(getattr(ly, k)) for k in LAYER_WEIGHTS} for ly in model.layers]
        if xp is np:
            self.sms, self.smem_optin = HOST_GRID, 227 * 1024
            self.pdl_capable = True  # accepted and ignored by the host build
        else:
            dev = xp.cuda.Device()
            self.sms = int(dev.attributes["MultiProcessorCount"])
            self.smem_optin = int(dev.attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))
            # programmatic dependent launch needs sm_90+ (griddepcontrol)
            self.pdl_capable = int(dev.compute_capability) >= 90

    def nbytes(self) -> int:
        arrays = [self.emb, self.rel_bias, self.final_norm, self.lm_head]
        arrays += [a for ly in self.layers for a in ly.values() if a is not None]
        return int(sum(a.nbytes for a in arrays))


@dataclass
class StepBuffers:
    """The decoder step's device buffers (the runtime's DecoderBuffers, by role)."""

    input_ids: Any               # [N, 1] int64
    position: Any                # [N] int64
    encoder_attention_mask: Any  # [N, S] int64
    cross_k: Sequence[Any]       # per layer [N, H, S, Dk] act
    cross_v: Sequence[Any]
    self_k: Sequence[Any]        # per layer [N, H, T, Dk] act
    self_v: Sequence[Any]
    logits: Any                  # [N, V] float32
    new_k: Sequence[Any] | None = None  # per layer [N, H, 1, Dk] act, or None
    new_v: Sequence[Any] | None = None


class StepTable:
    """One bucket's T5rtNativeStep table in device memory, its fp32 scratch and barrier; launches."""

    def __init__(self, dev: DeviceModel, bufs: StepBuffers, prefetch: bool = False, pack: bool = True,
                 phase_args: bool = True, phase_smem: bool = True):
        """prefetch: each phase also sends the next two phases' weights to L2 (off: measured slower);
        pack: a projection's window holds several short items side by side, and a warp with many
        one-window items (lm_head) loads the next item's window before it sums this one (T5rtGemv;
        False: one item a window, one at a time, the same sums); phase_args: a projection phase gets its weights, sizes and
        gain as kernel parameters and loads its weights before it reads this table (False: from
        the table, after it); phase_smem: each per-phase launch asks for the shared memory its own
        phase uses (an attention phase ~1 KB, a projection its rows of inputs), not the most any
        phase uses (all of FFN-out's 2048-wide rows: at 32 rows the whole SM, so a phase's blocks
        could not share an SM with the phase before, which PDL needs to overlap them). pack /
        phase_args / phase_smem off are for comparison (bench/kernels/native_step.py)."""
        cp = dev.launcher.xp  # cupy, or numpy on the host build
        m = dev.model
        self.dev, self.bufs = dev, bufs
        n, s = (int(v) for v in bufs.encoder_attention_mask.shape)
        t = int(bufs.self_k[0].shape[2])
        L, I = len(m.layers), m.inner
        self.rows, self.src_len, self.cache_len = n, s, t
        self._check(n, s, t)
        self.x = cp.zeros((n, m.d), cp.float32)
        self.q = cp.zeros((n, I), cp.float32)
        self.a = cp.zeros((n, I), cp.float32)
        self.h = cp.zeros((n, m.d_ff), cp.float32)
        self.barrier = cp.zeros((2,), cp.uint32)
        # dynamic shared memory, as the kernels lay it out (native_decoder.cu, t5rt_project_run and
        # t5rt_attend): a projection holds the split-K partials, the norm's gain, then per pass of up
        # to 64 rows its input rows and (residual phases) the block's slice of the old x
        pad = lambda v: (v + 3) & ~3  # noqa: E731
        kmax = max(m.d, I, m.d_ff)
        rb = pad(-(-m.d // dev.sms))  # a residual phase's slice of the old x a row (its output is d wide)

        def proj(rows: int, k: int, res: bool = True) -> int:  # floats: partials, gain, rows of k inputs (+ x slice)
            return PART + pad(m.d) + rows * (k + (rb if res else 0))
        proj_one, proj_all = proj(1, kmax), proj(min(n, 64), kmax)
        attn = pad(m.d_kv) + pad(max(t, s)) + THREADS + 32
        cap = (dev.smem_optin - 8 * 1024) // 4  # leave room for the static shared memory
        if attn > cap:
            raise InvalidInputError(f"attention over {max(t, s)} keys needs {attn * 4} bytes of shared memory, "
                                    f"more than the GPU's {cap * 4}; use a shorter max length")
        if proj_one > cap:
            raise InvalidInputError(f"a projection over {kmax} inputs needs {proj_one * 4} bytes of shared memory, "
                                    f"more than the GPU's {cap * 4}")
        self.smem_floats = int(min(max(proj_all, attn), cap))
        # per phase (launch_phase with phase_smem): what t5rt_project_run / t5rt_attend lay out for it
        self._phase_smem: dict[int, int] = {}
        if phase_smem:
            ins = {Phase.SELF_QKV: m.d, Phase.SELF_OUT: I, Phase.CROSS_Q: m.d, Phase.CROSS_OUT: I,
                   Phase.FFN_IN: m.d, Phase.FFN_OUT: m.d_ff, Phase.LM_HEAD: m.d}
            res = (Phase.SELF_OUT, Phase.CROSS_OUT, Phase.FFN_OUT)
            self._phase_smem = {ph: 4 * int(min(proj(min(n, 64), k, ph in res), cap)) for ph, k in ins.items()}
            self._phase_smem.update({Phase.EMBED: 0, Phase.SELF_ATTN: 4 * attn, Phase.CROSS_ATTN: 4 * attn})
        layer_rows = []
        for l, w in enumerate(dev.layers):
            vals = [_ptr(w[k]) for k in LAYER_WEIGHTS]
            new_k = bufs.new_k[l] if bufs.new_k else None
            new_v = bufs.new_v[l] if bufs.new_v else None
            vals += [_ptr(bufs.self_k[l]), _ptr(bufs.self_v[l]), _ptr(new_k), _ptr(new_v),
                     _ptr(bufs.cross_k[l]), _ptr(bufs.cross_v[l])]
            layer_rows.append(vals)
        self.layer_table = cp.asarray(np.array(layer_rows, np.uint64).reshape(L, len(LAYER_WEIGHTS) + len(LAYER_BUFFERS)))
        ints = dict(words=STEP_WORDS, N=n, d=m.d, H=m.heads, Dk=m.d_kv, F=m.d_ff, V=m.vocab, T=t, S=s, L=L,
                    R=m.radius, act=int(m.act), gated=int(m.gated), smem_floats=self.smem_floats,
                    prefetch=int(prefetch), pack=int(pack))
        floats = dict(eps=m.eps, clamp=m.clamp, logit_scale=m.logit_scale)
        ptrs = dict(ids=_ptr(bufs.input_ids), position=_ptr(bufs.position), enc_mask=_ptr(bufs.encoder_attention_mask),
                    emb=_ptr(dev.emb), rel_bias=_ptr(dev.rel_bias), buckets=_ptr(dev.buckets),
                    final_norm=_ptr(dev.final_norm), lm_head=_ptr(dev.lm_head), logits=_ptr(bufs.logits),
                    x=_ptr(self.x), q=_ptr(self.q), a=_ptr(self.a), h=_ptr(self.h), barrier=_ptr(self.barrier),
                    layers=_ptr(self.layer_table))
        words = np.zeros(STEP_WORDS, np.uint64)
        i = 0
        for k in STEP_INTS:
            words[i] = np.int64(ints[k]).view(np.uint64)
            i += 1
        for k in STEP_FLOATS:
            words[i] = np.float64(floats[k]).view(np.uint64)
            i += 1
        for k in STEP_PTRS:
            words[i] = np.uint64(ptrs[k])
            i += 1
        self.table = cp.asarray(words)
        self.grid = (dev.sms,)
        self.block = (THREADS,)
        self.smem_bytes = self.smem_floats * 4
        sfx = SUFFIX[m.act_dtype]
        self._step, self._phase = f"t5rt_native_step_{sfx}", f"t5rt_native_phase_{sfx}"
        self.launcher = dev.launcher
        loaded = getattr(self.launcher, "loaded", None)  # the CUDA module (a cupy RawModule)
        # always: the kernels' own static shared memory (the step table, ~0.5 KB) adds to the
        # dynamic bytes, so exactly 48 KB of dynamic memory already needs the opt-in. The limit
        # is the function's, shared by every table (one per row bucket): it is raised to the
        # most the GPU allows, never set to this table's size (a smaller table built later
        # would make a larger one's launch fail with CUDA_ERROR_INVALID_VALUE).
        if loaded is not None:
            for name in (self._step, self._phase):
                try:
                    fn = loaded.function(name)
                    most = dev.smem_optin - int(fn.shared_size_bytes)
                    if int(fn.max_dynamic_shared_size_bytes) < most:
                        fn.max_dynamic_shared_size_bytes = most
                except Exception as e:  # noqa: BLE001 - cupy raises CUDADriverError
                    raise BackendError(f"cannot give the native kernels {self.smem_bytes} bytes of shared memory: {e}") from e
                if most < self.smem_bytes:
                    raise BackendError(f"needs {self.smem_bytes} bytes of shared memory, the GPU gives {most}")
        self.coresident = self._coresident(loaded)
        # (the L2 prefetch of the next phases runs in the table-reading path only)
        self._args = self._phase_args(pack) if phase_args and not prefetch else {}

    def _phase_args(self, pack: bool) -> dict[tuple[int, int], tuple]:
        """(phase, layer) -> a projection's T5rtPhaseArgs as kernel parameters (native_decoder.cu's
        t5rt_phase_args reads the same from the table): w0, w1, gain, R, K, N, flags."""
        m, dev, n = self.dev.model, self.dev, self.rows
        d, inner, ff = m.d, m.inner, m.d_ff
        out: dict[tuple[int, int], tuple] = {}

        def put(ph: Phase, l: int, w0: Any, w1: Any, gain: Any, r: int, k: int) -> None:
            out[(int(ph), l)] = (np.uint64(_ptr(w0)), np.uint64(_ptr(w1)), np.uint64(_ptr(gain)), np.int32(r),
                                 np.int32(k), np.int32(n), np.int32(int(bool(pack))))
        for l, w in enumerate(dev.layers):
            put(Phase.SELF_QKV, l, w["qkv"], None, w["sa_norm"], 3 * inner, d)
            put(Phase.SELF_OUT, l, w["sa_o"], None, None, d, inner)
            put(Phase.CROSS_Q, l, w["ca_q"], None, w["ca_norm"], inner, d)
            put(Phase.CROSS_OUT, l, w["ca_o"], None, None, d, inner)
            put(Phase.FFN_IN, l, w["wi0"], w["wi1"] if m.gated else None, w["ff_norm"], ff, d)
            put(Phase.FFN_OUT, l, w["wo"], None, None, d, ff)
        put(Phase.LM_HEAD, 0, dev.lm_head, None, dev.final_norm, m.vocab, d)
        return out

    def _coresident(self, loaded: Any) -> bool:
        """Whether one block of the persistent kernel fits on every SM at once (its grid barrier
        would deadlock otherwise): the driver's occupancy for this block and shared memory."""
        if loaded is None:
            return False
        fn = loaded.function(self._step)
        threads, smem = self.block[0], self.smem_bytes
        try:  # the driver's answer (cupy's binding, else cuda-python's)
            from cupy.cuda import driver
            return int(driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, threads, smem)) >= 1
        except (ImportError, AttributeError):
            pass
        try:
            from cuda.bindings import driver as cu
            err, per_sm = cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(cu.CUfunction(fn.ptr), threads, smem)
            if int(err) == 0:
                return int(per_sm) >= 1
        except Exception:  # noqa: BLE001 - fall through to the attributes
            pass
        try:  # the kernel's own attributes: registers and shared memory of one block on one SM
            regs = int(fn.num_regs) * threads
            return regs <= 65536 and int(fn.shared_size_bytes) + smem <= self.dev.smem_optin
        except Exception:  # noqa: BLE001 - nothing known: do not risk the grid barrier
            return False

    def _check(self, n: int, s: int, t: int) -> None:
        b, m = self.bufs, self.dev.model
        L = len(m.layers)
        for name, arrs, shape in (("cross_k", b.cross_k, (n, m.heads, s, m.d_kv)), ("cross_v", b.cross_v, (n, m.heads, s, m.d_kv)),
                                  ("self_k", b.self_k, (n, m.heads, t, m.d_kv)), ("self_v", b.self_v, (n, m.heads, t, m.d_kv))):
            if len(arrs) != L:
                raise InvalidInputError(f"{name}: {len(arrs)} buffers for {L} layers")
            for a in arrs:
                if tuple(a.shape) != shape or not a.flags.c_contiguous:
                    raise InvalidInputError(f"{name} buffer must be C-contiguous {shape}, got {a.shape}")
        if tuple(b.logits.shape) != (n, m.vocab) or b.logits.dtype != np.float32:
            raise InvalidInputError(f"logits must be float32 {(n, m.vocab)}, got {b.logits.dtype} {b.logits.shape}")
        if b.input_ids.size != n or b.position.shape != (n,):
            raise InvalidInputError(f"input_ids / position must hold {n} rows")

    def launch(self) -> None:
        """The whole step as one persistent launch (grid barrier between phases; CUDA only: the
        host build runs blocks one after another, so it cannot run a grid barrier)."""
        if not self.coresident:
            raise BackendError("the persistent native step cannot have a block on every SM at once "
                               "(its grid barrier would deadlock); use launch_phases()")
        self.launcher.launch(self._step, self.grid, self.block, (self.table,), shared_mem=self.smem_bytes)

    def launch_phase(self, phase: int, layer: int = 0, pdl: bool = False, threads: int | None = None) -> None:
        """One phase; pdl: with programmatic dependent launch (CUDA sm_90+: the phase prefetches its
        weights into L2 while the kernel before it still runs, then waits for it). threads: block
        size (a multiple of 32 up to THREADS; fewer let two phases' blocks share an SM)."""
        t = THREADS if threads is None else int(threads)
        if t % 32 or not 32 <= t <= THREADS:
            raise InvalidInputError(f"threads={t} must be a multiple of 32 in [32, {THREADS}]")
        operands = self._args.get((int(phase), int(layer)), _NO_ARGS)
        self.launcher.launch(self._phase, self.grid, (t,),
                             (self.table, np.int32(int(phase)), np.int32(layer), np.int32(bool(pdl)), *operands),
                             shared_mem=self._phase_smem.get(int(phase), self.smem_bytes), pdl=pdl)

    def launch_phases(self, pdl: bool = False, threads: int | None = None) -> None:
        """The whole step, one launch per phase (no grid barrier); pdl, threads: see launch_phase."""
        self.launch_phase(Phase.EMBED, 0, pdl, threads)
        for l in range(len(self.dev.layers)):
            for ph in LAYER_PHASES:
                self.launch_phase(ph, l, pdl, threads)
        self.launch_phase(Phase.LM_HEAD, 0, pdl, threads)
