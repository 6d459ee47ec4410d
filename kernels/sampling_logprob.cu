// sampling_logprob.cu - t5rt_sample_logprob: the draw of t5rt_topk_topp_sample (sampling.cu) for
// the decoding strategies, which also need
//   - the drawn token's log-probability under the warped distribution (the summed sequence
//     score): logprob = (x[token] - max) - log(sum of kept exp(x - max)), x = logits / temperature
//   - request-wide RNG rows: u = t5rt_uniform(*seed, *step, row_offset + row, 0), so a request
//     split into batch chunks draws exactly like one batch (t5rt.decoding: first_input).
// Same filters, thresholds and inverse CDF as t5rt_topk_topp_sample (it reuses sampling.cu's
// radix selects: the CMake unity build and the NVRTC source include sampling.cu first).
#include "t5rt_kernels.cuh"

extern "C" __global__ void __launch_bounds__(T5RT_SAMPLE_THREADS)
t5rt_sample_logprob(const float* logits,  // [N, row_stride] fp32, first V used
                    i64 row_stride, int V, float temperature, int top_k, float top_p,
                    const u64* seed,      // [1] device seed
                    const i64* step,      // [1] device step counter
                    i64 row_offset,       // RNG row of block 0
                    i64* out,             // [N] int64 tokens
                    float* out_logprob) { // [N] fp32 log-probability of the token
  __shared__ u64 hist[256];
  __shared__ float red_f[33];
  __shared__ u64 red_u[32];
  __shared__ int red_i[32];
  __shared__ int sh_bucket;
  __shared__ u64 sh_above;
  __shared__ int sh_token;
  const int row = blockIdx.x;
  const float* x = logits + (i64)row * row_stride;

  // 1. row maximum of x / temperature
  float mx = -__int_as_float(0x7f800000);
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i] / temperature);
  mx = t5rt_block_allreduce(mx, T5rtMax(), red_f);

  // 2. top-k: keys >= the k-th largest key
  u32 floor_key = 0;
  if (top_k > 0 && top_k < V)
    floor_key = t5rt_select_kth_key(x, V, temperature, (u32)top_k, (u32*)hist, &sh_bucket,
                                    (u32*)&sh_above);

  // 3. top-p over the top-k survivors, in fixed-point mass
  if (top_p < 1.0f) {
    u64 z = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
      const float xi = x[i] / temperature;
      if (t5rt_float_key(xi) >= floor_key) z += (u64)(expf(xi - mx) * T5RT_MASS_SCALE);
    }
    z = t5rt_block_allreduce(z, T5rtSum(), red_u);
    u64 target = (u64)((double)top_p * (double)z);
    if (target > z) target = z;
    if (target < 1) target = 1;
    if (z > 0)
      floor_key = t5rt_select_mass_key(x, V, temperature, mx, floor_key, target, hist,
                                       &sh_bucket, &sh_above);
  }

  // 4. inverse CDF in vocabulary order: each thread owns a contiguous chunk of the row
  const int chunk = (V + blockDim.x - 1) / blockDim.x;
  const int lo = threadIdx.x * chunk;
  const int hi = min(V, lo + chunk);
  float s = 0.f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i) {
    const float xi = x[i] / temperature;
    if (t5rt_float_key(xi) >= floor_key) {
      s += expf(xi - mx);
      last_kept = i;
    }
  }
  float excl, incl, total;
  t5rt_block_scan(s, &excl, &incl, &total, red_f);
  last_kept = t5rt_block_allreduce(last_kept, T5rtMaxInt(), red_i);
  if (threadIdx.x == 0) sh_token = -1;
  __syncthreads();
  const double u = t5rt_uniform(*seed, (u64)(*step), (u64)(row_offset + row), 0ull);
  const double target = u * (double)total;
  if (s > 0.f && (double)excl <= target && target < (double)incl) {
    int tok = -1;
    float acc = 0.f;
    for (int i = lo; i < hi; ++i) {
      const float xi = x[i] / temperature;
      if (t5rt_float_key(xi) >= floor_key) {
        acc += expf(xi - mx);
        tok = i;
        if ((double)excl + (double)acc > target) break;
      }
    }
    sh_token = tok;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int tok = sh_token >= 0 ? sh_token : (last_kept >= 0 ? last_kept : 0);
    out[row] = tok;
    out_logprob[row] = (x[tok] / temperature - mx) - logf(total);
  }
}
