// Prefill throughput of the attention core, as a fraction of this machine's float32 FMA peak measured in the
// same run by the kernel library's own FMA loop (machine_limits.cpp).
//
// Builds a Problem directly (BNSD, every position of every batch valid) and runs RunAttention on it; causal
// cases use an explicit (S, S) discard mask, which the core skips tile by tile where a whole tile is masked.
// Flops: 4 * B * N * D per visible (query, key) pair (Q.K^T and P.V, 2 flops per multiply-add). Each case
// prints its best GFLOP/s over the repeats, that over the best peak of the run, and the same ratio per CPU
// second of the process (kernel flops per CPU second over the peak loop's): the first is what a user sees, the
// second stays meaningful when other processes share the cores.
//
//   python benchmarks/build_prefill_bench.py && benchmarks/csrc/prefill_bench [repeats] [case-filter]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention/attention.h"

extern "C" double msa_fp32_fma_gflops(double seconds);
extern "C" int msa_num_threads();

namespace {

struct Case {
  int64_t B, N, kvN, S, D;
  msa::DType dtype;
  bool causal;
  bool decode = false;  // one query position (incre_flash_attention's shape): memory bound, reported in GB/s
};

std::string Name(const Case &c) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "B=%lld N=%lld kvN=%lld S=%lld D=%lld %s %s", (long long)c.B, (long long)c.N,
                (long long)c.kvN, (long long)c.S, (long long)c.D, c.dtype == msa::abi::kFloat16 ? "fp16" : "bf16",
                c.decode ? "decode" : c.causal ? "causal" : "full");
  return buf;
}

uint16_t Encode(float x, msa::DType dtype) {
  return dtype == msa::abi::kFloat16 ? msa::FloatToHalf(x) : msa::FloatToBF16(x);
}

// Wall and CPU (all threads of the process) seconds of fn.
struct Time {
  double wall, cpu;
};
double CpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
template <class Fn>
Time Measure(Fn &&fn) {
  const auto wall0 = std::chrono::steady_clock::now();
  const double cpu0 = CpuSeconds();
  fn();
  return {std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count(), CpuSeconds() - cpu0};
}

// GFLOP/s per wall second and per CPU second (the second is not lowered by other processes taking a core).
struct Rate {
  double wall = 0, cpu = 0;
  void Best(double flops, const Time &t) {
    wall = std::max(wall, flops / t.wall / 1e9);
    cpu = std::max(cpu, flops / t.cpu / 1e9);
  }
};

Rate Peak(int repeats) {
  Rate r;
  for (int i = 0; i < repeats; ++i) {
    double gflops = 0;
    const Time t = Measure([&] { gflops = msa_fp32_fma_gflops(0.2); });
    r.Best(gflops * 1e9 * t.wall, t);
  }
  return r;
}

// Best rates of `repeats` runs of the case.
Rate RunCase(const Case &c, int repeats) {
  using namespace msa;
  const int64_t Sq = c.decode ? 1 : c.S;
  const int64_t q_elems = c.B * c.N * Sq * c.D, kv_elems = c.B * c.kvN * c.S * c.D;
  std::vector<uint16_t> q(q_elems), k(kv_elems), v(kv_elems), out(q_elems);
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto &x : q) x = Encode(normal(rng), c.dtype);
  for (auto &x : k) x = Encode(normal(rng), c.dtype);
  for (auto &x : v) x = Encode(normal(rng), c.dtype);
  std::vector<uint8_t> mask;

  Problem p;
  p.B = c.B;
  p.N = c.N;
  p.kvN = c.kvN;
  p.G = c.N / c.kvN;
  p.D = c.D;
  p.Sq = Sq;
  p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
  p.q_dtype = p.out_dtype = c.dtype;
  p.query = q.data();
  p.q_numel = q_elems;
  p.q_rows = DenseStrides(abi::kBnsd, c.N, Sq, c.D);
  p.out = out.data();
  p.out_numel = q_elems;
  p.out_rows = p.q_rows;
  p.kv.key = k.data();
  p.kv.value = v.data();
  p.kv.dtype = c.dtype;
  p.kv.numel = kv_elems;
  p.kv.stored_len = c.S;
  p.kv.rows = DenseStrides(abi::kBnsd, c.kvN, c.S, c.D);
  p.q_start.assign(c.B, 0);
  p.q_len.assign(c.B, Sq);
  p.kv_start.assign(c.B, 0);
  p.kv_len.assign(c.B, c.S);
  double pairs = static_cast<double>(Sq) * c.S;
  if (c.causal) {
    mask.resize(c.S * c.S);
    for (int64_t i = 0; i < c.S; ++i) {
      for (int64_t j = 0; j < c.S; ++j) mask[i * c.S + j] = j > i;
    }
    p.mask.data = mask.data();
    p.mask.numel = c.S * c.S;
    p.mask.batch = 0;
    p.mask.row = c.S;
    p.frame.q.assign(c.B, 0);  // the mask's frame: window (i, j) is mask element (i, j)
    p.frame.k.assign(c.B, 0);
    pairs = static_cast<double>(c.S) * (c.S + 1) / 2;
  }
  // decode: K/V bytes read instead of flops (the rates are then GB/s)
  const double flops = c.decode ? 2.0 * kv_elems * 2 : 4.0 * c.B * c.N * c.D * pairs;
  RunAttention(p);  // warm up (page faults, pool start)
  Rate best;
  for (int r = 0; r < repeats; ++r) best.Best(flops, Measure([&] { RunAttention(p); }));
  return best;
}

}  // namespace

int main(int argc, char **argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 3;
  const char *filter = argc > 2 ? argv[2] : "";
  using msa::abi::kBfloat16;
  using msa::abi::kFloat16;
  const std::vector<Case> cases = {
      {1, 32, 32, 2048, 128, kFloat16, false}, {1, 32, 32, 2048, 128, kBfloat16, false},
      {1, 32, 32, 2048, 128, kFloat16, true},  {1, 32, 32, 2048, 128, kBfloat16, true},
      {1, 8, 8, 8192, 128, kFloat16, false},   {1, 8, 8, 8192, 128, kBfloat16, false},
      {1, 8, 8, 8192, 128, kFloat16, true},    {1, 8, 8, 8192, 128, kBfloat16, true},
      {1, 32, 8, 2048, 128, kFloat16, false},  {1, 32, 8, 2048, 128, kBfloat16, true},
      {8, 32, 8, 4096, 128, kFloat16, false, true}, {1, 32, 8, 32768, 128, kBfloat16, false, true},
      {8, 32, 2, 4096, 128, kFloat16, false, true},  // a group of 16 heads: decode through the packed tiles
  };
  Rate peak = Peak(5);
  std::printf("threads %d, fp32 FMA peak (kernel library loop): %.1f GFLOP/s (%.1f per CPU second)\n",
              msa_num_threads(), peak.wall, peak.cpu);
  std::printf("%-48s %8s %6s %8s\n", "case", "GFLOP/s", "of peak", "cpu-time efficiency");
  for (const Case &c : cases) {
    const std::string name = Name(c);
    if (name.find(filter) == std::string::npos) continue;
    const Rate rate = RunCase(c, repeats);
    // the peak again after each case, keeping the best: other processes on shared cores lower both
    const Rate again = Peak(3);
    peak.wall = std::max(peak.wall, again.wall);
    peak.cpu = std::max(peak.cpu, again.cpu);
    if (c.decode) {
      std::printf("%-48s %8.1f GB/s of K/V (%.1f per CPU second)\n", name.c_str(), rate.wall, rate.cpu);
    } else {
      std::printf("%-48s %8.1f %6.2f %8.2f\n", name.c_str(), rate.wall, rate.wall / peak.wall, rate.cpu / peak.cpu);
    }
    std::fflush(stdout);
  }
  return 0;
}
