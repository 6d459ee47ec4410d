// decoding_step.cu - the decoding strategies' per-step state updates, one single-block launch
// each (t5rt.decoding: sampling.py, beam.py, processors.py), plus the min-new-tokens processor.
//
// On the GPU everything a step does after choosing its candidates (history write, tokens,
// unfinished/finished flags, summed log-probs, beam selection and the finished-hypotheses merge,
// the step counter and the done flag) is ONE launch instead of dozens of elementwise kernels and
// k-round argmax loops. The kernels read the step counter and the done flag from the device, so a
// CUDA graph of `step()` stays exact after `done()` (they then change nothing but `parent`).
//
//   t5rt_dec_sample_update   greedy / multinomial sampling, one block of T5RT_DEC_THREADS
//   t5rt_dec_beam_update     beam search / beam sampling, one block, K = 2 * nb <= T5RT_DEC_MAX_K
//   t5rt_dec_min_new_tokens  scores[n, eos] = -inf while t < min_new_tokens, in place
//
// The update kernels run as one block (rows and inputs are strided over its threads), so they
// have no cross-block reductions; per-input work is a few dozen scalars and the sequence copies.
// NumPy references: t5rt.kernels.reference (sample_update, beam_update, min_new_tokens).
#include "t5rt_kernels.cuh"

#define T5RT_DEC_BIG (-1.0e9f)
// Greedy / sampling, one block. Per row n (HF `_sample` bookkeeping, sampling.py):
//   tok = unfinished ? nxt_raw : pad;  lp = (scores[n, tok] - row_max) - row_logsum  (or lp_in)
//   if active: seq_logprob += lp (unfinished rows); history[n, col] = tok; tokens[n] = tok;
//              token_logprob[n, col] = lp (unfinished rows); unfinished &= tok != eos && t+1 < T
//   t += active; done = !any(unfinished)
extern "C" __global__ void __launch_bounds__(T5RT_DEC_THREADS) t5rt_dec_sample_update(
    const float* scores,      // [N, V] processed scores, or null: lp_in holds the log-probs
    const float* row_max,     // [N] max of each scores row (unused with lp_in)
    const float* row_logsum,  // [N] log(sum(exp(scores - max)))
    const float* lp_in,       // [N] log-prob of nxt_raw (used when scores is null)
    const i64* nxt_raw,       // [N] chosen tokens before padding
    i64* history,             // [N, T+1]
    i64* tokens,              // [N]
    bool* unfinished,         // [N]
    float* seq_logprob,       // [N]
    float* token_logprob,     // [N, T+1] or null
    i64* step_counter,        // [] t
    bool* done,               // []
    int N, int V, int T, i64 pad, i64 eos) {
  __shared__ int any_open;
  const i64 t = *step_counter;
  const bool active = !*done;
  if (threadIdx.x == 0) any_open = 0;
  __syncthreads();
  const i64 W = (i64)T + 1;
  const i64 col = t + 1 < (i64)T ? t + 1 : (i64)T;
  const bool at_max = t + 1 >= (i64)T;
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    bool unf = unfinished[n];
    if (active) {
      const i64 tok = unf ? nxt_raw[n] : pad;
      const float lp = scores ? (scores[(i64)n * V + tok] - row_max[n]) - row_logsum[n] : lp_in[n];
      if (unf) seq_logprob[n] = seq_logprob[n] + lp;
      history[n * W + col] = tok;
      if (token_logprob && unf) token_logprob[n * W + col] = lp;
      tokens[n] = tok;
      unf = unf && tok != eos && !at_max;
      unfinished[n] = unf;
    }
    if (unf) any_open = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (active) *step_counter = t + 1;
    *done = !any_open;
  }
}

// x + flag * BIG as numpy computes it (flag as float32 times -1e9, then added).
__device__ __forceinline__ float t5rt_dec_add_big(float x, bool flag) {
  return x + (flag ? T5RT_DEC_BIG : -0.0f);
}

// Indices of the `take` largest of v[0..n) (descending, ties -> lower index) into out.
__device__ __forceinline__ void t5rt_dec_small_topk(const float* v, int n, int take, int* out) {
  u64 taken = 0;
  for (int i = 0; i < take; ++i) {
    int best = -1;
    for (int j = 0; j < n; ++j)
      if (!((taken >> j) & 1ull) && (best < 0 || v[j] > v[best])) best = j;
    taken |= 1ull << best;
    out[i] = best;
  }
}

// Beam search after candidate selection, one block (Hugging Face 5.17 `_beam_search`, beam.py):
// running beams = best nb of the K candidates (eos/limit hits masked), finished hypotheses =
// best nb of old finished U masked candidates / (t+1)**lp, early-stop heuristic, done flag.
extern "C" __global__ void __launch_bounds__(T5RT_DEC_THREADS) t5rt_dec_beam_update(
    const float* cand_score,  // [B, K] candidate scores, descending per input
    const i64* cand_idx,      // [B, K] flat index into nb*V (beam = idx / V, token = idx % V)
    const float* cand_lp,     // [B, K] token log-probs, or null without output_scores
    const float* denom,       // [T+1] float32 (t+1)**length_penalty, index t
    float best_denom,         // early_stopping="never", lp > 0: float32(T**lp) (else unused)
    int use_best_denom, int early_true,
    i64* history,             // [N, T+1]   N = B * nb
    i64* tokens,              // [N]
    i64* parent,              // [N]
    float* running_score,     // [B, nb]
    i64* fin_seq,             // [B, nb, T+1]
    float* fin_score,         // [B, nb]
    bool* fin_flag,           // [B, nb]
    i64* fin_len,             // [B, nb]
    bool* heur_unsat,         // [B]
    float* token_logprob,     // [N, T+1] or null
    float* fin_tlp,           // [B, nb, T+1] or null
    i64* scratch_hist,        // [N, T+1]
    i64* scratch_fin,         // [N, T+1]
    float* scratch_tlp,       // [N, T+1] or null
    float* scratch_fin_tlp,   // [N, T+1] or null
    int* sel_run,             // [B, nb] chosen candidate per running beam
    int* sel_fin,             // [B, nb] chosen entry of (old finished ++ candidates)
    i64* step_counter, bool* done,
    int B, int nb, int V, int T, i64 eos) {
  __shared__ int any_unsat, all_fin, all_hits;
  const int K = 2 * nb, N = B * nb;
  const i64 W = (i64)T + 1;
  const i64 t = *step_counter;
  if (*done) {  // frozen: parent = identity, nothing else changes
    for (int n = threadIdx.x; n < N; n += blockDim.x) parent[n] = n;
    return;
  }
  const i64 col = t + 1 < (i64)T ? t + 1 : (i64)T;
  const bool at_max = t + 1 >= (i64)T;
  const i64 C = col + 1;  // columns 0..col can be nonzero/non-pad; later ones stay as they are
  if (threadIdx.x == 0) { any_unsat = 0; all_fin = 1; all_hits = 1; }
  // 0. snapshot the sequences the new ones are gathered from
  for (i64 e = threadIdx.x; e < (i64)N * C; e += blockDim.x) {
    const i64 at = (e / C) * W + e % C;
    scratch_hist[at] = history[at];
    scratch_fin[at] = fin_seq[at];
    if (token_logprob) { scratch_tlp[at] = token_logprob[at]; scratch_fin_tlp[at] = fin_tlp[at]; }
  }
  __syncthreads();
  // 1. per input: running beams, finished merge, heuristic (a few dozen scalars)
  const float d = denom[t];
  for (int b = threadIdx.x; b < B; b += blockDim.x) {
    float run[T5RT_DEC_MAX_K], merged[T5RT_DEC_MAX_K + T5RT_DEC_MAX_K / 2];
    bool hit[T5RT_DEC_MAX_K];
    int pick[T5RT_DEC_MAX_K / 2], keep[T5RT_DEC_MAX_K / 2];
    bool full = true;
    for (int i = 0; i < nb; ++i) full = full && fin_flag[b * nb + i];
    const bool unsat = heur_unsat[b];
    bool hits_all = true;
    for (int j = 0; j < K; ++j) {
      const float s = cand_score[b * K + j];
      const i64 tok = cand_idx[b * K + j] % V;
      hit[j] = tok == eos || at_max;
      hits_all = hits_all && hit[j];
      run[j] = t5rt_dec_add_big(s, hit[j]);
      float f = s / d;
      if (early_true) f = t5rt_dec_add_big(f, full);
      f = t5rt_dec_add_big(f, !unsat);
      f = t5rt_dec_add_big(f, !(hit[j] && j < nb));
      merged[nb + j] = f;
    }
    for (int i = 0; i < nb; ++i) merged[i] = fin_score[b * nb + i];
    t5rt_dec_small_topk(run, K, nb, pick);
    t5rt_dec_small_topk(merged, nb + K, nb, keep);
    // new finished state (read everything before writing)
    float nf_score[T5RT_DEC_MAX_K / 2];
    bool nf_flag[T5RT_DEC_MAX_K / 2];
    i64 nf_len[T5RT_DEC_MAX_K / 2];
    for (int i = 0; i < nb; ++i) {
      const int m = keep[i];
      nf_score[i] = merged[m];
      nf_flag[i] = m < nb ? fin_flag[b * nb + m] : (hit[m - nb] && m - nb < nb);
      nf_len[i] = m < nb ? fin_len[b * nb + m] : t + 1;
    }
    const float best_running = use_best_denom ? run[pick[0]] / best_denom : run[pick[0]] / d;
    float worst = nf_score[0];
    for (int i = 1; i < nb; ++i) worst = nf_score[i] < worst ? nf_score[i] : worst;
    bool beats = false;
    for (int i = 0; i < nb; ++i) beats = beats || best_running > (nf_flag[i] ? worst : T5RT_DEC_BIG);
    const bool new_unsat = unsat && beats;
    bool flags_all = true;
    for (int i = 0; i < nb; ++i) {
      const int n = b * nb + i;
      const i64 idx = cand_idx[b * K + pick[i]];
      running_score[n] = run[pick[i]];
      parent[n] = (i64)b * nb + idx / V;
      tokens[n] = idx % V;
      fin_score[n] = nf_score[i];
      fin_flag[n] = nf_flag[i];
      fin_len[n] = nf_len[i];
      flags_all = flags_all && nf_flag[i];
      sel_run[n] = pick[i];
      sel_fin[n] = keep[i];
    }
    heur_unsat[b] = new_unsat;
    if (new_unsat) any_unsat = 1;
    if (!flags_all) all_fin = 0;
    if (!hits_all) all_hits = 0;
  }
  __syncthreads();
  // 2. sequences: candidate j of input b = parent's history with the token at column col
  for (i64 e = threadIdx.x; e < (i64)N * C; e += blockDim.x) {
    const int n = (int)(e / C);
    const i64 c = e % C, at = (i64)n * W + c;
    const int b = n / nb;
    const int j = sel_run[n];
    const i64 idx = cand_idx[b * K + j];
    const i64 src = ((i64)b * nb + idx / V) * W + c;
    history[at] = c == col ? idx % V : scratch_hist[src];
    if (token_logprob) token_logprob[at] = c == col ? cand_lp[b * K + j] : scratch_tlp[src];
    const int m = sel_fin[n];
    if (m < nb) {
      const i64 from = ((i64)b * nb + m) * W + c;
      fin_seq[at] = scratch_fin[from];
      if (token_logprob) fin_tlp[at] = scratch_fin_tlp[from];
    } else {
      const i64 idx2 = cand_idx[b * K + (m - nb)];
      const i64 src2 = ((i64)b * nb + idx2 / V) * W + c;
      fin_seq[at] = c == col ? idx2 % V : scratch_hist[src2];
      if (token_logprob) fin_tlp[at] = c == col ? cand_lp[b * K + (m - nb)] : scratch_tlp[src2];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    *step_counter = t + 1;
    const bool exists_open = !(all_fin && early_true);
    *done = !(any_unsat && exists_open && !all_hits);
  }
}

// Hugging Face MinNewTokensLengthLogitsProcessor in place: scores[n, eos] = -inf while t < min_new.
extern "C" __global__ void t5rt_dec_min_new_tokens(float* scores, i64 row_stride, int N, i64 eos,
                                                   const i64* step_counter, i64 min_new) {
  if (*step_counter >= min_new) return;
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += blockDim.x * gridDim.x)
    scores[(i64)n * row_stride + eos] = -__int_as_float(0x7f800000);
}
