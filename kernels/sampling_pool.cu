// sampling_pool.cu - the token choice and bookkeeping of every single-row greedy / sampling
// request in an in-flight slot pool in ONE launch, however many requests share the pool
// (t5rt.decoding.pooled, DESIGN.md §5a). Per-request strategies cost a graph replay and a few
// tiny kernels each per step, which made the H100 scheduler host- and launch-bound at ~40 rows.
//
// Row r of the pool carries its own options and step counter (its decoder position):
//   mode[r]       0 idle (every kernel skips it), 1 greedy, 2 multinomial sampling
//   temperature, top_k (0 = off), top_p, seed, rng_row (request-wide RNG row), max_new, min_new
//   history [C, W] (col 0 = start token), unfinished, seq_logprob, token_logprob [C, W]
//   input_ids [C] (the next engine input) and position [C] (= the row's step t)
//
//   t5rt_pool_set   options and fresh state of joining rows (mode 0: leaving), from one upload
//   t5rt_pool_step  one block per row: min-new-tokens masking, the token choice (greedy: the
//                   body of t5rt_argmax_logsumexp; sampling: t5rt_sample_row with
//                   u = t5rt_uniform(seed[r], t, rng_row[r], 0)), then t5rt_dec_sample_update's
//                   bookkeeping for the row and its next engine inputs
// Each row's arithmetic is the solo strategy's (the same device functions, block size and float
// expressions: sampling.py's fused path), so a pooled request decodes bit-identically to solo.
// NumPy references: t5rt.kernels.reference (pool_set, pool_step).
#include "t5rt_kernels.cuh"

// Columns of t5rt_pool_set's upload [k, T5RT_POOL_FIELDS] int64 (floats as their bit patterns);
// mirrored by t5rt.kernels.PoolField.
enum T5rtPoolField {
  T5RT_POOL_ROW = 0,
  T5RT_POOL_MODE = 1,
  T5RT_POOL_TOP_K = 2,
  T5RT_POOL_SEED = 3,
  T5RT_POOL_RNG_ROW = 4,
  T5RT_POOL_MAX_NEW = 5,
  T5RT_POOL_MIN_NEW = 6,
  T5RT_POOL_TEMPERATURE = 7,
  T5RT_POOL_TOP_P = 8,
  T5RT_POOL_FIELDS = 9,
};

// One block per update j (block size any): row upd[j, ROW] gets its options; mode > 0 also
// resets its sequence (history = start, pad...; position 0, input start, unfinished).
extern "C" __global__ void __launch_bounds__(T5RT_DEC_THREADS) t5rt_pool_set(
    const i64* upd, int k,                              // [k, T5RT_POOL_FIELDS]
    int* mode, int* top_k, float* temperature, float* top_p, u64* seed, i64* rng_row,
    i64* max_new, i64* min_new,                         // [C] each
    i64* history, float* token_logprob, int W,          // [C, W] each
    bool* unfinished, float* seq_logprob, i64* input_ids, i64* position,  // [C] each
    i64 pad, i64 start) {
  const int j = blockIdx.x;
  if (j >= k) return;
  const i64* u = upd + (i64)j * T5RT_POOL_FIELDS;
  const i64 r = u[T5RT_POOL_ROW];
  const int m = (int)u[T5RT_POOL_MODE];
  if (threadIdx.x == 0) {
    mode[r] = m;
    top_k[r] = (int)u[T5RT_POOL_TOP_K];
    seed[r] = (u64)u[T5RT_POOL_SEED];
    rng_row[r] = u[T5RT_POOL_RNG_ROW];
    max_new[r] = u[T5RT_POOL_MAX_NEW];
    min_new[r] = u[T5RT_POOL_MIN_NEW];
    temperature[r] = __int_as_float((int)u[T5RT_POOL_TEMPERATURE]);
    top_p[r] = __int_as_float((int)u[T5RT_POOL_TOP_P]);
    unfinished[r] = m != 0;
    if (m != 0) {
      seq_logprob[r] = 0.f;
      input_ids[r] = start;
      position[r] = 0;
    }
  }
  if (m == 0) return;
  for (int c = threadIdx.x; c < W; c += blockDim.x) {
    history[r * W + c] = c == 0 ? start : pad;
    token_logprob[r * W + c] = 0.f;
  }
}

// One block of T5RT_SAMPLE_THREADS (== T5RT_ARGMAX_THREADS) per row r < n of scores [*, stride].
extern "C" __global__ void __launch_bounds__(T5RT_SAMPLE_THREADS) t5rt_pool_step(
    float* scores, i64 stride, int V,                   // [C, stride] fp32 logits (eos masked in place)
    const int* mode, const int* top_k, const float* temperature, const float* top_p,
    const u64* seed, const i64* rng_row, const i64* max_new, const i64* min_new,
    i64* history, float* token_logprob, int W,
    bool* unfinished, float* seq_logprob, i64* input_ids, i64* position,
    i64 eos) {
  __shared__ T5rtSampleShared sh;
  const int r = blockIdx.x;
  const int m = mode[r];
  if (m == 0 || !unfinished[r]) return;  // the whole block: idle or finished rows change nothing
  float* x = scores + (i64)r * stride;
  const i64 t = position[r];
  if (threadIdx.x == 0 && t < min_new[r]) x[eos] = -__int_as_float(0x7f800000);
  __syncthreads();
  i64 tok;
  float lp;
  if (m == 1) {
    const T5rtSoftArg a = t5rt_softarg_row(x, V);  // valid in thread 0
    if (threadIdx.x != 0) return;
    tok = a.i;
    lp = (x[tok] - a.m) - logf(a.s);  // as t5rt_dec_sample_update from argmax_logsumexp's outputs
  } else {
    const float temp = temperature[r];
    const double u = t5rt_uniform(seed[r], (u64)t, (u64)rng_row[r], 0ull);
    float mx, total;
    tok = t5rt_sample_row(x, V, temp, top_k[r], top_p[r], u, &sh, &mx, &total);
    if (threadIdx.x != 0) return;
    lp = (x[tok] / temp - mx) - logf(total);  // as t5rt_sample_logprob
  }
  const i64 col = t + 1 < (i64)W - 1 ? t + 1 : (i64)W - 1;
  seq_logprob[r] = seq_logprob[r] + lp;
  history[(i64)r * W + col] = tok;
  token_logprob[(i64)r * W + col] = lp;
  input_ids[r] = tok;
  unfinished[r] = tok != eos && !(t + 1 >= max_new[r]);
  position[r] = t + 1;
}
