// kv_cache.cu - decoder self-attention cache maintenance, all layers per launch.
//
//   kv_write:      cache[l][n, h, position[n], :] = rows[l][n, h, 0, :]        (one launch)
//   beam_reorder:  cache[l][n, h, :len, :] = old cache[l][parent[n], h, :len, :]
//                  as gather (cache -> scratch) then scatter (scratch -> cache); rows with
//                  parent[n] == n are skipped by both.
//   rows_copy:     dst[l][dst_rows[j]] = src[l][src_rows[j]]  whole leading-axis rows of every
//                  tensor l (an in-flight slot pool taking its joining requests' cross K/V from
//                  the encoder's buffers: one launch instead of an indexed copy per tensor)
//
// Caches are [N, H, T, Dk] contiguous, rows [N, H, 1, Dk]; any element type (fp32/fp16/bf16):
// the kernels copy bytes in units U (T5rtCopyUnit) and row_units = Dk * itemsize / sizeof(U).
// Layers come as device tables of pointers (u64), so nothing is read on the host and the
// launches can be captured in a CUDA graph. position / parent / length are device int64.
#include "t5rt_kernels.cuh"

struct t5rt_u16 { unsigned short v; };
struct __align__(4) t5rt_u32 { unsigned int v; };
struct __align__(8) t5rt_u64 { unsigned long long v; };
struct __align__(16) t5rt_u128 { unsigned long long a, b; };

template <typename U>
__device__ __forceinline__ void t5rt_kv_write_impl(const u64* caches, const u64* rows,
                                                   const i64* position, int n_tensors, int N,
                                                   int H, int T, int row_units) {
  const i64 total = (i64)n_tensors * N * H * row_units;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (i64)gridDim.x * blockDim.x) {
    const int u = (int)(i % row_units);
    i64 r = i / row_units;                 // (l, n, h)
    const int h = (int)(r % H);
    r /= H;
    const int n = (int)(r % N);
    const int l = (int)(r / N);
    const i64 pos = position[n];
    if (pos < 0 || pos >= T) continue;     // out of range: write nothing (never out of bounds)
    const U* src = (const U*)rows[l];      // [N, H, 1, Dk]
    U* dst = (U*)caches[l];                // [N, H, T, Dk]
    dst[(((i64)n * H + h) * T + pos) * row_units + u] = src[((i64)n * H + h) * row_units + u];
  }
}

// One block per (tensor, n, h) slab; the block copies rows [0, len) of that slab.
// GATHER: scratch[l][n, h, :len] = cache[l][parent[n], h, :len]
// SCATTER: cache[l][n, h, :len] = scratch[l][n, h, :len]
template <typename U, bool GATHER>
__device__ __forceinline__ void t5rt_reorder_impl(const u64* caches, U* scratch,
                                                  const i64* parent, const i64* length, int N,
                                                  int H, int T, int row_units) {
  const int slab = blockIdx.x;
  const int h = slab % H;
  const int n = (slab / H) % N;
  const int l = slab / (H * N);
  const i64 p = parent[n];
  if (p == n || p < 0 || p >= N) return;   // own parent: nothing moves
  i64 len = *length;
  len = len < 0 ? 0 : (len > T ? T : len);
  const i64 count = len * row_units;
  U* cache = (U*)caches[l];
  U* scr = scratch + (((i64)l * N + n) * H + h) * (i64)T * row_units;
  if (GATHER) {
    const U* src = cache + ((p * H + h) * (i64)T) * row_units;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) scr[i] = src[i];
  } else {
    U* dst = cache + (((i64)n * H + h) * (i64)T) * row_units;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) dst[i] = scr[i];
  }
}

// Grid-stride over (tensor l, pair j, unit u); rows of row_units units each.
template <typename U>
__device__ __forceinline__ void t5rt_rows_copy_impl(const u64* dst, const u64* src, const i64* dst_rows,
                                                    const i64* src_rows, int k, int n_tensors,
                                                    i64 row_units) {
  const i64 total = (i64)n_tensors * k * row_units;
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (i64)gridDim.x * blockDim.x) {
    const i64 u = i % row_units;
    const i64 r = i / row_units;
    const int j = (int)(r % k);
    const int l = (int)(r / k);
    ((U*)dst[l])[dst_rows[j] * row_units + u] = ((const U*)src[l])[src_rows[j] * row_units + u];
  }
}

#define T5RT_KV_INSTANTIATE(SUFFIX, U)                                                          \
  extern "C" __global__ void __launch_bounds__(T5RT_COPY_THREADS) t5rt_kv_write_##SUFFIX(      \
      const u64* caches, const u64* rows, const i64* position, int n_tensors, int N, int H,     \
      int T, int row_units) {                                                                   \
    t5rt_kv_write_impl<U>(caches, rows, position, n_tensors, N, H, T, row_units);              \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(T5RT_COPY_THREADS) t5rt_beam_gather_##SUFFIX(   \
      const u64* caches, U* scratch, const i64* parent, const i64* length, int N, int H, int T, \
      int row_units) {                                                                          \
    t5rt_reorder_impl<U, true>(caches, scratch, parent, length, N, H, T, row_units);           \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(T5RT_COPY_THREADS) t5rt_beam_scatter_##SUFFIX(  \
      const u64* caches, U* scratch, const i64* parent, const i64* length, int N, int H, int T, \
      int row_units) {                                                                          \
    t5rt_reorder_impl<U, false>(caches, scratch, parent, length, N, H, T, row_units);          \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(T5RT_COPY_THREADS) t5rt_rows_copy_##SUFFIX(     \
      const u64* dst, const u64* src, const i64* dst_rows, const i64* src_rows, int k,          \
      int n_tensors, i64 row_units) {                                                           \
    t5rt_rows_copy_impl<U>(dst, src, dst_rows, src_rows, k, n_tensors, row_units);             \
  }

T5RT_KV_INSTANTIATE(u16, t5rt_u16)
T5RT_KV_INSTANTIATE(u32, t5rt_u32)
T5RT_KV_INSTANTIATE(u64, t5rt_u64)
T5RT_KV_INSTANTIATE(u128, t5rt_u128)
