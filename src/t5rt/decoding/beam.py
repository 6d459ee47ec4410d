"""Beam search (and beam sampling), step for step Hugging Face 5.17 `_beam_search`.

Rows: N = batch * nb (nb = num_beams); rows of input b are b*nb .. b*nb+nb-1. K = 2 * nb
candidates are kept per input each step (HF `beams_to_keep` with one eos id). Per step t
(history[:, :t+1] valid, HF cur_len = t+1), all in fixed shapes:

    logp   = pipeline(history, log_softmax(logits))          # [N, V]
    acc    = logp + running_score                            # [B, nb*V]
    cand   = topk(acc, K)  | gumbel_topk(acc, K) (sampling)   # score, beam, token [B, K]
    hits   = token == eos | t+1 >= max_new_tokens            # HF stopping criteria
    running <- best nb of (cand score + hits * -1e9)         # parents, tokens, scores
    finished <- best nb of finished ∪ (cand score / (t+1)**length_penalty, masked by -1e9 for
                candidates not among the first nb that hit, batches that are full with
                early_stopping=True, and batches whose early-stop heuristic is satisfied)
    heuristic &= any(running[:, 0] / best_len**lp > worst finished score)
    done = !(any(heuristic) & !(all finished & early_stopping is True) & !all(hits))

Masks are added as float32 -1e9 in HF's order so rounding is identical. Once done, step()
changes nothing (parent = identity), as if HF's loop had stopped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..generation_config import GenerationConfig
from ..kernels import BeamUpdateWorkspace, Geometry, beam_update
from . import guards, ops, rng
from .ops import Array
from .processors import LogitsPipeline
from .sampling import _to_host

_BIG = np.float32(-1.0e9)


def _expand(xp: Any, idx: Array, n: int) -> Array:
    """[B, J] beam indices -> [B, J, n] for take_along_axis over axis 1 of a [B, *, n] array."""
    return xp.broadcast_to(idx[:, :, None], idx.shape + (n,))


class BeamSearchStrategy:
    """Beam search over `num_beams` beams per input; beam sampling when config.do_sample."""

    def __init__(self, xp: Any, config: GenerationConfig, *, batch: int, vocab_size: int,
                 max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                 decoder_start_token_id: int, first_input: int = 0, kernels: Any = None,
                 fused: Any = None):
        self.xp, self.config = xp, config
        nb = config.num_beams
        # cupy: one fused kernel for everything after candidate selection (t5rt.kernels.beam_update,
        # run by the launcher _sk), and t5rt.kernels' beam_step / beam_topk for the candidates
        self._sk = ops.kernel_launcher(xp, fused) if 2 * nb <= Geometry.DEC_MAX_K else None
        self._kernels = kernels if self._sk is not None else None
        self.batch, self.num_beams, self.rows_per_input, self.rows = batch, nb, nb, batch * nb
        self.num_return_sequences = config.num_return_sequences
        self.K = 2 * nb
        self.vocab_size, self.max_new_tokens = vocab_size, max_new_tokens
        self.pad, self.eos = pad_token_id, eos_token_id
        self.do_sample = config.do_sample
        self.length_penalty = float(config.length_penalty)
        self.early_stopping = config.early_stopping
        B, N, T, K, V = batch, self.rows, max_new_tokens, self.K, vocab_size
        self.pipeline = LogitsPipeline(xp, config, rows=N, vocab_size=V, history_len=T + 1,
                                       eos_token_id=eos_token_id, beams=True, launcher=self._sk)
        self._start = decoder_start_token_id
        # running beams (state: updated in place by step(), set by reset())
        self.history = xp.empty((N, T + 1), dtype=xp.int64)  # [N, T+1]
        self.tokens = xp.empty((N,), dtype=xp.int64)  # [N]
        self.parent = xp.empty((N,), dtype=xp.int64)  # [N]
        self.running_score = xp.empty((B, nb), dtype=xp.float32)  # [B, nb]
        # finished hypotheses (HF `sequences`, `beam_scores`, `is_sent_finished`) + their lengths
        self.fin_seq = xp.empty((B, nb, T + 1), dtype=xp.int64)  # [B, nb, T+1]
        self.fin_score = xp.empty((B, nb), dtype=xp.float32)  # [B, nb]
        self.fin_flag = xp.empty((B, nb), dtype=xp.bool_)  # [B, nb]
        self.fin_len = xp.empty((B, nb), dtype=xp.int64)  # [B, nb] generated tokens
        self.heuristic_unsat = xp.empty((B,), dtype=xp.bool_)  # [B]
        self.output_scores = bool(config.output_scores)
        if self.output_scores:  # per-token processed log-probs, carried like the sequences
            self.token_logprob = xp.empty((N, T + 1), dtype=xp.float32)  # [N, T+1]
            self.fin_token_logprob = xp.empty((B, nb, T + 1), dtype=xp.float32)  # [B, nb, T+1]
        self.capturable = not self.pipeline.has_user_processors
        self._guard = xp is np or not self.capturable  # NaN checks need a host read (guards.py)
        self.step_counter = xp.empty((), dtype=xp.int64)
        self._done = xp.empty((), dtype=xp.bool_)
        self._seed = rng.seed_array(xp, 0)
        # constants
        self._cols = xp.arange(T + 1, dtype=xp.int64)  # [T+1]
        self._identity = xp.arange(N, dtype=xp.int64)  # [N]
        self._batch_base = (xp.arange(B, dtype=xp.int64) * nb)[:, None]  # [B, 1]
        self._top_nb = (xp.arange(K) < nb)[None, :]  # [1, K]
        self._flat_idx = xp.arange(nb * V, dtype=xp.int64)  # [nb*V] (sampling keys)
        self._batch_rows = xp.arange(B, dtype=xp.int64) + first_input  # RNG stream per input
        if self._sk is not None:
            self._init_fused()
        self.reset()

    def reset(self) -> None:
        """Back to the state before step 0, in place: every buffer keeps its address, so a CUDA
        graph captured over step() replays correctly for the next request. A fresh seed when
        config.seed is None (as a new strategy would draw)."""
        ops.reset_sequences(self.history, self.tokens, self.step_counter, self._done,
                            self.pad, self._start)
        self.host_step = 0
        self.xp.copyto(self.parent, self._identity)
        self.running_score.fill(0)
        self.running_score[:, 1:] = _BIG
        self.fin_seq.fill(self.pad)
        self.fin_score.fill(_BIG)
        self.fin_flag.fill(False)
        self.fin_len.fill(0)
        self.heuristic_unsat.fill(True)
        if self.output_scores:
            self.token_logprob.fill(0)
            self.fin_token_logprob.fill(0)
        self.seed = rng.reseed(self.xp, self._seed, self.config.seed)

    def _init_fused(self) -> None:
        """Scratch and constants of the fused path (allocated once, reused every step)."""
        xp, B, T, nb, lp = self.xp, self.batch, self.max_new_tokens, self.num_beams, self.length_penalty
        # float32((t+1)**lp) for t = 0..T, computed like the array code (float64 power, then cast)
        self._denom = xp.asarray(np.power(np.arange(1, T + 2, dtype=np.float64), lp).astype(np.float32))
        # early_stopping="never", lp > 0: HF's heuristic divides by the longest length's float32(T**lp)
        use_best_denom = self.early_stopping == "never" and lp > 0.0
        self._best_denom = float(np.float32(float(T) ** lp)) if use_best_denom else None
        self._update_ws = BeamUpdateWorkspace(B, nb, T, self.output_scores, launcher=self._sk)
        self._ws = None
        if self._kernels is not None:
            self._ws = self._kernels.TopKWorkspace(B, nb * self.vocab_size, self.K, nb, launcher=self._sk)

    # --- one step -------------------------------------------------------------------------
    def step(self, logits: Array) -> None:
        """Consume logits [N, V] of position t; choose parents/tokens; t += 1 (until done)."""
        if self._sk is not None:
            return self._step_fused(logits)
        xp, t = self.xp, self.step_counter
        B, nb, K, V, T = self.batch, self.num_beams, self.K, self.vocab_size, self.max_new_tokens
        lp = self.length_penalty
        active = ~self._done

        logp, cand_score, cand_idx = self._array_candidates(logits, t)
        cand_beam = cand_idx // V  # [B, K]
        cand_tok = cand_idx % V  # [B, K]
        hits = (cand_tok == self.eos) | (t + 1 >= T)  # [B, K]

        # candidate sequences: parent history with the new token at column t+1
        hist = self.history.reshape(B, nb, T + 1)
        cand_seq = xp.take_along_axis(hist, _expand(xp, cand_beam, T + 1), axis=1)  # [B, K, T+1]
        col = xp.minimum(t + 1, T)
        at_col = self._cols == col  # [T+1]
        cand_seq = xp.where(at_col, cand_tok[:, :, None], cand_seq)
        if self.output_scores:
            cand_lp = xp.take_along_axis(logp.reshape(B, nb * V), cand_idx, axis=1)  # [B, K]
            cand_tlp = xp.take_along_axis(self.token_logprob.reshape(B, nb, T + 1),
                                          _expand(xp, cand_beam, T + 1), axis=1)  # [B, K, T+1]
            cand_tlp = xp.where(at_col, cand_lp[:, :, None], cand_tlp)

        # e. running beams for the next step
        run_score = cand_score + hits.astype(xp.float32) * _BIG  # [B, K]
        _, nxt = ops.topk(xp, run_score, nb)  # [B, nb]
        new_running = xp.take_along_axis(run_score, nxt, axis=1)
        new_parent = xp.take_along_axis(cand_beam, nxt, axis=1) + self._batch_base  # [B, nb]
        new_tokens = xp.take_along_axis(cand_tok, nxt, axis=1)  # [B, nb]
        new_hist = xp.take_along_axis(cand_seq, _expand(xp, nxt, T + 1), axis=1)  # [B, nb, T+1]

        if self.output_scores:
            new_tlp = xp.take_along_axis(cand_tlp, _expand(xp, nxt, T + 1), axis=1)  # [B, nb, T+1]

        # f. finished hypotheses
        gen_len = (t + 1).astype(xp.float64)
        fin_cand = cand_score / xp.power(gen_len, lp).astype(xp.float32)  # [B, K]
        if self.early_stopping is True:
            full = self.fin_flag.all(axis=1, keepdims=True)  # [B, 1]
            fin_cand = fin_cand + full.astype(xp.float32) * _BIG
        fin_cand = fin_cand + (~self.heuristic_unsat[:, None]).astype(xp.float32) * _BIG
        just_done = hits & self._top_nb  # [B, K]
        fin_cand = fin_cand + (~just_done).astype(xp.float32) * _BIG
        merged_score = xp.concatenate([self.fin_score, fin_cand], axis=1)  # [B, nb+K]
        _, keep = ops.topk(xp, merged_score, nb)  # [B, nb]
        merged_seq = xp.concatenate([self.fin_seq, cand_seq], axis=1)  # [B, nb+K, T+1]
        merged_flag = xp.concatenate([self.fin_flag, just_done], axis=1)
        cand_len = xp.broadcast_to(t + 1, (B, K)).astype(xp.int64)
        merged_len = xp.concatenate([self.fin_len, cand_len], axis=1)
        new_fin_score = xp.take_along_axis(merged_score, keep, axis=1)
        new_fin_flag = xp.take_along_axis(merged_flag, keep, axis=1)
        new_fin_len = xp.take_along_axis(merged_len, keep, axis=1)
        new_fin_seq = xp.take_along_axis(merged_seq, _expand(xp, keep, T + 1), axis=1)
        if self.output_scores:
            merged_tlp = xp.concatenate([self.fin_token_logprob, cand_tlp], axis=1)
            new_fin_tlp = xp.take_along_axis(merged_tlp, _expand(xp, keep, T + 1), axis=1)

        # g. early-stop heuristic (HF evaluates it with cur_len already advanced: t+2)
        if self.early_stopping == "never" and lp > 0.0:
            best_len = float(T) ** lp
            best_running = new_running[:, 0] / np.float32(best_len)  # [B]
        else:
            best_running = new_running[:, 0] / xp.power(gen_len, lp).astype(xp.float32)
        worst_fin = xp.where(new_fin_flag, new_fin_score.min(axis=1, keepdims=True), _BIG)  # [B, nb]
        new_unsat = self.heuristic_unsat & (best_running[:, None] > worst_fin).any(axis=1)  # [B]

        improvement_possible = new_unsat.any()
        exists_open = ~(new_fin_flag.all() & (self.early_stopping is True))
        valid_continuations = ~hits.all()
        now_done = ~(improvement_possible & exists_open & valid_continuations)

        # commit (all in place, nothing changes once done)
        ops.assign_where(xp, self.running_score, active, new_running)
        ops.assign_where(xp, self.history, active, new_hist.reshape(self.rows, T + 1))
        ops.assign_where(xp, self.tokens, active, new_tokens.reshape(-1))
        ops.assign_where(xp, self.parent, active, new_parent.reshape(-1))
        xp.copyto(self.parent, xp.where(active, self.parent, self._identity))
        ops.assign_where(xp, self.fin_score, active, new_fin_score)
        ops.assign_where(xp, self.fin_flag, active, new_fin_flag)
        ops.assign_where(xp, self.fin_len, active, new_fin_len)
        ops.assign_where(xp, self.fin_seq, active, new_fin_seq)
        ops.assign_where(xp, self.heuristic_unsat, active, new_unsat)
        if self.output_scores:
            ops.assign_where(xp, self.token_logprob, active, new_tlp.reshape(self.rows, T + 1))
            ops.assign_where(xp, self.fin_token_logprob, active, new_fin_tlp)
        self.step_counter += active.astype(xp.int64)
        xp.copyto(self._done, self._done | now_done)
        self.host_step += 1

    def _array_candidates(self, logits: Array, t: Array, kernels: Any = None) -> tuple[Array, Array, Array]:
        """log_softmax -> processors -> + running beam score -> the top K candidates per input.

        -> (logp [N, V], cand_score [B, K], cand_idx [B, K] into [nb*V]); beam sampling draws K
        without replacement (Gumbel-top-k); `kernels` (t5rt.kernels) does the top-K on the GPU.
        """
        xp = self.xp
        B, nb, K, V = self.batch, self.num_beams, self.K, self.vocab_size
        logp = ops.log_softmax(xp, logits)  # [N, V]
        logp = self.pipeline(self.history, logp, t, self.host_step)
        if self._guard:
            guards.check_beam_logp(xp, logp, self.host_step)
        acc = (logp.reshape(B, nb, V) + self.running_score[:, :, None]).reshape(B, nb * V)
        if self.do_sample:
            u = rng.uniform(xp, self._seed, t, self._batch_rows, self._flat_idx)  # [B, nb*V]
            cand_score, cand_idx = ops.gumbel_topk(xp, acc, u, K)  # [B, K]
        elif kernels is not None:
            cand_score, cand_idx = kernels.beam_topk(xp.ascontiguousarray(acc), K, self._ws)
        else:
            cand_score, cand_idx = ops.topk(xp, acc, K)  # [B, K]
        return logp, cand_score, cand_idx

    def _step_fused(self, logits: Array) -> None:
        """step() as candidate selection + ONE update kernel (t5rt.kernels.beam_update).

        Candidates: t5rt.kernels.beam_step (log_softmax + beam score + top-K fused, 3 launches)
        when no processor is configured; else log_softmax + processors in array code, then
        beam_topk (kernels) / ops.topk; beam sampling keeps ops.gumbel_topk (float64 keys).
        """
        xp, t = self.xp, self.step_counter
        B, nb, K, V = self.batch, self.num_beams, self.K, self.vocab_size
        k = self._kernels
        logits = logits.astype(xp.float32, copy=False)
        cand_lp = None
        if k is not None and not self.do_sample and self.pipeline.is_identity:
            logits = xp.ascontiguousarray(logits)  # [N, V]
            cand_score, cand_idx = k.beam_step(logits, self.running_score.reshape(-1), nb, K, self._ws)
            if self.output_scores:  # log_softmax(logits)[row, token] from the kernel's row stats
                rows = cand_idx // V + self._batch_base  # [B, K]
                cand_lp = (logits[rows, cand_idx % V] - self._ws.row_max[rows]) - self._ws.row_logsum[rows]
        else:
            logp, cand_score, cand_idx = self._array_candidates(logits, t, k)
            if self.output_scores:
                cand_lp = xp.take_along_axis(logp.reshape(B, nb * V), cand_idx, axis=1)  # [B, K]
        cand_score = xp.ascontiguousarray(cand_score, dtype=xp.float32)
        cand_idx = xp.ascontiguousarray(cand_idx, dtype=xp.int64)
        if cand_lp is not None:
            cand_lp = xp.ascontiguousarray(cand_lp, dtype=xp.float32)
        out = self.output_scores
        beam_update(cand_score, cand_idx, cand_lp, denom=self._denom, best_denom=self._best_denom,
                    early_stopping_true=self.early_stopping is True, history=self.history,
                    tokens=self.tokens, parent=self.parent, running_score=self.running_score,
                    fin_seq=self.fin_seq, fin_score=self.fin_score, fin_flag=self.fin_flag,
                    fin_len=self.fin_len, heuristic_unsat=self.heuristic_unsat,
                    token_logprob=self.token_logprob if out else None,
                    fin_token_logprob=self.fin_token_logprob if out else None,
                    step_counter=self.step_counter, done=self._done, vocab_size=V, eos=self.eos,
                    workspace=self._update_ws)
        self.host_step += 1

    def done(self) -> Array:
        """0-d bool on the device: HF's beam loop would have stopped."""
        return self._done

    def result(self) -> tuple[list[list[int]], list[float]]:
        """Host side: the best num_return_sequences finished hypotheses of each input, best first."""
        seq, length, score = _to_host(self.fin_seq), _to_host(self.fin_len), _to_host(self.fin_score)
        seqs, scores = [], []
        for b in range(self.batch):
            for j in range(self.num_return_sequences):
                seqs.append(seq[b, j, 1 : 1 + int(length[b, j])].tolist())
                scores.append(float(score[b, j]))
        return seqs, scores

    def token_scores(self) -> list[list[float]] | None:
        """Per returned sequence, each token's processed log-prob (config.output_scores):
        HF's `compute_transition_scores(sequences, scores, beam_indices)`."""
        if not self.output_scores:
            return None
        length, tlp = _to_host(self.fin_len), _to_host(self.fin_token_logprob)
        return [tlp[b, j, 1 : 1 + int(length[b, j])].tolist()
                for b in range(self.batch) for j in range(self.num_return_sequences)]
