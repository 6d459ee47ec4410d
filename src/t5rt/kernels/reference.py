"""NumPy references of the kernels in kernels/*.cu: the semantics the GPU must reproduce.

Each function states the same contract as its kernel; tests/test_kernels.py checks the kernels
against these on the GPU and these against plain loops and Hugging Face's warpers on the CPU.
No cupy, no torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROW_MUL = 0xBF58476D1CE4E5B9
_COL_MUL = 0x94D049BB133111EB


# ---- RNG (t5rt_kernels.cuh: t5rt_uniform; same numbers as t5rt.decoding.rng.uniform) ----


def splitmix64(x: int) -> int:
    z = (x + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform(seed: int, step: int, row: int, col: int = 0) -> float:
    """u in (0, 1): ((splitmix64(seed ^ step*G ^ (row+1)*R ^ (col+1)*C) >> 11) + 0.5) * 2**-53."""
    x = (seed ^ ((step * _GOLDEN) & _MASK64) ^ (((row + 1) * _ROW_MUL) & _MASK64)
         ^ (((col + 1) * _COL_MUL) & _MASK64))
    return ((splitmix64(x & _MASK64) >> 11) + 0.5) * 2.0**-53


# ---- KV cache ----


def kv_write(caches: Sequence[np.ndarray], rows: Sequence[np.ndarray], position: np.ndarray) -> list[np.ndarray]:
    """caches[l][n, :, position[n], :] = rows[l][n, :, 0, :]; positions outside [0, T) are skipped.

    caches: [N, H, T, Dk] x 2L, rows: [N, H, 1, Dk] x 2L -> new caches (inputs untouched).
    """
    out = [c.copy() for c in caches]
    t = caches[0].shape[2]
    ok = (position >= 0) & (position < t)  # [N]
    n_idx = np.nonzero(ok)[0]
    for c, r in zip(out, rows):
        c[n_idx, :, position[n_idx], :] = r[n_idx, :, 0, :]
    return out


def rows_copy(dst: Sequence[np.ndarray], src: Sequence[np.ndarray], dst_rows: np.ndarray,
              src_rows: np.ndarray) -> list[np.ndarray]:
    """dst[l][dst_rows[j]] = src[l][src_rows[j]] for every tensor l (copies)."""
    out = [np.array(d, copy=True) for d in dst]
    for o, s_ in zip(out, src):
        o[np.asarray(dst_rows)] = s_[np.asarray(src_rows)]
    return out


def beam_reorder(caches: Sequence[np.ndarray], parent: np.ndarray, length: int) -> list[np.ndarray]:
    """cache[n, :, :len, :] = old[parent[n], :, :len, :]; rows >= len untouched (len clamped to [0, T])."""
    out = [c.copy() for c in caches]
    t = caches[0].shape[2]
    ln = max(0, min(int(length), t))
    for c, old in zip(out, caches):
        c[:, :, :ln, :] = old[parent, :, :ln, :]
    return out


# ---- sampling ----


def sample_filter(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Hugging Face warpers: (x = logits / temperature [N, V] fp32, keep [N, V] bool).

    top-k keeps x >= the k-th largest (ties kept, 0 or >= V = off); top-p keeps x whose strictly
    greater kept mass is < top_p * total (the maximum always; 1.0 = off).
    """
    x = logits.astype(np.float32) / np.float32(temperature)  # [N, V]
    n, v = x.shape
    keep = np.ones_like(x, dtype=bool)
    if 0 < top_k < v:
        kth = np.partition(x, v - top_k, axis=-1)[:, v - top_k : v - top_k + 1]  # [N, 1]
        keep &= x >= kth
    if top_p < 1.0:
        for i in range(n):
            xi = x[i]
            e = np.exp(xi.astype(np.float64) - float(xi.max())) * keep[i]  # [V]
            order = np.argsort(-xi, kind="stable")  # descending
            xs, cum = xi[order], np.cumsum(e[order])
            first = np.searchsorted(-xs, -xs, side="left")  # first position of each value
            mass_gt = np.where(first > 0, cum[np.maximum(first - 1, 0)], 0.0)
            kept = np.zeros(v, dtype=bool)
            kept[order] = mass_gt < top_p * e.sum()
            kept[int(np.argmax(xi))] = True
            keep[i] &= kept
    return x, keep


def sample_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The distribution the sampler draws from: [N, V] float64, rows sum to 1."""
    x, keep = sample_filter(logits, temperature, top_k, top_p)
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True)) * keep
    return e / e.sum(axis=-1, keepdims=True)


def topk_topp_sample(logits: np.ndarray, seed: int, step: int, temperature: float = 1.0,
                     top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """[N] int64: the first kept index (vocabulary order) whose cumulative probability exceeds u."""
    probs = sample_probs(logits, temperature, top_k, top_p)  # [N, V]
    tokens = np.empty(probs.shape[0], dtype=np.int64)
    for i, p in enumerate(probs):
        cdf = np.cumsum(p)
        idx = int((cdf <= uniform(seed, step, i) * cdf[-1]).sum())
        tokens[i] = min(idx, int(np.nonzero(p)[0][-1]))
    return tokens


def sample_logprob(logits: np.ndarray, seed: int, step: int, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N] int64, logprob [N] float64): topk_topp_sample's draw with RNG rows
    row_offset + n, and log(probability of the token) under the warped distribution."""
    probs = sample_probs(logits, temperature, top_k, top_p)  # [N, V]
    tokens = np.empty(probs.shape[0], dtype=np.int64)
    for i, p in enumerate(probs):
        cdf = np.cumsum(p)
        idx = int((cdf <= uniform(seed, step, row_offset + i) * cdf[-1]).sum())
        tokens[i] = min(idx, int(np.nonzero(p)[0][-1]))
    with np.errstate(divide="ignore"):
        logprob = np.log(probs[np.arange(len(tokens)), tokens])
    return tokens, logprob


def argmax_rows(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, axis=-1).astype(np.int64)


def argmax_logsumexp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first argmax [N] int64, row max [N] fp32, log(sum(exp(x - max))) [N] fp64)."""
    x = logits.astype(np.float32)
    mx = x.max(axis=-1)
    with np.errstate(divide="ignore"):
        logsum = np.log(np.exp(x.astype(np.float64) - mx[:, None]).sum(axis=-1))
    return argmax_rows(x), mx, logsum


# ---- beam search ----


def beam_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of [B, M]: k largest values descending, ties -> lower index. -> ([B, k] f32, [B, k] i64)."""
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]  # [B, k]
    return np.take_along_axis(scores, order, axis=-1).astype(np.float32), order.astype(np.int64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(x - max) - log(sum(exp(x - max))) in fp32, the order torch uses."""
    x = logits.astype(np.float32)
    mx = x.max(axis=-1, keepdims=True)
    logsum = np.log(np.exp(x - mx).sum(axis=-1, keepdims=True, dtype=np.float32))
    return (x - mx) - logsum


def beam_step(logits: np.ndarray, beam_scores: np.ndarray, num_beams: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """top-k over nb*V of log_softmax(logits) + beam_scores[:, None]; logits [B*nb, V]."""
    rows, v = logits.shape
    scores = log_softmax(logits) + beam_scores.astype(np.float32)[:, None]  # [B*nb, V]
    return beam_topk(scores.reshape(rows // num_beams, num_beams * v), k)


# ---- decoding strategies' state updates (decoding_step.cu) ----
#
# State dicts hold the buffers the kernels update in place, under the wrappers' argument names
# (t5rt.kernels.sample_update / beam_update); these return updated copies, inputs untouched.

_BIG = np.float32(-1.0e9)
_NEG_ZERO = np.float32(-0.0)


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: None if v is None else np.array(v, copy=True) for k, v in state.items()}


def sample_update(state: dict[str, Any], nxt: np.ndarray, *, pad: int, eos: int, scores: Any = None,
                  row_max: Any = None, row_logsum: Any = None, logprob: Any = None) -> dict[str, Any]:
    """state: history [N, T+1], tokens [N], unfinished [N], seq_logprob [N], token_logprob
    [N, T+1] or None, step_counter [], done []. One greedy / sampling step (HF `_sample`):
    row n takes nxt[n] (pad once finished) at column min(t+1, T) with log-prob
    (scores[n, tok] - row_max[n]) - row_logsum[n] (or logprob[n]); nothing but `done` changes
    once done."""
    s = _copy_state(state)
    hist = s["history"]
    n, w = hist.shape
    last = w - 1
    t, done = int(s["step_counter"]), bool(s["done"])
    col, at_max = min(t + 1, last), t + 1 >= last
    if not done:
        for r in range(n):
            unf = bool(s["unfinished"][r])
            tok = int(nxt[r]) if unf else pad
            if scores is not None:
                lp = (scores[r, tok] - row_max[r]) - row_logsum[r]  # float32 throughout
            else:
                lp = logprob[r]
            if unf:
                s["seq_logprob"][r] = s["seq_logprob"][r] + lp
                if s.get("token_logprob") is not None:
                    s["token_logprob"][r, col] = lp
            hist[r, col] = tok
            s["tokens"][r] = tok
            s["unfinished"][r] = unf and tok != eos and not at_max
        s["step_counter"][...] = t + 1
    s["done"][...] = not s["unfinished"].any()
    return s


def _top(v: np.ndarray, take: int) -> np.ndarray:
    """Indices of the `take` largest, descending, ties -> lower index."""
    return np.argsort(-v, kind="stable")[:take]


def beam_update(state: dict[str, Any], cand_score: np.ndarray, cand_idx: np.ndarray,
                cand_lp: Any, *, denom: np.ndarray, best_denom: float | None,
                early_stopping_true: bool, vocab_size: int, eos: int) -> dict[str, Any]:
    """state: history [N, T+1], tokens, parent [N], running_score [B, nb], fin_seq [B, nb, T+1],
    fin_score [B, nb], fin_flag [B, nb], fin_len [B, nb], heuristic_unsat [B], token_logprob
    [N, T+1] / fin_token_logprob [B, nb, T+1] (or None), step_counter [], done [].
    One step of Hugging Face's `_beam_search` after candidate selection (K = 2 nb candidates
    per input, cand_idx into nb*V), per input with float32 arithmetic and masks added as -1e9
    in HF's order; once done only parent changes (to the identity)."""
    s = _copy_state(state)
    b_count, nb = s["running_score"].shape
    n, w = s["history"].shape
    last, v = w - 1, vocab_size
    t = int(s["step_counter"])
    if bool(s["done"]):
        s["parent"][:] = np.arange(n)
        return s
    col, at_max = min(t + 1, last), t + 1 >= last
    tlp = s.get("token_logprob")
    old_hist, old_fin = state["history"], state["fin_seq"].reshape(n, w)
    old_tlp: Any = None if tlp is None else state["token_logprob"]
    old_fin_tlp: Any = None if tlp is None else state["fin_token_logprob"].reshape(n, w)
    d = denom[t]
    any_unsat, all_fin, all_hits = False, True, True

    def with_token(src_hist: Any, src_row: int, token: Any) -> np.ndarray:
        row = src_hist[src_row].copy()
        row[col] = token
        return row

    for b in range(b_count):
        full, unsat = bool(s["fin_flag"][b].all()), bool(state["heuristic_unsat"][b])
        hit = (cand_idx[b] % v == eos) | at_max  # [K]
        run = cand_score[b] + np.where(hit, _BIG, _NEG_ZERO)  # [K]
        f = cand_score[b] / d
        if early_stopping_true:
            f = f + (_BIG if full else _NEG_ZERO)
        f = f + (_BIG if not unsat else _NEG_ZERO)
        first_nb = np.arange(2 * nb) < nb
        f = f + np.where(~(hit & first_nb), _BIG, _NEG_ZERO)
        merged = np.concatenate([state["fin_score"][b], f]).astype(np.float32)  # [nb + K]
        pick, keep = _top(run, nb), _top(merged, nb)
        nf_score = merged[keep]
        nf_flag = np.array([state["fin_flag"][b, m] if m < nb else bool(hit[m - nb] and m - nb < nb) for m in keep])
        nf_len = np.array([state["fin_len"][b, m] if m < nb else t + 1 for m in keep])
        best_running = run[pick[0]] / (np.float32(best_denom) if best_denom is not None else d)
        worst = nf_score.min()
        new_unsat = unsat and any(best_running > (worst if flag else _BIG) for flag in nf_flag)
        for i in range(nb):
            r, j = b * nb + i, pick[i]
            idx = int(cand_idx[b, j])
            src = b * nb + idx // v
            s["running_score"][b, i] = run[j]
            s["parent"][r] = src
            s["tokens"][r] = idx % v
            s["history"][r] = with_token(old_hist, src, idx % v)
            if tlp is not None:
                s["token_logprob"][r] = with_token(old_tlp, src, cand_lp[b, j])
            m = int(keep[i])
            if m < nb:
                s["fin_seq"][b, i] = old_fin[b * nb + m]
                if tlp is not None:
                    s["fin_token_logprob"][b, i] = old_fin_tlp[b * nb + m]
            else:
                idx2 = int(cand_idx[b, m - nb])
                src2 = b * nb + idx2 // v
                s["fin_seq"][b, i] = with_token(old_hist, src2, idx2 % v)
                if tlp is not None:
                    s["fin_token_logprob"][b, i] = with_token(old_tlp, src2, cand_lp[b, m - nb])
        s["fin_score"][b], s["fin_flag"][b], s["fin_len"][b] = nf_score, nf_flag, nf_len
        s["heuristic_unsat"][b] = new_unsat
        any_unsat |= new_unsat
        all_fin &= bool(nf_flag.all())
        all_hits &= bool(hit.all())
    # columns after col are never read or written (they hold the reset value)
    for key in ("history", "token_logprob"):
        if s.get(key) is not None:
            s[key][:, col + 1:] = state[key][:, col + 1:]
    for key in ("fin_seq", "fin_token_logprob"):
        if s.get(key) is not None:
            s[key][:, :, col + 1:] = state[key][:, :, col + 1:]
    s["step_counter"][...] = t + 1
    exists_open = not (all_fin and early_stopping_true)
    s["done"][...] = not (any_unsat and exists_open and not all_hits)
    return s


def min_new_tokens(scores: np.ndarray, step: int, min_new: int, eos: int) -> np.ndarray:
    """Hugging Face MinNewTokensLengthLogitsProcessor: scores[:, eos] = -inf while step < min_new."""
    out = np.array(scores, copy=True)
    if step < min_new:
        out[:, eos] = -np.inf
    return out


def as_any(x: Any) -> np.ndarray:
    """numpy view of a numpy or cupy array (host copy for cupy)."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


# ---- in-flight slot pools (kernels/sampling_pool.cu) ----

POOL_FIELDS = ("row", "mode", "top_k", "seed", "rng_row", "max_new", "min_new", "temperature", "top_p")


def pool_set(state: dict[str, Any], updates: np.ndarray, *, pad: int, start: int) -> dict[str, Any]:
    """state: mode, top_k, temperature, top_p, seed, rng_row, max_new, min_new, unfinished,
    seq_logprob, input_ids, position [C]; history, token_logprob [C, W]. Each update row (columns
    POOL_FIELDS, floats as float32 bits) sets its row's options; mode > 0 restarts the sequence."""
    s = _copy_state(state)
    for u in np.asarray(updates, dtype=np.int64):
        f = dict(zip(POOL_FIELDS, (int(v) for v in u)))
        r, m = f["row"], f["mode"]
        s["mode"][r], s["top_k"][r] = m, f["top_k"]
        s["seed"][r] = np.int64(f["seed"]).view(np.uint64)
        s["rng_row"][r], s["max_new"][r], s["min_new"][r] = f["rng_row"], f["max_new"], f["min_new"]
        s["temperature"][r] = np.int32(f["temperature"]).view(np.float32)
        s["top_p"][r] = np.int32(f["top_p"]).view(np.float32)
        s["unfinished"][r] = m != 0
        if m:
            s["seq_logprob"][r], s["input_ids"][r], s["position"][r] = 0, start, 0
            s["history"][r] = pad
            s["history"][r, 0] = start
            s["token_logprob"][r] = 0
    return s


def pool_step(state: dict[str, Any], scores: np.ndarray, n: int, *, eos: int) -> tuple[dict[str, Any], np.ndarray]:
    """One step of rows 0..n-1 (pool_set's state) -> (new state, scores with min-new masking).
    Row r (mode 1 greedy, 2 sampling; idle or finished rows unchanged) at t = position[r]: eos
    masked while t < min_new[r]; greedy takes argmax_logsumexp's token and log-prob, sampling
    sample_logprob's draw at u(seed[r], t, rng_row[r]); then sample_update's bookkeeping for one
    row, with input_ids[r] = token and position[r] = t + 1."""
    s = _copy_state(state)
    x = np.array(scores, dtype=np.float32, copy=True)
    w = s["history"].shape[1]
    for r in range(n):
        m = int(s["mode"][r])
        if m == 0 or not s["unfinished"][r]:
            continue
        t = int(s["position"][r])
        if t < int(s["min_new"][r]):
            x[r, eos] = -np.inf
        if m == 1:
            tok_a, mx, logsum = argmax_logsumexp(x[r:r + 1])
            tok = int(tok_a[0])
            lp = np.float32((x[r, tok] - mx[0]) - np.float32(logsum[0]))
        else:
            temp = float(s["temperature"][r])
            tok_a, lp_a = sample_logprob(x[r:r + 1], int(s["seed"][r]), t, temp, int(s["top_k"][r]),
                                         float(s["top_p"][r]), row_offset=int(s["rng_row"][r]))
            tok, lp = int(tok_a[0]), np.float32(lp_a[0])
        col = min(t + 1, w - 1)
        s["seq_logprob"][r] = s["seq_logprob"][r] + lp
        s["history"][r, col] = tok
        s["token_logprob"][r, col] = lp
        s["input_ids"][r] = tok
        s["unfinished"][r] = tok != eos and not t + 1 >= int(s["max_new"][r])
        s["position"][r] = t + 1
    return s, x
