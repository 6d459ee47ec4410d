"""Workbench: the decoding strategies' per-step state updates (kernels/decoding_step.cu).

    python bench/kernels/step_update.py

sample_update (greedy / sampling bookkeeping of one step, one block) against the same update
as cupy array code (what sampling.py runs with fused=False: a dozen elementwise launches);
beam_update (everything after candidate selection, one block) at sequence length `col`;
min_new_tokens (eos masked in place). Floors: the bytes each reads and writes. The step counter
and done flag are device state the kernels advance, so each timed call first resets them
(two cupy fills, timed alone in the "compared with" column); the whole decoding step per mode
is bench/decoding_step.py.
"""

from __future__ import annotations

import numpy as np

import t5rt.kernels as K
from t5rt.kernels import reference as R

from _bench import Row, cupy, report, time_device, time_eager, time_host

V = 32128
PAD, EOS = 0, 1


def _sample_state(xp, n: int, t_max: int) -> dict:
    history = xp.zeros((n, t_max + 1), dtype=np.int64)
    return dict(history=history, tokens=xp.zeros(n, dtype=np.int64), unfinished=xp.ones(n, dtype=bool),
                seq_logprob=xp.zeros(n, dtype=np.float32), step_counter=xp.zeros((), dtype=np.int64),
                done=xp.zeros((), dtype=bool))


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def check(launcher=None) -> str:
    """One sample_update, beam_update and min_new_tokens step vs the references (default: on the
    GPU; tests pass t5rt.kernels.host.HostKernels)."""
    launcher = launcher or K.cuda_launcher()
    xp, run = launcher.xp, dict(launcher=launcher)
    g = np.random.default_rng(5)
    n, t_max, v = 7, 6, 13
    state = _sample_state(np, n, t_max)
    state["token_logprob"] = np.zeros((n, t_max + 1), dtype=np.float32)
    d = {k: xp.array(a) for k, a in state.items()}
    scores = (g.standard_normal((n, v)) * 2).astype(np.float32)
    row_max = scores.max(axis=1)
    row_logsum = np.log(np.exp(scores - row_max[:, None]).sum(axis=1)).astype(np.float32)
    nxt = g.integers(0, v, n).astype(np.int64)
    want = R.sample_update(state, nxt, pad=PAD, eos=EOS, scores=scores, row_max=row_max, row_logsum=row_logsum)
    K.sample_update(xp.array(nxt), d["history"], d["tokens"], d["unfinished"], d["seq_logprob"],
                    d["step_counter"], d["done"], pad=PAD, eos=EOS, scores=xp.array(scores),
                    row_max=xp.array(row_max), row_logsum=xp.array(row_logsum), token_logprob=d["token_logprob"],
                    **run)
    ok = all(np.array_equal(_host(d[k]), want[k]) for k in want)

    b, nb = 2, 3
    k = 2 * nb
    bstate = _beam_state(np, b, nb, t_max)
    bd = {key: None if a is None else xp.array(a) for key, a in bstate.items()}
    cand_score = -np.sort(g.random((b, k)) * 4, axis=1).astype(np.float32)
    cand_idx = np.stack([g.choice(nb * v, k, replace=False) for _ in range(b)]).astype(np.int64)
    denom = np.power(np.arange(1, t_max + 2, dtype=np.float64), 1.0).astype(np.float32)
    fixed = dict(best_denom=None, early_stopping_true=False, vocab_size=v, eos=EOS)
    bwant = R.beam_update(bstate, cand_score, cand_idx, None, denom=denom, **fixed)
    ws = K.BeamUpdateWorkspace(b, nb, t_max, False, **run)
    K.beam_update(xp.array(cand_score), xp.array(cand_idx), None, denom=xp.array(denom),
                  token_logprob=None, fin_token_logprob=None, workspace=ws, **_beam_kw(bd), **fixed)
    ok = ok and all(np.array_equal(_host(bd[key]), bwant[key]) for key in bwant if bwant[key] is not None)

    masked = _host(K.min_new_tokens(xp.array(scores), xp.zeros((), dtype=np.int64), 2, EOS, **run))
    ok = ok and np.array_equal(masked, R.min_new_tokens(scores, 0, 2, EOS))
    return "ok" if ok else "MISMATCH"


def _beam_state(xp, b: int, nb: int, t_max: int) -> dict:
    n, w = b * nb, t_max + 1
    running = np.zeros((b, nb), dtype=np.float32)
    running[:, 1:] = -1.0e9
    s = dict(history=np.zeros((n, w), dtype=np.int64), tokens=np.zeros(n, dtype=np.int64),
             parent=np.arange(n, dtype=np.int64), running_score=running,
             fin_seq=np.zeros((b, nb, w), dtype=np.int64), fin_score=np.full((b, nb), -1.0e9, dtype=np.float32),
             fin_flag=np.zeros((b, nb), dtype=bool), fin_len=np.zeros((b, nb), dtype=np.int64),
             heuristic_unsat=np.ones(b, dtype=bool), token_logprob=None, fin_token_logprob=None,
             step_counter=np.array(0, dtype=np.int64), done=np.array(False))
    return {k: None if a is None else xp.asarray(a) for k, a in s.items()}


def _beam_kw(d: dict) -> dict:
    names = ("history", "tokens", "parent", "running_score", "fin_seq", "fin_score", "fin_flag", "fin_len",
             "heuristic_unsat", "step_counter")
    return {**{k: d[k] for k in names}, "done": d["done"]}


def run() -> list[Row]:
    cp = cupy()
    status = check()
    out = []
    t_max = 1024  # columns: the counter is reset before each call, so no row ever finishes
    for n in (1, 8, 32, 128):
        s = _sample_state(cp, n, t_max)
        g = np.random.default_rng(n)
        scores = cp.asarray(g.standard_normal((n, V)).astype(np.float32))
        row_max, row_logsum = K.row_logsumexp(scores)
        nxt = cp.asarray(g.integers(2, V, n).astype(np.int64))  # never eos
        cols = cp.arange(t_max + 1, dtype=np.int64)[None, :]

        def reset(s=s):
            s["step_counter"].fill(16)
            s["done"].fill(False)

        def fn(s=s, scores=scores, row_max=row_max, row_logsum=row_logsum, nxt=nxt):
            reset(s)
            K.sample_update(nxt, s["history"], s["tokens"], s["unfinished"], s["seq_logprob"], s["step_counter"],
                            s["done"], pad=PAD, eos=EOS, scores=scores, row_max=row_max, row_logsum=row_logsum)

        def base(s=s, scores=scores, row_max=row_max, row_logsum=row_logsum, nxt=nxt, cols=cols):
            reset(s)  # sampling.py's array-code bookkeeping of one step (fused=False)
            t, unf, active = s["step_counter"], s["unfinished"], ~s["done"]
            tok = cp.where(unf, nxt, PAD)
            lp = (cp.take_along_axis(scores, tok[:, None], axis=1)[:, 0] - row_max) - row_logsum
            live = unf & active
            s["seq_logprob"][...] = cp.where(live, s["seq_logprob"] + lp, s["seq_logprob"])
            at_col = (cols == cp.minimum(t + 1, t_max)) & active
            s["history"][...] = cp.where(at_col, tok[:, None], s["history"])
            s["tokens"][...] = cp.where(active, tok, s["tokens"])
            s["unfinished"][...] = cp.where(active, unf & (tok != EOS) & ~(t + 1 >= t_max), unf)
            t += active.astype(np.int64)
            s["done"][...] = ~s["unfinished"].any()

        fill_us = time_device(reset)
        base_txt = f"cupy array code {time_eager(base):.1f} µs; fills alone {fill_us:.2f} µs"
        out.append(Row("sample_update", f"N={n}", time_device(fn), n * 46, time_host(fn), base_txt, status))

    for b, nb, col in ((1, 4, 64), (8, 4, 64), (8, 4, 256), (32, 4, 128)):
        k, n = 2 * nb, b * nb
        d = _beam_state(cp, b, nb, t_max)
        ws = K.BeamUpdateWorkspace(b, nb, t_max, False)
        g = np.random.default_rng(b * nb)
        cand_score = cp.asarray(-np.sort(g.random((b, k)) * 4, axis=1).astype(np.float32))
        cand_idx = cp.asarray(np.stack([g.choice(nb * V, k, replace=False) for _ in range(b)]).astype(np.int64))
        denom = cp.asarray(np.arange(1, t_max + 2, dtype=np.float32))

        def beam(d=d, ws=ws, cand_score=cand_score, cand_idx=cand_idx, denom=denom, col=col):
            d["step_counter"].fill(col - 1)
            d["done"].fill(False)
            K.beam_update(cand_score, cand_idx, None, denom=denom, best_denom=None, early_stopping_true=False,
                          token_logprob=None, fin_token_logprob=None, vocab_size=V, eos=EOS, workspace=ws,
                          **_beam_kw(d))

        # sequences: snapshot (read history + finished, write scratch), then gather back: 8 B each way
        moved = 4 * n * (col + 1) * 8 * 2
        out.append(Row("beam_update", f"B={b} nb={nb} col={col}", time_device(beam), moved, time_host(beam),
                       "incl. 2 fills", status))

    for n in (8, 128):
        scores = cp.asarray(np.random.default_rng(n).standard_normal((n, V)).astype(np.float32))
        step = cp.zeros((), dtype=np.int64)
        mnt = lambda scores=scores, step=step: K.min_new_tokens(scores, step, 4, EOS)  # noqa: E731
        out.append(Row("min_new_tokens", f"N={n} V={V}", time_device(mnt), n * 4 * 2, time_host(mnt),
                       "", status))
    return out


if __name__ == "__main__":
    print("kernels from", K.source())
    report("decoding-step state updates", run())
