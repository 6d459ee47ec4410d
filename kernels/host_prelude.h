// host_prelude.h - just enough CUDA, in host C++, to run kernels/*.cu on the CPU (tests only).
//
// src/t5rt/kernels/host.py builds ONE shared library from: this file, then the very unit NVRTC
// compiles (t5rt.kernels.nvrtc_source(): the header inlined, then every kernels/*.cu), then
// T5RT_HOST_EXPORT(name) for every extern "C" kernel found in it. tests/test_kernels_host.py runs
// each kernel through its typed Python wrapper on numpy arrays against its NumPy reference.
//
// What a launch does (faithful where the kernels depend on it):
//   - grid and block dims come from the wrapper; blocks run one after another; each thread
//     (at most 1024 per block) has its own threadIdx / blockIdx;
//   - the threads of a block run as fibers (default: user-level contexts taking turns on the
//     launching thread, each running until it waits at a barrier; deterministic, and a barrier
//     that not every thread reaches is reported as a deadlock) or as real OS threads running at
//     once (HostKernels(os_threads=True): slow with big blocks on few cores);
//   - __shared__ is `static`: one object that every thread of the running block sees;
//   - __syncthreads() is a barrier of the block; a thread whose kernel returned drops out of
//     it, as exited threads do on sm_70+;
//   - warp shuffles, ballots and __syncwarp go through a per-warp exchange slot between two
//     barriers of that warp's threads, so every lane of the warp must take part (full masks:
//     all these kernels use);
//   - atomics are std::atomic_ref on the same memory;
//   - float math is the C library's, without FMA contraction: results can differ from the GPU
//     in the last bits (the tests compare with the same tolerances as against the GPU).
//   - dynamic shared memory: host.py rewrites `extern __shared__ T name[];` into a pointer to the
//     launch's `shared_mem` bytes (one buffer per block);
//   - T5RT_HOST_BUILD is defined: a source keeps inline PTX or other device-only code out of the
//     host build with `#ifndef T5RT_HOST_BUILD` (and a plain C++ equivalent in the #else).
// Not emulated (a kernel that needs one fails to compile or must not be run here): cooperative
// groups and grid-wide barriers (blocks run one after another, never side by side), textures,
// fp16/bf16 types, partial-warp masks and implicit warp-synchronous code (the threads of a warp
// are not in lock-step).
// Launches are serialised (one process-wide lock): the `static` shared memory is per kernel.
//
// T5RT_HOST_SCAN: only the keyword macros, `__global__` marked, no standard headers: host.py
// preprocesses the unit in this mode to list the kernels (macro-generated ones included).
#ifndef T5RT_HOST_PRELUDE_H
#define T5RT_HOST_PRELUDE_H
#define T5RT_HOST_BUILD 1

#ifndef T5RT_HOST_SCAN
#include <math.h>
#include <setjmp.h>
#include <ucontext.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#endif  // !T5RT_HOST_SCAN

// CUDA keywords (after the standard headers, which use some of these names themselves)
#ifdef T5RT_HOST_SCAN
#define __global__ t5rt_host_kernel
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((__noinline__))
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__
#define __align__(n) alignas(n)

#ifndef T5RT_HOST_SCAN

namespace t5rt_host {

struct Dim {
  unsigned x, y, z;
};
struct Block;
struct jmp_buf_wrap {
  jmp_buf buf;
};

// The emulated thread: CUDA's built-in variables plus its block.
struct Thread {
  Dim tid, bid, bdim, gdim;
  unsigned lane, warp;
  Block* block;
};
inline thread_local Thread* self = nullptr;

// Fiber mode: the threads of a block are user-level contexts taking turns on the launching OS
// thread; a thread runs until it waits at a barrier, then the next one runs. A context starts
// with makecontext/swapcontext once per launch; every switch after that is _setjmp/_longjmp
// (no system call: a block of 1024 threads switches ~1024 times per barrier).
struct Fibers {
  ucontext_t boot;                  // scratch of the first switch into each context
  jmp_buf main;                     // the scheduler
  std::vector<ucontext_t> ctx;      // [threads] initial contexts
  std::vector<jmp_buf_wrap> jb;     // [threads] where each thread waits
  std::vector<char> started, finished;  // [threads]
  unsigned current = 0;
  unsigned long long progress = 0;  // barrier arrivals + finished threads (deadlock check)
  std::function<void()> body;       // the whole grid for the current thread (`self`)
};
inline thread_local Fibers* fibers = nullptr;  // set while a fiber-mode launch runs
inline void yield() {
  Fibers& f = *fibers;
  if (!_setjmp(f.jb[f.current].buf)) _longjmp(f.main, 1);
}

// Reusable barrier of `expected` threads; drop() takes an exiting thread out of later phases.
class Barrier {
 public:
  void reset(int expected) {  // only while no thread waits on it
    expected_ = expected;
    arrived_ = 0;
  }
  template <class F>
  void wait(F&& on_last) {  // the last thread to arrive runs on_last() before releasing the rest
    if (fibers) {
      ++fibers->progress;
      const unsigned gen = gen_.load(std::memory_order_relaxed);
      if (++arrived_ >= expected_) {
        on_last();
        release();
        return;
      }
      while (gen_.load(std::memory_order_relaxed) == gen) yield();
      return;
    }
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned gen = gen_.load(std::memory_order_relaxed);
    if (++arrived_ >= expected_) {
      on_last();
      release();
      return;
    }
    lock.unlock();
    gen_.wait(gen, std::memory_order_acquire);  // futex wait until the phase changes
  }
  void wait() {
    wait([] {});
  }
  void drop() {
    std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
    if (!fibers) lock.lock();
    --expected_;
    if (arrived_ > 0 && arrived_ >= expected_) release();
  }

 private:
  void release() {  // under the mutex (OS threads)
    arrived_ = 0;
    gen_.fetch_add(1, std::memory_order_release);
    if (!fibers) gen_.notify_all();
  }
  std::mutex mutex_;
  int expected_ = 0, arrived_ = 0;
  std::atomic<unsigned> gen_{0};
};

// What the threads of the running block share besides their __shared__ statics.
struct Block {
  Barrier sync;                     // __syncthreads
  Barrier done;                     // every thread finished the block (OS threads; never dropped)
  Barrier warp[32];                 // __syncwarp / shuffles of warp w
  unsigned long long lane[32][32];  // shuffle exchange [warp][lane]
  unsigned threads = 0;
  std::vector<std::max_align_t> dynamic_shared;  // the launch's shared_mem bytes

  void reset() {
    sync.reset((int)threads);
    for (unsigned w = 0; w < 32; ++w) {
      const unsigned first = 32 * w;
      warp[w].reset(first < threads ? (int)(threads - first < 32 ? threads - first : 32) : 0);
    }
  }
};

inline void syncthreads() { self->block->sync.wait(); }
template <class T>
inline T* dynamic_shared() { return reinterpret_cast<T*>(self->block->dynamic_shared.data()); }
// bytes of it (the launch's shared_mem rounded up to max_align_t): %dynamic_smem_size on a GPU
inline unsigned dynamic_shared_bytes() {
  return (unsigned)(self->block->dynamic_shared.size() * sizeof(std::max_align_t));
}
inline void syncwarp() { self->block->warp[self->warp].wait(); }

// Every lane publishes v, then reads lane src's value (its own where src is out of range).
template <class T>
inline T exchange(T v, int src, bool valid) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of <= 8 bytes");
  Block& b = *self->block;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.warp[self->warp].wait();  // the previous exchange has been read by every lane
  b.lane[self->warp][self->lane] = bits;
  b.warp[self->warp].wait();  // every lane has written
  if (!valid) return v;
  T r;
  std::memcpy(&r, &b.lane[self->warp][src], sizeof(T));
  return r;
}

inline std::mutex& launch_lock() {
  static std::mutex m;
  return m;
}

// Fiber stacks, kept between launches (allocated lazily; pages are touched only as used).
constexpr std::size_t kFiberStack = 256 * 1024;
inline char* fiber_stack(unsigned t) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (stacks.size() <= t) stacks.emplace_back(new char[kFiberStack]);
  return stacks[t].get();
}

[[noreturn]] inline void fiber_main() {
  Fibers& f = *fibers;
  f.body();
  f.finished[f.current] = 1;
  ++f.progress;
  _longjmp(f.main, 1);
}

// Runs body() for every thread as fibers. 0 = ran, 3 = deadlock (a barrier that not every
// thread reaches; the fibers are abandoned).
inline int run_fibers(std::vector<Thread>& threads, const std::function<void()>& body) {
  Fibers f;
  const unsigned n = (unsigned)threads.size();
  f.ctx.resize(n);
  f.jb.resize(n);
  f.started.assign(n, 0);
  f.finished.assign(n, 0);
  f.body = body;
  ucontext_t proto;
  getcontext(&proto);
  for (unsigned t = 0; t < n; ++t) {
    f.ctx[t] = proto;
    f.ctx[t].uc_stack.ss_sp = fiber_stack(t);
    f.ctx[t].uc_stack.ss_size = kFiberStack;
    f.ctx[t].uc_link = nullptr;
    makecontext(&f.ctx[t], fiber_main, 0);
  }
  fibers = &f;
  unsigned live = n;
  int rc = 0;
  while (live > 0) {
    const unsigned long long before = f.progress;
    for (unsigned t = 0; t < n; ++t) {
      if (f.finished[t]) continue;
      f.current = t;
      self = &threads[t];
      if (!_setjmp(f.main)) {
        if (f.started[t]) _longjmp(f.jb[t].buf, 1);
        f.started[t] = 1;
        swapcontext(&f.boot, &f.ctx[t]);  // runs until the thread first yields or ends
      }
      live -= f.finished[t];
    }
    if (live > 0 && f.progress == before) {  // a whole round in which nobody moved
      rc = 3;
      break;
    }
  }
  fibers = nullptr;
  self = nullptr;
  return rc;
}

template <class... A, std::size_t... I>
inline std::tuple<std::remove_cv_t<A>...> unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<std::remove_cv_t<A>...>(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// Run kernel(args...) over the grid. dims = grid x, y, z, block x, y, z, mode (0 fibers,
// 1 OS threads), dynamic shared memory bytes; args[i] points at the i-th parameter's value. Returns 0 = ran, 1 = bad dims,
// 2 = the OS threads could not be started, 3 = deadlock (fibers; the launch is abandoned).
template <class... A>
inline int launch(void (*kernel)(A...), const unsigned* dims, void** args) {
  const Dim grid{dims[0], dims[1], dims[2]}, bdim{dims[3], dims[4], dims[5]};
  const bool os_threads = dims[6] != 0;
  const unsigned long long nt = (unsigned long long)bdim.x * bdim.y * bdim.z;
  const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
  if (nt == 0 || nt > 1024 || nb == 0) return 1;
  std::lock_guard<std::mutex> serial(launch_lock());
  const auto params = unpack<A...>(args, std::index_sequence_for<A...>{});
  auto block = std::make_unique<Block>();
  block->threads = (unsigned)nt;
  block->dynamic_shared.resize((dims[7] + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
  block->reset();
  block->done.reset((int)nt);
  std::vector<Thread> threads((std::size_t)nt);
  for (unsigned t = 0; t < nt; ++t)
    threads[t] = Thread{{t % bdim.x, (t / bdim.x) % bdim.y, (unsigned)(t / ((unsigned long long)bdim.x * bdim.y))},
                        {0, 0, 0}, bdim, grid, t % 32, t / 32, block.get()};
  // one thread's whole grid (blocks in order; the `done` barrier keeps the blocks apart)
  const std::function<void()> body = [&] {
    Thread& me = *self;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          me.bid = {x, y, z};
          std::apply(kernel, params);
          block->sync.drop();  // exited: later barriers of this block wait for one thread fewer
          block->warp[me.warp].drop();
          block->done.wait([&] { block->reset(); });
        }
  };
  if (!os_threads) return run_fibers(threads, body);
  std::atomic<int> state{0};  // 0 starting, 1 go, 2 abort (a thread failed to start)
  auto start = [&](unsigned t) {
    state.wait(0, std::memory_order_acquire);
    if (state.load(std::memory_order_acquire) != 1) return;
    self = &threads[t];
    body();
    self = nullptr;
  };
  std::vector<std::thread> pool;
  pool.reserve((std::size_t)nt);
  int rc = 0;
  try {
    for (unsigned t = 0; t < nt; ++t) pool.emplace_back(start, t);
    state.store(1, std::memory_order_release);
  } catch (...) {
    state.store(2, std::memory_order_release);
    rc = 2;
  }
  state.notify_all();
  for (auto& th : pool) th.join();
  return rc;
}

// One character per kernel parameter, so host.py can check each argument's type and order.
template <class T>
constexpr char param_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer<U>::value) return 'p';
  else if constexpr (std::is_same<U, bool>::value) return 'b';
  else if constexpr (std::is_floating_point<U>::value) return sizeof(U) == 4 ? 'f' : 'd';
  else if constexpr (std::is_integral<U>::value && sizeof(U) == 4) return std::is_signed<U>::value ? 'i' : 'I';
  else if constexpr (std::is_integral<U>::value && sizeof(U) == 8) return std::is_signed<U>::value ? 'l' : 'L';
  else return '?';  // passed by value but not a scalar: host.py refuses to launch it
}

template <class... A>
inline const char* signature(void (*)(A...)) {
  static const char codes[] = {param_code<A>()..., '\0'};
  return codes;
}

}  // namespace t5rt_host

#define T5RT_HOST_EXPORT(name)                                                             \
  extern "C" int t5rt_host_launch_##name(const unsigned* dims, void** args) {              \
    return t5rt_host::launch(&name, dims, args);                                          \
  }                                                                                        \
  extern "C" const char* t5rt_host_signature_##name() { return t5rt_host::signature(&name); }

// ---- built-in variables and intrinsics ----
#define threadIdx (t5rt_host::self->tid)
#define blockIdx (t5rt_host::self->bid)
#define blockDim (t5rt_host::self->bdim)
#define gridDim (t5rt_host::self->gdim)
#define warpSize 32

inline void __syncthreads() { t5rt_host::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { t5rt_host::syncwarp(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  const int base = (int)t5rt_host::self->lane & ~(width - 1);
  return t5rt_host::exchange(v, base + (src & (width - 1)), true);
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  const int lane = (int)t5rt_host::self->lane, src = lane ^ mask;
  return t5rt_host::exchange(v, src, (src & ~(width - 1)) == (lane & ~(width - 1)));
}
template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = (int)t5rt_host::self->lane, src = lane - (int)delta;
  return t5rt_host::exchange(v, src, src >= (lane & ~(width - 1)));
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = (int)t5rt_host::self->lane, src = lane + (int)delta;
  return t5rt_host::exchange(v, src, src < (lane & ~(width - 1)) + width);
}
inline unsigned __ballot_sync(unsigned, int pred) {
  t5rt_host::Block& b = *t5rt_host::self->block;
  const unsigned w = t5rt_host::self->warp;
  t5rt_host::exchange(pred != 0, 0, false);  // publishes this lane's predicate
  const unsigned threads = b.threads - 32 * w;
  unsigned r = 0;
  for (unsigned l = 0; l < 32 && l < threads; ++l)  // read before the next exchange's first barrier
    if (b.lane[w][l]) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
  const unsigned threads = t5rt_host::self->block->threads - 32 * t5rt_host::self->warp;
  const unsigned full = threads >= 32 ? 0xffffffffu : (1u << threads) - 1u;
  return __ballot_sync(m, pred) == full;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, 8); return i; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// CUDA's vector types (the aligned structs the 64/128-bit loads use) and their make_ functions.
#define T5RT_HOST_VEC(T, name, align)                                                         \
  struct alignas(align) name##2 { T x, y; };                                                    \
  struct alignas(align * 2) name##4 { T x, y, z, w; };                                         \
  inline name##2 make_##name##2(T x, T y) { return {x, y}; }                                   \
  inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
T5RT_HOST_VEC(float, float, 8)
T5RT_HOST_VEC(int, int, 8)
T5RT_HOST_VEC(unsigned, uint, 8)
#undef T5RT_HOST_VEC

template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// Atomics: the value type is taken from the pointer (as CUDA's overloads convert the operand).
#define T5RT_HOST_ATOMIC(name, rmw) \
  template <class T>                \
  inline T name(T* p, std::type_identity_t<T> v) { return std::atomic_ref<T>(*p).rmw(v); }
T5RT_HOST_ATOMIC(atomicAdd, fetch_add)
T5RT_HOST_ATOMIC(atomicSub, fetch_sub)
T5RT_HOST_ATOMIC(atomicExch, exchange)
T5RT_HOST_ATOMIC(atomicOr, fetch_or)
T5RT_HOST_ATOMIC(atomicAnd, fetch_and)
T5RT_HOST_ATOMIC(atomicXor, fetch_xor)
#undef T5RT_HOST_ATOMIC
template <class T>
inline T atomicCAS(T* p, std::type_identity_t<T> expected, std::type_identity_t<T> v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, v);
  return expected;  // the old value either way
}
namespace t5rt_host {
template <class T, class Better>
inline T atomic_store_if(T* p, T v, Better better) {  // *p = v while better(v, *p); the old value
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (better(v, old) && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
}  // namespace t5rt_host
template <class T>
inline T atomicMax(T* p, std::type_identity_t<T> v) {
  return t5rt_host::atomic_store_if(p, v, [](T a, T b) { return b < a; });
}
template <class T>
inline T atomicMin(T* p, std::type_identity_t<T> v) {
  return t5rt_host::atomic_store_if(p, v, [](T a, T b) { return a < b; });
}

#endif  // !T5RT_HOST_SCAN
#endif  // T5RT_HOST_PRELUDE_H
