"""NumPy reference of kernels/native_decoder.cu: the native decoder step, phase by phase.

The numerics the kernels implement (and the ONNX export's, DESIGN.md §4): activations are fp32
values rounded to the act dtype A wherever decoder_step.onnx holds an A tensor (norm output and
its weight product, projection outputs, attention output, residual sums); norm statistics,
softmax and the final norm + lm_head in fp32; fp16 exports clip the residual stream to
+-clamp after every residual add. Arrays of dtype A are numpy storage (bf16 as uint16 bits).
No cupy, no torch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..weights import from_storage, to_storage
from .native import Act, NativeLayer, NativeModel

NEG = np.float32(np.finfo(np.float32).min)  # HF's additive mask value


def round_act(x: np.ndarray, act_dtype: str) -> np.ndarray:
    """fp32 values as an A tensor holds them (round to nearest even; fp16 overflows to inf)."""
    x = np.asarray(x, np.float32)
    if act_dtype == "float32":
        return x
    if act_dtype == "float16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    r = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, r).astype(np.float32)


def f32(a: np.ndarray, act_dtype: str) -> np.ndarray:
    return from_storage(a, act_dtype)


def activation(act: Act, v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    if act == Act.RELU:
        return np.maximum(v, 0)
    if act == Act.GELU_NEW:
        return (0.5 * v * (1.0 + np.tanh(np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v ** 3)))).astype(np.float32)
    if act == Act.GELU:
        from math import erf

        return (0.5 * v * (1.0 + np.vectorize(erf)(v / np.sqrt(2.0)))).astype(np.float32)
    return (v / (1.0 + np.exp(-v))).astype(np.float32)


# ---- phases (x, q, a, h: fp32 [N, .]; caches in act storage) ----


def norm(m: NativeModel, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """round_A(g * round_A(x / sqrt(mean(x^2) + eps))), g in act storage."""
    inv = 1.0 / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + m.eps)
    return round_act(f32(g, m.act_dtype) * round_act((x * inv).astype(np.float32), m.act_dtype), m.act_dtype)


def gemv(m: NativeModel, w: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """round_A(xs @ w^T): w [R, K] in act storage, xs [N, K] fp32 -> [N, R]."""
    return round_act(xs.astype(np.float64) @ f32(w, m.act_dtype).T.astype(np.float64), m.act_dtype)


def embed(m: NativeModel, ids: np.ndarray) -> np.ndarray:
    return f32(m.emb[np.clip(ids.reshape(-1), 0, m.vocab - 1)], m.act_dtype)  # [N, d]


def self_qkv(m: NativeModel, ly: NativeLayer, x: np.ndarray, position: np.ndarray, self_k: np.ndarray,
             self_v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q [N, I]; writes k/v into the caches at position (in place). -> (q, k_new, v_new) fp32."""
    I, H, Dk = m.inner, m.heads, m.d_kv
    y = gemv(m, ly.qkv, norm(m, x, ly.sa_norm))  # [N, 3I]
    q, k, v = y[:, :I], y[:, I:2 * I], y[:, 2 * I:]
    T = self_k.shape[2]
    for n, p in enumerate(position):
        if 0 <= p < T:
            self_k[n, :, p, :] = to_storage(k[n].reshape(H, Dk), m.act_dtype)
            self_v[n, :, p, :] = to_storage(v[n].reshape(H, Dk), m.act_dtype)
    return q, k, v


def attention(m: NativeModel, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray,
              nkeys: Sequence[int]) -> np.ndarray:
    """a[n, h] = round_A(softmax(q k^T + bias) v) over keys [0, nkeys[n]). bias [N, H, K]."""
    N, H, Dk = q.shape[0], m.heads, m.d_kv
    out = np.zeros((N, H * Dk), np.float32)
    kf, vf = f32(keys, m.act_dtype), f32(values, m.act_dtype)
    for n in range(N):
        k = int(nkeys[n])
        qh = q[n].reshape(H, Dk).astype(np.float64)
        s = np.einsum("hd,htd->ht", qh, kf[n, :, :k].astype(np.float64)) + bias[n, :, :k]
        s = s - s.max(axis=-1, keepdims=True)
        w = np.exp(s)
        w /= w.sum(axis=-1, keepdims=True)
        out[n] = np.einsum("ht,htd->hd", w, vf[n, :, :k].astype(np.float64)).reshape(-1)
    return round_act(out, m.act_dtype)


def self_attention(m: NativeModel, q: np.ndarray, position: np.ndarray, self_k: np.ndarray,
                   self_v: np.ndarray) -> np.ndarray:
    T = self_k.shape[2]
    rel = f32(m.rel_bias, m.act_dtype)  # [buckets, H]
    bias = np.zeros((q.shape[0], m.heads, T), np.float64)
    for n, p in enumerate(position):
        dist = np.clip(p - np.arange(T), 0, m.radius)
        bias[n] = rel[m.buckets[dist]].T  # [H, T]
    nkeys = [min(int(p) + 1, T) for p in position]
    return attention(m, q, self_k, self_v, bias, nkeys)


def cross_attention(m: NativeModel, q: np.ndarray, cross_k: np.ndarray, cross_v: np.ndarray,
                    enc_mask: np.ndarray) -> np.ndarray:
    S = cross_k.shape[2]
    bias = np.where(enc_mask[:, None, :] != 0, 0.0, np.float64(NEG)).repeat(m.heads, axis=1)  # [N, H, S]
    return attention(m, q, cross_k, cross_v, bias, [S] * q.shape[0])


def residual(m: NativeModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """clip(round_A(x + y)) (y already rounded)."""
    out = round_act(x + y, m.act_dtype)
    if m.clamp > 0:
        out = np.clip(out, -m.clamp, m.clamp)
    return out.astype(np.float32)


def ffn_in(m: NativeModel, ly: NativeLayer, x: np.ndarray) -> np.ndarray:
    xs = norm(m, x, ly.ff_norm)
    a = round_act(activation(m.act, gemv(m, ly.wi0, xs)), m.act_dtype)
    if m.gated:
        a = round_act(a * gemv(m, ly.wi1, xs), m.act_dtype)
    return a


def lm_head(m: NativeModel, x: np.ndarray) -> np.ndarray:
    inv = 1.0 / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + m.eps)
    xs = (x * inv) * m.final_norm.astype(np.float64) * m.logit_scale
    return (xs @ m.lm_head.T.astype(np.float64)).astype(np.float32)


def decoder_step(m: NativeModel, input_ids: np.ndarray, position: np.ndarray, enc_mask: np.ndarray,
                 cross_k: Sequence[np.ndarray], cross_v: Sequence[np.ndarray], self_k: Sequence[np.ndarray],
                 self_v: Sequence[np.ndarray]) -> np.ndarray:
    """One step: logits [N, V] fp32; the caches get row position[n] (in place)."""
    x = embed(m, input_ids)
    for l, ly in enumerate(m.layers):
        q, _, _ = self_qkv(m, ly, x, position, self_k[l], self_v[l])
        x = residual(m, x, gemv(m, ly.sa_o, self_attention(m, q, position, self_k[l], self_v[l])))
        q = gemv(m, ly.ca_q, norm(m, x, ly.ca_norm))
        x = residual(m, x, gemv(m, ly.ca_o, cross_attention(m, q, cross_k[l], cross_v[l], enc_mask)))
        x = residual(m, x, gemv(m, ly.wo, ffn_in(m, ly, x)))
    return lm_head(m, x)


def random_model(d: int = 512, heads: int = 8, d_kv: int = 64, d_ff: int = 2048, layers: int = 6,
                 vocab: int = 32128, act_dtype: str = "float32", gated: bool = False, num_buckets: int = 32,
                 radius: int = 255, seed: int = 0, logit_scale: float | None = None) -> NativeModel:
    """A NativeModel of the given shape with random weights (workbenches and GPU kernel tests)."""
    rng = np.random.default_rng(seed)
    I = heads * d_kv

    def w(*shape: int, scale: float | None = None) -> np.ndarray:
        s = scale if scale is not None else shape[-1] ** -0.5
        return to_storage(rng.standard_normal(shape).astype(np.float32) * s, act_dtype)

    def g() -> np.ndarray:
        return to_storage(1.0 + 0.1 * rng.standard_normal(d).astype(np.float32), act_dtype)

    mk = lambda: NativeLayer(sa_norm=g(), qkv=w(3 * I, d), sa_o=w(d, I), ca_norm=g(), ca_q=w(I, d), ca_o=w(d, I),  # noqa: E731
                             ff_norm=g(), wi0=w(d_ff, d), wi1=w(d_ff, d) if gated else None, wo=w(d, d_ff))
    dist = np.arange(radius + 1)
    buckets = np.minimum(dist, num_buckets - 1).astype(np.int32)  # any valid table will do here
    return NativeModel(act_dtype=act_dtype, d=d, heads=heads, d_kv=d_kv, d_ff=d_ff, vocab=vocab, eps=1e-6,
                       act=Act.GELU_NEW if gated else Act.RELU, gated=gated,
                       clamp=64000.0 if act_dtype == "float16" else 0.0,
                       logit_scale=d ** -0.5 if logit_scale is None else logit_scale,
                       emb=w(vocab, d, scale=1.0), rel_bias=w(num_buckets, heads, scale=1.0), buckets=buckets,
                       final_norm=(1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32),
                       lm_head=(rng.standard_normal((vocab, d)) * d ** -0.5).astype(np.float32),
                       layers=[mk() for _ in range(layers)])
