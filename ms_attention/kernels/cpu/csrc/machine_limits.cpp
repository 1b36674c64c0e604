// This machine's limits as the kernels see them, on every thread of the kernels' pool, with the widest
// vectors the library was built for: a float32 FMA loop (compute peak), a bf16 dot-product loop (vdpbf16ps,
// where the library is built with AVX512_BF16) and a streaming read of a buffer much larger than the caches
// (memory read bandwidth). Benchmarks report the attention kernels as a fraction of them, measured in the same
// run, so the figures depend neither on a BLAS library nor on its core-type setting.
#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "attention/simd.h"
#include "parallel.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace msa {
namespace {

using Clock = std::chrono::steady_clock;

// Independent accumulator chains: enough to cover the FMA latency times the FMA ports of current x86 cores
// (4 x 2), and with the two constants still in registers (AVX2 has 16, AVX-512 32).
#if defined(MSA_SIMD_AVX2)
constexpr int kChains = 12;
#else
constexpr int kChains = 16;
#endif
constexpr int64_t kStepsPerCheck = 4096;  // FMA rounds between two looks at the clock

#if defined(MSA_SIMD)
// Runs FMA rounds until the deadline; returns the float32 flops done (2 per lane per FMA).
double FmaLoop(Clock::time_point deadline, float *sink) {
  using namespace simd;
  Vec acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = Set1(0.001f * static_cast<float>(i));
  const Vec a = Set1(0.999999f), b = Set1(1e-7f);
  int64_t rounds = 0;
  while (Clock::now() < deadline) {
    for (int64_t s = 0; s < kStepsPerCheck; ++s) {
      for (int i = 0; i < kChains; ++i) acc[i] = Fma(acc[i], a, b);
    }
    rounds += kStepsPerCheck;
  }
  Vec total = Zero();
  for (int i = 0; i < kChains; ++i) total = Add(total, acc[i]);
  alignas(64) float lanes[kWidth];
  Store(lanes, total);
  *sink = lanes[0];  // keeps the loop from being optimised away
  return 2.0 * kWidth * kChains * static_cast<double>(rounds);
}
#else
double FmaLoop(Clock::time_point deadline, float *sink) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = 0.001f * static_cast<float>(i);
  int64_t rounds = 0;
  while (Clock::now() < deadline) {
    for (int64_t s = 0; s < kStepsPerCheck; ++s) {
#pragma omp simd
      for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
    }
    rounds += kStepsPerCheck;
  }
  float total = 0.f;
  for (int i = 0; i < kChains; ++i) total += acc[i];
  *sink = total;
  return 2.0 * kChains * static_cast<double>(rounds);
}
#endif

#if defined(__AVX512BF16__)
// Runs vdpbf16ps rounds until the deadline; returns the flops done (each instruction: 16 lanes, each adding
// two bf16 products to its float32 accumulator, so 4 flops per lane).
double Bf16DotLoop(Clock::time_point deadline, float *sink) {
  constexpr int kDotChains = 16;
  __m512 acc[kDotChains];
  for (int i = 0; i < kDotChains; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.998f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(2e-7f));
  int64_t rounds = 0;
  while (Clock::now() < deadline) {
    for (int64_t s = 0; s < kStepsPerCheck; ++s) {
      for (int i = 0; i < kDotChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    rounds += kStepsPerCheck;
  }
  __m512 total = _mm512_setzero_ps();
  for (int i = 0; i < kDotChains; ++i) total = _mm512_add_ps(total, acc[i]);
  *sink = _mm512_reduce_add_ps(total);
  return 4.0 * 16 * kDotChains * static_cast<double>(rounds);
}
#endif

// Independent accumulators of the read loop: enough loads in flight to cover the add latency.
constexpr int kReadChains = 8;

// Sums floats [begin, end) with vector loads into independent accumulators (the data is only read).
float ReadSlice(const float *begin, const float *end) {
#if defined(MSA_SIMD)
  using namespace simd;
  Vec acc[kReadChains];
  for (int i = 0; i < kReadChains; ++i) acc[i] = Zero();
  const float *p = begin;
  for (; p + kReadChains * kWidth <= end; p += kReadChains * kWidth) {
    for (int i = 0; i < kReadChains; ++i) acc[i] = Add(acc[i], Load(p + i * kWidth));
  }
  Vec total = Zero();
  for (int i = 0; i < kReadChains; ++i) total = Add(total, acc[i]);
  float sum = ReduceAdd(total);
#else
  float acc[kReadChains * 4] = {};
  const float *p = begin;
  for (; p + kReadChains * 4 <= end; p += kReadChains * 4) {
#pragma omp simd
    for (int i = 0; i < kReadChains * 4; ++i) acc[i] += p[i];
  }
  float sum = 0.f;
  for (int i = 0; i < kReadChains * 4; ++i) sum += acc[i];
#endif
  for (; p < end; ++p) sum += *p;
  return sum;
}

}  // namespace
}  // namespace msa

extern "C" {

// Float32 GFLOP/s of an FMA loop run for about `seconds` on every thread of the kernels' pool together
// (flops of all threads over the wall time, so a thread that could not run lowers the figure).
double msa_fp32_fma_gflops(double seconds) {
  using msa::Clock;
  msa::ThreadPool &pool = msa::ThreadPool::Instance();
  const int threads = pool.threads();
  double flops[256] = {};
  float sink[256] = {};
  const int units = threads < 256 ? threads : 256;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(seconds > 0 ? seconds : 0.0));
  // One unit per thread; a unit that starts late stops at the same deadline and does less.
  pool.ParallelFor(units, [&](int64_t i, int) { flops[i] += msa::FmaLoop(deadline, &sink[i]); });
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  double total = 0;
  for (int i = 0; i < units; ++i) total += flops[i] + (sink[i] == 12345.f ? 1 : 0);
  return elapsed > 0 ? total / elapsed / 1e9 : 0.0;
}

// bf16 GFLOP/s of a vdpbf16ps loop run for about `seconds` on every thread of the pool together (as the FMA
// loop above); 0 when the library is not built with AVX512_BF16.
double msa_bf16_dot_gflops(double seconds) {
#if defined(__AVX512BF16__)
  using msa::Clock;
  msa::ThreadPool &pool = msa::ThreadPool::Instance();
  const int units = pool.threads() < 256 ? pool.threads() : 256;
  double flops[256] = {};
  float sink[256] = {};
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(seconds > 0 ? seconds : 0.0));
  pool.ParallelFor(units, [&](int64_t i, int) { flops[i] += msa::Bf16DotLoop(deadline, &sink[i]); });
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  double total = 0;
  for (int i = 0; i < units; ++i) total += flops[i] + (sink[i] == 12345.f ? 1 : 0);
  return elapsed > 0 ? total / elapsed / 1e9 : 0.0;
#else
  (void)seconds;
  return 0.0;
#endif
}

// Streaming read bandwidth in GB/s: a buffer of `megabytes` (much larger than the last-level cache) is split
// into one contiguous slice per pool thread, each thread sums its slice with vector loads, and the best of
// `repeats` passes (bytes over wall time) is returned. The pages are first written by the thread that reads
// them, and transparent huge pages are asked for (as numpy and torch do for large arrays: with 4 KiB pages
// the TLB misses cost a streaming read a good part of its bandwidth). 0 when the buffer cannot be allocated.
double msa_read_gbps(double megabytes, int repeats) {
  using msa::Clock;
  msa::ThreadPool &pool = msa::ThreadPool::Instance();
  const int units = pool.threads() < 256 ? pool.threads() : 256;
  constexpr size_t kHugePage = size_t{2} << 20;
  const int64_t floats = static_cast<int64_t>((megabytes > 1 ? megabytes : 1) * 1048576.0 / sizeof(float)) /
                         (64 * units) * (64 * units);
  if (floats <= 0) return 0.0;
  const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + kHugePage - 1) / kHugePage * kHugePage;
  float *data = static_cast<float *>(std::aligned_alloc(kHugePage, bytes));
  if (data == nullptr) return 0.0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(data, bytes, MADV_HUGEPAGE);  // advice only: without huge pages the loop still runs
#endif
  const int64_t per_unit = floats / units;
  pool.ParallelFor(units, [&](int64_t i, int) {
    float *begin = data + i * per_unit;
    for (int64_t j = 0; j < per_unit; ++j) begin[j] = 1e-3f * static_cast<float>(j & 7);
  });
  float sink[256] = {};
  double best = 0.0;
  for (int r = 0; r < (repeats > 0 ? repeats : 1); ++r) {
    const Clock::time_point start = Clock::now();
    pool.ParallelFor(units, [&](int64_t i, int) {
      const float *begin = data + i * per_unit;
      sink[i] += msa::ReadSlice(begin, begin + per_unit);
    });
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double gbps = elapsed > 0 ? static_cast<double>(floats) * sizeof(float) / elapsed / 1e9 : 0.0;
    if (gbps > best) best = gbps;
  }
  double keep = 0;
  for (int i = 0; i < units; ++i) keep += sink[i];
  std::free(data);
  return keep == 12345.0 ? best + 1e-12 : best;
}

// Threads of the kernels' pool (the caller included).
int msa_num_threads() { return msa::ThreadPool::Instance().threads(); }
}
