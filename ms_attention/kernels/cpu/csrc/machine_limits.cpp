// This machine's compute limit as the kernels see it: a float32 FMA loop on every thread of the kernels' pool,
// with the widest vectors the library was built for. Benchmarks report the attention kernels as a fraction
// of it (measured in the same run), so the figure does not depend on a BLAS library or its core-type setting.
#include <chrono>
#include <cstdint>

#include "attention/simd.h"
#include "parallel.h"

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

// Threads of the kernels' pool (the caller included).
int msa_num_threads() { return msa::ThreadPool::Instance().threads(); }
}
