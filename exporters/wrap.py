"""torch modules for the three graphs (DESIGN.md §3), built on a Hugging Face T5 model's own submodules.

Each wrapper calls HF submodules through `module(x)` (`layer.layer_norm(x)`, `attn.q(x)`,
`layer(x)` for the FFN, `model.lm_head(x)`), so ONNX node names keep HF scopes such as
`/decoder/block.0/layer.2/DenseReluDense/wo/MatMul` and RMSNorm stays HF's own subgraph; the
precision passes (exporters/precision.py) find their targets by those scopes and patterns.
Only attention is re-written here, because HF's T5Attention.forward is built around its
Python cache objects; the math is HF's: no 1/sqrt(d) scaling, relative position bias (owned
by block 0, shared by all layers) plus a mask of dtype-min added to the scores.

Relative position buckets are precomputed at export time with HF's own
`T5Attention._relative_position_bucket` and gathered in the graph, so the graph has no float
log. Beyond `relative_attention_max_distance` buckets saturate, so clamping relative positions
to R = max(max_len - 1, max_distance) is exact for every length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Additive mask value for hidden keys (HF uses torch.finfo(dtype).min the same way).
NEG = torch.finfo(torch.float32).min


@contextmanager
def hf_scope(*modules: nn.Module) -> Iterator[None]:
    """While tracing, nest ONNX node names under these HF modules' scopes, as HF's own forward would.

    The wrapper calls leaf modules directly (`attn.q(h)`), so without this the tracer names the node
    `/q/MatMul`; inside `hf_scope(decoder, block, layer, attn)` it is `/decoder/block.0/layer.0/SelfAttention/q/MatMul`.
    Outside tracing it does nothing.
    """
    state = torch._C._get_tracing_state()
    names = getattr(torch.jit._trace, "_trace_module_map", None)
    pushed = 0
    try:
        if state is not None and names:
            for m in modules:
                if m in names:
                    state.push_scope(names[m])
                    pushed += 1
        yield
    finally:
        for _ in range(pushed):
            state.pop_scope()


def bucket_table(attn: nn.Module, radius: int, bidirectional: bool) -> torch.Tensor:
    """HF bucket of every relative position the graph can index.

    bidirectional (encoder): index r + radius for relative position r = key - query in [-radius, radius].
    unidirectional (decoder): index d for distance d = query - key in [0, radius].
    """
    if bidirectional:
        rel = torch.arange(-radius, radius + 1, dtype=torch.long)
    else:
        rel = -torch.arange(0, radius + 1, dtype=torch.long)
    return attn._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=attn.relative_attention_num_buckets,
        max_distance=attn.relative_attention_max_distance).to(torch.long)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v, T5 style (no scaling). q [B,H,Q,Dk], k/v [B,H,K,Dk], bias broadcast to [B,H,Q,K]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # [B, H, Q, K]
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, v)  # [B, H, Q, Dk]


class _T5Graph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        cfg = model.config
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.inner = cfg.num_heads * cfg.d_kv

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H*Dk] -> [B, H, S, Dk]."""
        return x.unflatten(-1, (self.n_heads, self.d_kv)).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, S, Dk] -> [B, S, H*Dk]."""
        return x.transpose(1, 2).flatten(2)


class EncoderGraph(_T5Graph):
    """input_ids [B,S] int64, attention_mask [B,S] int64 -> hidden [B,S,d_model]."""

    def __init__(self, model: nn.Module, max_input_len: int):
        super().__init__(model)
        self.encoder = model.encoder
        attn0 = self.encoder.block[0].layer[0].SelfAttention
        self.radius = max(max_input_len - 1, attn0.relative_attention_max_distance)
        self.register_buffer("buckets", bucket_table(attn0, self.radius, bidirectional=True), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        with hf_scope(enc):
            x = enc.embed_tokens(input_ids)  # [B, S, d]
            attn0 = enc.block[0].layer[0].SelfAttention
            with hf_scope(enc.block[0], enc.block[0].layer[0], attn0):
                pos = torch.arange(input_ids.shape[1], device=input_ids.device)  # [S]
                rel = (pos[None, :] - pos[:, None]).clamp(-self.radius, self.radius)  # [S, S] key - query
                buckets = self.buckets[rel + self.radius]  # [S, S]
                values = attn0.relative_attention_bias(buckets)  # [S, S, H]
                pos_bias = values.permute(2, 0, 1).unsqueeze(0)  # [1, H, S, S]
                keep = attention_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, S]
                bias = torch.where(keep, pos_bias, NEG)  # [B, H, S, S], computed once, shared by layers
            for block in enc.block:
                sa = block.layer[0]
                attn = sa.SelfAttention
                with hf_scope(block):
                    with hf_scope(sa):
                        h = sa.layer_norm(x)
                        with hf_scope(attn):
                            q, k, v = self.heads(attn.q(h)), self.heads(attn.k(h)), self.heads(attn.v(h))  # [B, H, S, Dk]
                            a = attn.o(self.merge_heads(attend(q, k, v, bias)))
                        x = x + a
                    x = block.layer[-1](x)  # T5LayerFF: RMSNorm, FFN, residual
            return enc.final_layer_norm(x)  # [B, S, d]


class CrossKVGraph(_T5Graph):
    """hidden [B,S,d] -> cross_k.{l}, cross_v.{l} [B,H,S,Dk] for every decoder layer."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.decoder = model.decoder

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for block in self.decoder.block:
            attn = block.layer[1].EncDecAttention
            with hf_scope(self.decoder, block, block.layer[1], attn):
                out += [self.heads(attn.k(hidden)), self.heads(attn.v(hidden))]  # [B, H, S, Dk] each
        return tuple(out)  # cross_k.0, cross_v.0, cross_k.1, ...


class DecoderStepGraph(_T5Graph):
    """One decoder token per sequence against preallocated caches (cache_update "write" form).

    inputs:  input_ids [B,1], position [B] (index t of this token), encoder_attention_mask [B,S],
             then per layer l: cross_k.l, cross_v.l [B,H,S,Dk], self_k.l, self_v.l [B,H,T,Dk]
    outputs: logits [B,V], then per layer l: new_self_k.l, new_self_v.l [B,H,1,Dk]

    Self-attention reads K_eff = Where(row == t, new_k, self_k) (one node per layer and cache),
    so rows < t come from the cache, row t is this token, rows > t are masked. The in-place
    pass (patches.cache_update_inplace) swaps that Where for TensorScatter(self_k, new_k, position).
    """

    def __init__(self, model: nn.Module, max_output_len: int, logit_scale: float):
        super().__init__(model)
        self.decoder = model.decoder
        self.lm_head = model.lm_head
        self.logit_scale = float(logit_scale)
        self.n_layers = len(self.decoder.block)
        self.vocab = model.lm_head.out_features
        attn0 = self.decoder.block[0].layer[0].SelfAttention
        self.radius = max(max_output_len - 1, attn0.relative_attention_max_distance)
        self.register_buffer("buckets", bucket_table(attn0, self.radius, bidirectional=False), persistent=False)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, encoder_attention_mask: torch.Tensor,
                *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        cross_k, cross_v, self_k, self_v = (caches[i * n:(i + 1) * n] for i in range(4))
        dec = self.decoder
        H, Dk = self.n_heads, self.d_kv

        # Bias and masks, computed once per step and shared by all layers.
        attn0 = dec.block[0].layer[0].SelfAttention
        with hf_scope(dec, dec.block[0], dec.block[0].layer[0], attn0):
            rows = torch.arange(self_k[0].shape[2], device=position.device)  # [T]
            t = position[:, None]  # [B, 1]
            dist = (t - rows[None, :]).clamp(0, self.radius)  # [B, T] query - key
            values = attn0.relative_attention_bias(self.buckets[dist])  # [B, T, H]
            pos_bias = values.permute(0, 2, 1).unsqueeze(2)  # [B, H, 1, T]
            visible = (rows[None, :] <= t)[:, None, None, :]  # [B, 1, 1, T]
            self_bias = torch.where(visible, pos_bias, NEG)  # [B, H, 1, T]
            is_new = (rows[None, :] == t)[:, None, :, None]  # [B, 1, T, 1]
        with hf_scope(dec, dec.block[0], dec.block[0].layer[1], dec.block[0].layer[1].EncDecAttention):
            keep = encoder_attention_mask[:, None, None, :].to(torch.bool)  # [B, 1, 1, S]
            cross_bias = torch.where(keep, 0.0, NEG)  # [B, 1, 1, S]

        with hf_scope(dec):
            x = dec.embed_tokens(input_ids)  # [B, 1, d]
        new_kv = []
        for l, block in enumerate(dec.block):
            sa, ca = block.layer[0], block.layer[1]
            attn, xattn = sa.SelfAttention, ca.EncDecAttention
            with hf_scope(dec, block, sa):
                h = sa.layer_norm(x)
                with hf_scope(attn):
                    q = attn.q(h).view(-1, H, 1, Dk)  # [B, H, 1, Dk] (one token: the head transpose is a reshape)
                    k_new = attn.k(h).view(-1, H, 1, Dk)  # [B, H, 1, Dk]
                    v_new = attn.v(h).view(-1, H, 1, Dk)
                    k = torch.where(is_new, k_new, self_k[l])  # [B, H, T, Dk]  cache merge (in-place pass target)
                    v = torch.where(is_new, v_new, self_v[l])
                    a = attn.o(attend(q, k, v, self_bias).view(-1, 1, H * Dk))
                x = x + a
            new_kv += [k_new, v_new]

            with hf_scope(dec, block, ca):
                h = ca.layer_norm(x)
                with hf_scope(xattn):
                    q = xattn.q(h).view(-1, H, 1, Dk)
                    a = xattn.o(attend(q, cross_k[l], cross_v[l], cross_bias).view(-1, 1, H * Dk))
                x = x + a

            with hf_scope(dec, block):
                x = block.layer[-1](x)  # T5LayerFF
        with hf_scope(dec):
            x = dec.final_layer_norm(x)  # [B, 1, d]
        if self.logit_scale != 1.0:
            x = x * self.logit_scale  # T5 v1.0 tied embeddings: d_model ** -0.5
        logits = self.lm_head(x).view(-1, self.vocab)  # [B, V]
        return (logits, *new_kv)  # logits, new_self_k.0, new_self_v.0, new_self_k.1, ...
