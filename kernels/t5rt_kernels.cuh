// t5rt_kernels.cuh - what every kernels/*.cu shares: integer types, launch geometry, programmatic
// dependent launch, cache-hinted loads, the grid barrier, the float sort key, the counter-based
// RNG and deterministic warp / block reductions (bench/kernels/launch_gap.py includes it too).
//
// NVRTC-safe: no standard headers (the NVRTC fallback in src/t5rt/kernels/__init__.py inlines
// this file). Host-safe too: kernels/host_prelude.h compiles every kernels/*.cu as C++ for the
// CPU tests. Python mirrors: the enums below are IntEnums in t5rt.kernels (Geometry, CopyUnit);
// tests/test_kernels.py checks that the values agree.
#ifndef T5RT_KERNELS_CUH
#define T5RT_KERNELS_CUH

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

// Bumped whenever a kernel's signature or a table it reads (T5rtNativeStep) changes, or a kernel
// is added or removed. The loader looks for the kernel t5rt_abi_<N> (t5rt.kernels.ABI) and refuses
// a build that lacks it.
#define T5RT_KERNELS_ABI 7
extern "C" __global__ void t5rt_abi_7() {}

// Launch geometry shared with the Python wrappers.
enum T5rtGeometry {
  T5RT_COPY_THREADS = 256,     // kv_write / beam_reorder block size
  T5RT_SAMPLE_THREADS = 1024,  // topk_topp_sample: one block per row
  T5RT_ARGMAX_THREADS = 1024,  // argmax_rows: one block per row
  T5RT_TOPK_THREADS = 256,     // beam_topk partial / merge block size
  T5RT_TOPK_CHUNK = 4096,      // elements per partial top-k block (u64 keys in shared memory)
  T5RT_TOPK_MAX_K = 64,        // largest k beam_topk supports
  T5RT_DEC_THREADS = 256,      // decoding_step.cu: block size of every t5rt_dec_* kernel
  T5RT_DEC_MAX_K = 64,         // t5rt_dec_beam_update: largest K = 2 * num_beams
};

// ---- programmatic dependent launch (t5rt.kernels.pdl, sm_90+) ----
// A kernel launched with the programmatic-serialization attribute may start while the kernel
// before it on the stream still runs: it must call t5rt_pdl_wait() before touching anything that
// kernel (or one before it) writes; t5rt_pdl_trigger() lets the next such kernel start. Both are
// no-ops for an ordinary launch, on the host build and below sm_90.
#if defined(T5RT_HOST_BUILD) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900)
__device__ __forceinline__ void t5rt_pdl_wait() {}
__device__ __forceinline__ void t5rt_pdl_trigger() {}
#else
__device__ __forceinline__ void t5rt_pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void t5rt_pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
#endif

// ---- the dynamic shared memory this launch was given, in bytes ----
#ifdef T5RT_HOST_BUILD
__device__ __forceinline__ unsigned t5rt_dynamic_smem_bytes() { return t5rt_host::dynamic_shared_bytes(); }
#else
__device__ __forceinline__ unsigned t5rt_dynamic_smem_bytes() {
  unsigned v;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
  return v;
}
#endif

// ---- loads: activations written inside this launch bypass L1 (.cg); weights do not allocate ----
#ifndef T5RT_HOST_BUILD
__device__ __forceinline__ float t5rt_ldcg(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ unsigned short t5rt_ldcg(const unsigned short* p) {
  unsigned short v;
  asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 t5rt_ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void t5rt_prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
}
// a read-only load whose value is dropped: brings the line into this SM's L1 for a later __ldg
// (only for data no kernel writes while this one runs)
__device__ __forceinline__ void t5rt_touch_l1(const i64* p) {
  asm volatile("{ .reg .s64 t; ld.global.nc.s64 t, [%0]; }" :: "l"(p));
}
__device__ __forceinline__ i64 t5rt_ld_i64(const i64* p) {
  long long v;
  asm volatile("ld.global.cg.s64 %0, [%1];" : "=l"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ u32 t5rt_ld_acquire(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
#else
inline float t5rt_ldcg(const float* p) { return *p; }
inline unsigned short t5rt_ldcg(const unsigned short* p) { return *p; }
inline uint4 t5rt_ld_stream(const void* p) { return *(const uint4*)p; }
inline void t5rt_prefetch_l2(const void*) {}
inline void t5rt_touch_l1(const i64*) {}
inline i64 t5rt_ld_i64(const i64* p) { return *p; }
inline u32 t5rt_ld_acquire(const u32* p) { return std::atomic_ref<const u32>(*p).load(std::memory_order_acquire); }
#endif

// ---- grid barrier (persistent kernels): all blocks are co-resident (grid <= SMs) ----
__device__ __forceinline__ void t5rt_grid_sync(u32* bar, u32& gen) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const u32 arrived = atomicAdd(bar, 1u);
    if (arrived == gridDim.x - 1) {
      bar[0] = 0u;  // nobody touches the counter until released
      __threadfence();
      atomicExch(bar + 1, gen + 1u);
    } else {
      while (t5rt_ld_acquire(bar + 1) == gen) {
      }
    }
    __threadfence();
  }
  gen += 1u;
  __syncthreads();
}

// the sum over a warp, in every lane
__device__ __forceinline__ float t5rt_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Bytes copied per thread per iteration by the cache kernels (one instantiation each).
enum T5rtCopyUnit {
  T5RT_COPY_U16 = 2,
  T5RT_COPY_U32 = 4,
  T5RT_COPY_U64 = 8,
  T5RT_COPY_U128 = 16,
};

// ---- float <-> order-preserving unsigned key (larger float -> larger key, -inf lowest) ----
__device__ __forceinline__ u32 t5rt_float_key(float f) {
  u32 b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float t5rt_key_float(u32 k) {
  u32 b = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
  return __uint_as_float(b);
}

// ---- counter-based RNG, identical to src/t5rt/decoding/rng.py (uniform with col = 0) ----
//   x = seed ^ (step * GOLDEN) ^ ((row + 1) * 0xBF58476D1CE4E5B9) ^ ((col + 1) * 0x94D049BB133111EB)
//   u = ((splitmix64(x) >> 11) + 0.5) * 2**-53     in (0, 1)
__device__ __forceinline__ u64 t5rt_splitmix64(u64 x) {
  u64 z = x + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ double t5rt_uniform(u64 seed, u64 step, u64 row, u64 col) {
  u64 x = seed ^ (step * 0x9E3779B97F4A7C15ull) ^ ((row + 1ull) * 0xBF58476D1CE4E5B9ull) ^
          ((col + 1ull) * 0x94D049BB133111EBull);
  return ((double)(t5rt_splitmix64(x) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// ---- deterministic block reductions (fixed shuffle tree, warps combined in index order) ----
struct T5rtMax {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct T5rtSum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct T5rtMaxInt {
  __device__ __forceinline__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Every thread gets the result. blockDim.x must be a multiple of 32; smem holds >= 32 T.
template <typename T, typename Op>
__device__ __forceinline__ T t5rt_block_allreduce(T v, Op op, T* smem) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  T r = smem[0];
  for (int w = 1; w < nw; ++w) r = op(r, smem[w]);
  return r;
}

// Inclusive/exclusive prefix sums of one float per thread, in thread order, deterministic.
// excl of thread t+1 is bit-identical to incl of thread t. smem holds >= 33 floats.
__device__ __forceinline__ void t5rt_block_scan(float v, float* excl, float* incl, float* total,
                                                float* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float s = v;
  for (int o = 1; o < 32; o <<= 1) {
    float y = __shfl_up_sync(0xffffffffu, s, o);
    if (lane >= o) s += y;
  }
  float prev = __shfl_up_sync(0xffffffffu, s, 1);
  __syncthreads();
  if (lane == 31) smem[warp] = s;
  __syncthreads();
  float wp = 0.f;  // sum of the previous warps' totals, accumulated in warp order
  for (int w = 0; w < warp; ++w) wp = wp + smem[w];
  *incl = wp + s;
  *excl = lane == 0 ? wp : wp + prev;
  float tot = 0.f;
  for (int w = 0; w < nw; ++w) tot = tot + smem[w];
  *total = tot;
}

// Radix-select helper run by warp 0: over 256 buckets from the top (255 down to 0) find the
// first bucket b where above + hist[b] >= target (above = sum of buckets > b). Writes b and above
// to out_bucket / out_above. If the total is below target, b = 0 and above = total - hist[0].
template <typename T>
__device__ __forceinline__ void t5rt_warp_find_bucket(const T* hist, T target, int* out_bucket,
                                                      T* out_above) {
  const int lane = threadIdx.x & 31;
  T mine = 0;  // lane l owns buckets 255-8l .. 248-8l
  for (int j = 0; j < 8; ++j) mine += hist[255 - 8 * lane - j];
  T incl = mine;
  for (int o = 1; o < 32; o <<= 1) {
    T y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  T excl = incl - mine;
  unsigned hit = __ballot_sync(0xffffffffu, excl < target && incl >= target);
  int owner = hit ? __ffs(hit) - 1 : 31;
  if (lane == owner) {
    T above = excl;
    int b = 255 - 8 * lane - 7;
    for (int j = 0; j < 8; ++j) {
      int bb = 255 - 8 * lane - j;
      if (above + hist[bb] >= target) { b = bb; break; }
      if (j < 7) above += hist[bb];
    }
    *out_bucket = b;
    *out_above = above;
  }
}

#endif  // T5RT_KERNELS_CUH
