"""Device buffers, allocated once per bucket and reused by every request that fits it.

EncoderBuffers  (batch B, source bucket S):  input_ids, attention_mask, hidden, cross_k/v per layer
DecoderBuffers  (rows N = B*r, S, cache T):  the decoder step's every input and output

Every engine binds these by name once (names from the manifest roles); nothing is allocated
per request or per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..manifest import Manifest
from .device import Device


@dataclass
class EncoderBuffers:
    batch: int
    src_len: int
    input_ids: Any                  # [B, S] int64
    attention_mask: Any             # [B, S] int64
    hidden: Any                     # [B, S, d_model] act dtype
    cross_k: list[Any]              # per decoder layer [B, H, S, Dk]
    cross_v: list[Any]
    engines: dict[str, Any] = field(default_factory=dict)  # "encoder", "cross_kv" -> bound Engine
    cross_table: Any = None         # CUDA kernels: cross_k + cross_v as a PointerTable (made on use)

    @classmethod
    def allocate(cls, m: Manifest, dev: Device, batch: int, src_len: int) -> "EncoderBuffers":
        d, act = m.dims, m.act_dtype
        kv = (batch, d.num_heads, src_len, d.d_kv)
        return cls(
            batch=batch,
            src_len=src_len,
            input_ids=dev.zeros((batch, src_len), "int64"),
            attention_mask=dev.zeros((batch, src_len), "int64"),
            hidden=dev.zeros((batch, src_len, d.d_model), act),
            cross_k=[dev.zeros(kv, act) for _ in range(d.num_decoder_layers)],
            cross_v=[dev.zeros(kv, act) for _ in range(d.num_decoder_layers)],
        )

    def bind(self, m: Manifest, encoder: Any, cross_kv: Any) -> None:
        r = m.roles["encoder"]
        encoder.bind(r["input_ids"], self.input_ids)
        encoder.bind(r["attention_mask"], self.attention_mask)
        encoder.bind(r["hidden"], self.hidden)
        r = m.roles["cross_kv"]
        cross_kv.bind(r["hidden"], self.hidden)
        for name, buf in zip(r["cross_k"], self.cross_k):
            cross_kv.bind(name, buf)
        for name, buf in zip(r["cross_v"], self.cross_v):
            cross_kv.bind(name, buf)
        self.engines = {"encoder": encoder, "cross_kv": cross_kv}


@dataclass
class DecoderBuffers:
    rows: int
    rows_per_input: int
    src_len: int
    cache_len: int
    input_ids: Any                  # [N, 1] int64
    position: Any                   # [N] int64
    encoder_attention_mask: Any     # [N, S] int64
    cross_k: list[Any]              # per layer [N, H, S, Dk] (the encoder's own buffers when r == 1)
    cross_v: list[Any]
    self_k: list[Any]               # per layer [N, H, T, Dk]
    self_v: list[Any]
    new_k: list[Any]                # write form: per layer [N, H, 1, Dk]; in-place form: []
    new_v: list[Any]
    logits: Any                     # [N, V] float32
    engine: Any = None

    @classmethod
    def allocate(cls, m: Manifest, dev: Device, enc: EncoderBuffers, rows_per_input: int,
                 cache_len: int) -> "DecoderBuffers":
        d, act = m.dims, m.act_dtype
        n, s, L = enc.batch * rows_per_input, enc.src_len, d.num_decoder_layers
        if rows_per_input == 1:
            cross_k, cross_v, mask = enc.cross_k, enc.cross_v, enc.attention_mask
        else:
            kv = (n, d.num_heads, s, d.d_kv)
            cross_k = [dev.zeros(kv, act) for _ in range(L)]
            cross_v = [dev.zeros(kv, act) for _ in range(L)]
            mask = dev.zeros((n, s), "int64")
        cache = (n, d.num_heads, cache_len, d.d_kv)
        write = m.cache_update == "write"
        row = (n, d.num_heads, 1, d.d_kv)
        return cls(
            rows=n,
            rows_per_input=rows_per_input,
            src_len=s,
            cache_len=cache_len,
            input_ids=dev.zeros((n, 1), "int64"),
            position=dev.zeros((n,), "int64"),
            encoder_attention_mask=mask,
            cross_k=cross_k,
            cross_v=cross_v,
            self_k=[dev.zeros(cache, act) for _ in range(L)],
            self_v=[dev.zeros(cache, act) for _ in range(L)],
            new_k=[dev.zeros(row, act) for _ in range(L)] if write else [],
            new_v=[dev.zeros(row, act) for _ in range(L)] if write else [],
            logits=dev.zeros((n, d.vocab_size), "float32"),
        )

    @classmethod
    def allocate_slots(cls, m: Manifest, dev: Device, rows: int, src_len: int, cache_len: int) -> "DecoderBuffers":
        """A slot pool's buffers (in-flight batching): `rows` decoder rows with cross K/V and mask
        of their own, filled per request as it joins (service/slots.py). Every row's mask starts
        with one valid source column, so an empty row computes finite garbage, never NaN."""
        d, act = m.dims, m.act_dtype
        L = d.num_decoder_layers
        kv = (rows, d.num_heads, src_len, d.d_kv)
        enc = EncoderBuffers(batch=rows, src_len=src_len, input_ids=None, hidden=None,
                             attention_mask=dev.zeros((rows, src_len), "int64"),
                             cross_k=[dev.zeros(kv, act) for _ in range(L)],
                             cross_v=[dev.zeros(kv, act) for _ in range(L)])
        enc.attention_mask[:, 0] = 1
        return cls.allocate(m, dev, enc, 1, cache_len)

    def rows_view(self, lo: int, hi: int) -> "DecoderBuffers":
        """Rows lo..hi-1 as DecoderBuffers of views (C-contiguous: rows are the leading axis),
        unbound: for binding an engine to the first n rows, or a request's own cache ops."""
        def cut(bufs: list[Any]) -> list[Any]:
            return [b[lo:hi] for b in bufs]

        return DecoderBuffers(
            rows=hi - lo, rows_per_input=1, src_len=self.src_len, cache_len=self.cache_len,
            input_ids=self.input_ids[lo:hi], position=self.position[lo:hi],
            encoder_attention_mask=self.encoder_attention_mask[lo:hi],
            cross_k=cut(self.cross_k), cross_v=cut(self.cross_v), self_k=cut(self.self_k),
            self_v=cut(self.self_v), new_k=cut(self.new_k), new_v=cut(self.new_v),
            logits=self.logits[lo:hi])

    def bind(self, m: Manifest, engine: Any) -> None:
        r = m.roles["decoder_step"]
        engine.bind(r["input_ids"], self.input_ids)
        engine.bind(r["position"], self.position)
        engine.bind(r["encoder_attention_mask"], self.encoder_attention_mask)
        engine.bind(r["logits"], self.logits)
        for role, bufs in (("cross_k", self.cross_k), ("cross_v", self.cross_v),
                           ("self_k", self.self_k), ("self_v", self.self_v)):
            for name, buf in zip(r[role], bufs):
                engine.bind(name, buf)
        if m.cache_update == "write":
            for role, bufs in (("new_self_k", self.new_k), ("new_self_v", self.new_v)):
                for name, buf in zip(r[role], bufs):
                    engine.bind(name, buf)
        else:
            # In-place form: the updated cache is written over the input cache (aliased buffers).
            for role, bufs in (("present_self_k", self.self_k), ("present_self_v", self.self_v)):
                for name, buf in zip(r[role], bufs):
                    engine.bind(name, buf)
        self.engine = engine

    def expand_from(self, enc: EncoderBuffers) -> None:
        """Copy the encoder side into the decoder rows: row b*r+j <- input b (no allocation)."""
        if self.rows_per_input == 1:
            return
        r = self.rows_per_input
        for dst, src in zip(self.cross_k + self.cross_v, enc.cross_k + enc.cross_v):
            dst.reshape((enc.batch, r) + src.shape[1:])[...] = src[:, None]
        self.encoder_attention_mask.reshape(enc.batch, r, -1)[...] = enc.attention_mask[:, None]

    def clear_caches(self) -> None:
        """Zero the self-attention caches (rows beyond the current position are masked anyway;
        zeroing keeps stale values of a previous request out of reach of any bug)."""
        for buf in self.self_k + self.self_v:
            buf.fill(0)
