// sampling_logprob.cu - t5rt_sample_logprob: the draw of t5rt_topk_topp_sample (sampling.cu) for
// the decoding strategies, which also need
//   - the drawn token's log-probability under the warped distribution (the summed sequence
//     score): logprob = (x[token] - max) - log(sum of kept exp(x - max)), x = logits / temperature
//   - request-wide RNG rows: u = t5rt_uniform(*seed, *step, row_offset + row, 0), so a request
//     split into batch chunks draws exactly like one batch (t5rt.decoding: first_input).
// Same filters, thresholds and inverse CDF as t5rt_topk_topp_sample (it is sampling.cu's
// t5rt_sample_row: the CMake unity build and the NVRTC source include sampling.cu first).
#include "t5rt_kernels.cuh"

extern "C" __global__ void __launch_bounds__(T5RT_SAMPLE_THREADS)
t5rt_sample_logprob(const float* logits,  // [N, row_stride] fp32, first V used
                    i64 row_stride, int V, float temperature, int top_k, float top_p,
                    const u64* seed,      // [1] device seed
                    const i64* step,      // [1] device step counter
                    i64 row_offset,       // RNG row of block 0
                    i64* out,             // [N] int64 tokens
                    float* out_logprob) { // [N] fp32 log-probability of the token
  __shared__ T5rtSampleShared sh;
  const int row = blockIdx.x;
  const float* x = logits + (i64)row * row_stride;
  const double u = t5rt_uniform(*seed, (u64)(*step), (u64)(row_offset + row), 0ull);
  float mx, total;
  const int tok = t5rt_sample_row(x, V, temperature, top_k, top_p, u, &sh, &mx, &total);
  if (threadIdx.x == 0) {
    out[row] = tok;
    out_logprob[row] = (x[tok] / temperature - mx) - logf(total);
  }
}
