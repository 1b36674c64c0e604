// Checks the attention core's tiles (ScoreTile, AccumulateTile, SoftmaxTile) against plain double-precision
// loops, for many row counts, key counts and head dims: the in-place paths (few rows), the packed paths (many
// rows) and every remainder of their register blocks. Compiled by test_attention_tiles.py once per instruction
// set (AVX-512, AVX2, none). Prints each mismatch; exits 1 if there was one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "attention/bf16_dot.h"
#include "attention/score_tile.h"
#include "attention/softmax.h"
#include "attention/value_tile.h"

namespace {

using namespace msa;

int failures = 0;
std::mt19937 rng(1234);

template <class E>
E Encode(float x);
template <>
Half Encode<Half>(float x) { return Half{FloatToHalf(x)}; }
template <>
BFloat16 Encode<BFloat16>(float x) { return BFloat16{FloatToBF16(x)}; }
template <>
int8_t Encode<int8_t>(float x) { return static_cast<int8_t>(std::lround(std::fmax(-127.f, std::fmin(127.f, x * 40)))); }

const char *Name(Half) { return "float16"; }
const char *Name(BFloat16) { return "bfloat16"; }
const char *Name(int8_t) { return "int8"; }

void Report(const char *what, const char *dtype, int64_t rows, int64_t n, int64_t D, int64_t r, int64_t j, double got,
            double want) {
  if (++failures <= 20) {
    std::printf("%s %s rows=%lld n=%lld D=%lld: [%lld][%lld] = %.9g, expected %.9g\n", what, dtype, (long long)rows,
                (long long)n, (long long)D, (long long)r, (long long)j, got, want);
  }
}

// Key/value rows, each in its own allocation, with the row pointers a tile takes.
template <class E>
struct Rows {
  std::vector<std::vector<E>> data;
  std::vector<const E *> ptr;
  Rows(int64_t n, int64_t D) : data(n), ptr(n) {
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int64_t j = 0; j < n; ++j) {
      data[j].resize(D);
      for (auto &x : data[j]) x = Encode<E>(normal(rng));
      ptr[j] = data[j].data();
    }
  }
  double At(int64_t j, int64_t d) const { return ToFloat(data[j][d]); }
};

constexpr float kSentinel = 12345.f;

template <class E>
void CheckScores(int64_t rows, int64_t n, int64_t D) {
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t ldq = D + 3, lds = n + 5;
  std::vector<float> q(rows * ldq), s(rows * lds, kSentinel), scratch(D);
  for (auto &x : q) x = normal(rng);
  const Rows<E> k(n, D);
  ScoreTile(q.data(), ldq, rows, k.ptr.data(), n, D, s.data(), lds, scratch.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < lds; ++j) {
      const double got = s[r * lds + j];
      if (j >= n) {
        if (got != kSentinel) Report("ScoreTile wrote past n:", Name(E{}), rows, n, D, r, j, got, kSentinel);
        continue;
      }
      double want = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        want += q[r * ldq + d] * k.At(j, d);
        mag += std::fabs(q[r * ldq + d] * k.At(j, d));
      }
      if (std::fabs(got - want) > 1e-5 * mag + 1e-30) Report("ScoreTile", Name(E{}), rows, n, D, r, j, got, want);
    }
  }
}

template <class E>
void CheckValues(int64_t rows, int64_t n, int64_t D) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t lda = D + 7, ldp = n + 2;
  std::vector<float> acc(rows * lda), p(rows * ldp), corr(rows), scratch(D);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < lda; ++d) acc[r * lda + d] = d < D ? normal(rng) : kSentinel;
  }
  for (auto &x : p) x = unit(rng);
  for (auto &x : corr) x = unit(rng);
  const std::vector<float> before = acc;
  const Rows<E> v(n, D);
  AccumulateTile(acc.data(), lda, rows, corr.data(), p.data(), ldp, v.ptr.data(), n, D, scratch.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < lda; ++d) {
      const double got = acc[r * lda + d];
      if (d >= D) {
        if (got != kSentinel) Report("AccumulateTile wrote past D:", Name(E{}), rows, n, D, r, d, got, kSentinel);
        continue;
      }
      double want = before[r * lda + d] * corr[r], mag = std::fabs(want);
      for (int64_t j = 0; j < n; ++j) {
        want += p[r * ldp + j] * v.At(j, d);
        mag += std::fabs(p[r * ldp + j] * v.At(j, d));
      }
      if (std::fabs(got - want) > 1e-5 * mag + 1e-30) Report("AccumulateTile", Name(E{}), rows, n, D, r, d, got, want);
    }
  }
}

void CheckSoftmax(int64_t n, float m0, bool masked) {
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> s(n);
  for (int64_t j = 0; j < n; ++j) s[j] = masked && j % 3 != 1 ? kNegInf : normal(rng);
  if (masked && n == 1) s[0] = kNegInf;
  const std::vector<float> in = s;
  float m = m0, l = m0 == kNegInf ? 0.f : 2.5f, corr = -1.f;
  const float l0 = l;
  const bool any = SoftmaxTile(s.data(), n, &m, &l, &corr);
  double tile_max = -INFINITY;
  for (float x : in) tile_max = std::fmax(tile_max, x);
  const char *name = masked ? "masked" : "scores";
  if (tile_max == -INFINITY) {
    if (any || m != m0 || l != l0 || corr != 1.f) Report("SoftmaxTile all-masked state", name, 1, n, 0, 0, 0, m, m0);
    for (int64_t j = 0; j < n; ++j) {
      if (s[j] != 0.f) Report("SoftmaxTile all-masked p", name, 1, n, 0, 0, j, s[j], 0);
    }
    return;
  }
  const double m_new = std::fmax(m0, tile_max), want_corr = std::exp(double(m0) - m_new);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double want = std::exp(double(in[j]) - m_new);
    sum += want;
    // float32 rounding of s - m, then of exp: relative error up to about 2^-24 * (|s - m| + 2)
    if (std::fabs(s[j] - want) > 1.2e-7 * (std::fabs(in[j] - m_new) + 3) * want + 1e-37) Report("SoftmaxTile p", name, 1, n, 0, 0, j, s[j], want);
  }
  const double want_l = l0 * want_corr + sum;
  if (!any || m != m_new) Report("SoftmaxTile m", name, 1, n, 0, 0, 0, m, m_new);
  if (std::fabs(corr - want_corr) > 1.2e-7 * (m_new - m0 + 3) * want_corr + 1e-37) Report("SoftmaxTile corr", name, 1, n, 0, 0, 0, corr, want_corr);
  if (std::fabs(l - want_l) > 2e-6 * want_l) Report("SoftmaxTile l", name, 1, n, 0, 0, 0, l, want_l);
}

// SoftmaxTileRows against SoftmaxTile row by row (equal within an ulp or two of exp: the row-vectorised path
// uses the polynomial exp for the correction too), with rows whose keys are all masked, rows that saw no key yet,
// and the columns past n left alone.
void CheckSoftmaxRows(int64_t rows, int64_t n) {
  std::normal_distribution<float> normal(0.f, 3.f);
  const int64_t lds = n + 3;
  std::vector<float> s(rows * lds), m(rows), l(rows), corr(rows, -1.f);
  for (int64_t r = 0; r < rows; ++r) {
    const int kind = static_cast<int>(r % 5);  // 0: visible, 1: all masked, 2: partly masked, 3/4: fresh row
    m[r] = kind >= 3 ? kNegInf : normal(rng);
    l[r] = kind >= 3 ? 0.f : 1.5f;
    for (int64_t j = 0; j < lds; ++j) {
      const bool masked = kind == 1 || kind == 4 || (kind == 2 && j % 2 == 0);
      s[r * lds + j] = j >= n ? kSentinel : masked ? kNegInf : normal(rng);
    }
  }
  std::vector<float> s2 = s, m2 = m, l2 = l, corr2 = corr;
  const bool any = SoftmaxTileRows(s.data(), lds, rows, n, m.data(), l.data(), corr.data());
  bool any2 = false;
  for (int64_t r = 0; r < rows; ++r) any2 |= SoftmaxTile(s2.data() + r * lds, n, &m2[r], &l2[r], &corr2[r]);
  auto close = [](float a, float b) { return a == b || std::fabs(a - b) <= 1e-6f * std::fabs(b); };
  if (any != any2) Report("SoftmaxTileRows any", "rows", rows, n, 0, 0, 0, any, any2);
  for (int64_t r = 0; r < rows; ++r) {
    if (m[r] != m2[r]) Report("SoftmaxTileRows m", "rows", rows, n, 0, r, 0, m[r], m2[r]);
    if (!close(l[r], l2[r])) Report("SoftmaxTileRows l", "rows", rows, n, 0, r, 0, l[r], l2[r]);
    if (!close(corr[r], corr2[r])) Report("SoftmaxTileRows corr", "rows", rows, n, 0, r, 0, corr[r], corr2[r]);
    for (int64_t j = 0; j < lds; ++j) {
      if (!close(s[r * lds + j], s2[r * lds + j])) Report("SoftmaxTileRows p", "rows", rows, n, 0, r, j, s[r * lds + j], s2[r * lds + j]);
    }
  }
}

template <class E>
void CheckType() {
  const int64_t row_counts[] = {1, 2, 3, 4, 5, 7, 8, 11, 12, 13, 15, 16, 17, 23, 24, 25, 31, 37, 64};
  const int64_t key_counts[] = {1, 3, 15, 16, 17, 31, 32, 33, 64, 70};
  const int64_t dims[] = {1, 7, 16, 17, 40, 64, 80, 128, 130, 256};
  for (int64_t rows : row_counts) {
    for (int64_t n : key_counts) {
      for (int64_t D : dims) {
        CheckScores<E>(rows, n, D);
        CheckValues<E>(rows, n, D);
      }
    }
  }
}

#if defined(MSA_BF16_PAIRS)
// bf16_dot.h's primitives against scalar loops: pair dot products (exact products, float32 sums), the
// transposed key panel, interleaved value rows and rounding to bfloat16, for even and odd counts.
void CheckBf16Pairs() {
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t D : {1, 2, 7, 16, 31, 32, 33, 64, 72, 80, 96, 127, 128, 192}) {
    const Rows<BFloat16> a(16, D + 1);
    const double mag_tol = 1e-6;
    for (int64_t j = 0; j < 16; ++j) {  // DotRow reads [0, D) only: element D of each row is never used
      double want = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        want += a.At(0, d) * a.At(j, d);
        mag += std::fabs(a.At(0, d) * a.At(j, d));
      }
      const double got = bf16::DotRow(a.ptr[0], a.ptr[j], D);
      if (std::fabs(got - want) > mag_tol * mag + 1e-30) Report("bf16 DotRow", "bfloat16", 1, 16, D, 0, j, got, want);
    }
    for (int64_t n : {1, 5, 16}) {
      const int64_t pairs = (D + 1) / 2;
      std::vector<uint32_t> panel(pairs * 16 + 16, 0xDEADBEEFu);
      bf16::PackPairsTransposed(a.ptr.data(), n, D, panel.data());
      for (int64_t e = 0; e < pairs; ++e) {
        for (int64_t j = 0; j < 16; ++j) {
          const uint32_t lo = j < n ? a.data[j][2 * e].bits : 0;
          const uint32_t hi = j < n && 2 * e + 1 < D ? a.data[j][2 * e + 1].bits : 0;
          if (panel[e * 16 + j] != (lo | hi << 16)) Report("bf16 PackPairsTransposed", "bfloat16", n, 16, D, e, j, panel[e * 16 + j], lo | hi << 16);
        }
      }
      for (int64_t i = pairs * 16; i < pairs * 16 + 16; ++i) {
        if (panel[i] != 0xDEADBEEFu) Report("bf16 PackPairsTransposed wrote past", "bfloat16", n, 16, D, i, 0, panel[i], 0);
      }
    }
    for (bool second : {true, false}) {
      std::vector<uint32_t> inter(D + 16, 0xDEADBEEFu);
      bf16::InterleaveRowPairs(a.ptr[2], second ? a.ptr[3] : nullptr, D, inter.data());
      for (int64_t d = 0; d < D + 16; ++d) {
        const uint32_t want = d >= D ? 0xDEADBEEFu : a.data[2][d].bits | (second ? uint32_t(a.data[3][d].bits) << 16 : 0u);
        if (inter[d] != want) Report("bf16 InterleaveRowPairs", "bfloat16", 2, second, D, 0, d, inter[d], want);
      }
    }
    std::vector<float> x(D);
    for (auto &v : x) v = normal(rng) * 100.f;
    if (D > 3) x[3] = NAN;
    std::vector<uint32_t> rounded((D + 1) / 2 + 16, 0xDEADBEEFu);
    bf16::RoundRowToPairs(x.data(), D, rounded.data());
    for (int64_t e = 0; e < (D + 1) / 2 + 16; ++e) {
      uint32_t want = 0xDEADBEEFu;
      if (e < (D + 1) / 2) want = FloatToBF16(x[2 * e]) | (2 * e + 1 < D ? uint32_t(FloatToBF16(x[2 * e + 1])) << 16 : 0u);
      if (rounded[e] != want) Report("bf16 RoundRowToPairs", "bfloat16", 1, 0, D, 0, e, rounded[e], want);
    }
    if (D > 3) x[3] = 0.75f;  // SplitRowToPairs: probabilities, finite
    std::vector<uint32_t> hi((D + 1) / 2 + 16, 0xDEADBEEFu), lo((D + 1) / 2 + 16, 0xDEADBEEFu);
    bf16::SplitRowToPairs(x.data(), D, hi.data(), lo.data());
    for (int64_t e = 0; e < (D + 1) / 2 + 16; ++e) {
      uint32_t want_hi = 0xDEADBEEFu, want_lo = 0xDEADBEEFu;
      if (e < (D + 1) / 2) {
        want_hi = want_lo = 0;
        for (int64_t i = 2 * e; i < std::min<int64_t>(2 * e + 2, D); ++i) {
          const uint16_t h = FloatToBF16(x[i]), l = FloatToBF16(x[i] - BF16ToFloat(h));
          want_hi |= uint32_t(h) << (16 * (i - 2 * e));
          want_lo |= uint32_t(l) << (16 * (i - 2 * e));
        }
      }
      if (hi[e] != want_hi) Report("bf16 SplitRowToPairs hi", "bfloat16", 1, 0, D, 0, e, hi[e], want_hi);
      if (lo[e] != want_lo) Report("bf16 SplitRowToPairs lo", "bfloat16", 1, 0, D, 0, e, lo[e], want_lo);
    }
  }
}

// ScoreTilePairs (in place below 16 rows, packed pair panels from 16): bfloat16 query rows (zero-padded to
// 32) . bfloat16 keys, times the scale.
void CheckScoresPairs(int64_t rows, int64_t n, int64_t D) {
  const int64_t ldq = (D + 31) / 32 * 32 + 32, lds = n + 5;
  const float scale = 0.37f;
  const Rows<BFloat16> qrows(rows, D), k(n, D);
  std::vector<BFloat16> q(rows * ldq, BFloat16{0});
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < D; ++d) q[r * ldq + d] = qrows.data[r][d];
  }
  std::vector<float> s(rows * lds, kSentinel);
  ScoreTilePairs(q.data(), ldq, rows, k.ptr.data(), n, D, scale, s.data(), lds);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < lds; ++j) {
      const double got = s[r * lds + j];
      if (j >= n) {
        if (got != kSentinel) Report("ScoreTilePairs wrote past n:", "bfloat16", rows, n, D, r, j, got, kSentinel);
        continue;
      }
      double want = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        want += qrows.At(r, d) * k.At(j, d) * scale;
        mag += std::fabs(qrows.At(r, d) * k.At(j, d) * scale);
      }
      if (std::fabs(got - want) > 1e-5 * mag + 1e-30) Report("ScoreTilePairs", "bfloat16", rows, n, D, r, j, got, want);
    }
  }
}

// AccumulateTileManyPairs (in place below 16 rows, packed from 16): acc * corr + (hi + lo)(p) . v, the
// probabilities as the sum of two bfloat16.
void CheckValuesPairs(int64_t rows, int64_t n, int64_t D) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t lda = D + 7, ldp = n + 2;
  std::vector<float> acc(rows * lda), p(rows * ldp), corr(rows);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < lda; ++d) acc[r * lda + d] = d < D ? normal(rng) : kSentinel;
  }
  for (auto &x : p) x = unit(rng);
  for (int64_t r = 0; r < rows; ++r) corr[r] = r % 3 == 0 ? 1.f : unit(rng);
  const std::vector<float> before = acc;
  const Rows<BFloat16> v(n, D);
  AccumulateTileManyPairs(acc.data(), lda, rows, corr.data(), p.data(), ldp, v.ptr.data(), n, D);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < lda; ++d) {
      const double got = acc[r * lda + d];
      if (d >= D) {
        if (got != kSentinel) Report("AccumulateTilePairs wrote past D:", "bfloat16", rows, n, D, r, d, got, kSentinel);
        continue;
      }
      double want = before[r * lda + d] * corr[r], mag = std::fabs(want);
      for (int64_t j = 0; j < n; ++j) {
        const float hi = BF16ToFloat(FloatToBF16(p[r * ldp + j]));
        const double pj = double(hi) + BF16ToFloat(FloatToBF16(p[r * ldp + j] - hi));
        want += pj * v.At(j, d);
        mag += std::fabs(pj * v.At(j, d));
      }
      if (std::fabs(got - want) > 1e-5 * mag + 1e-30) Report("AccumulateTilePairs", "bfloat16", rows, n, D, r, d, got, want);
    }
  }
}

void CheckPairTiles() {
  for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 23, 24, 25, 31, 37, 64}) {
    for (int64_t n : {1, 2, 3, 15, 16, 17, 31, 32, 33, 64, 70}) {
      for (int64_t D : {1, 7, 16, 17, 40, 64, 72, 80, 96, 127, 128, 130, 192, 256}) {
        CheckScoresPairs(rows, n, D);
        CheckValuesPairs(rows, n, D);
      }
    }
  }
}
#endif

}  // namespace

int main() {
  CheckType<Half>();
  CheckType<BFloat16>();
  CheckType<int8_t>();
  for (int64_t n : {1, 2, 15, 16, 17, 31, 32, 33, 64}) {
    for (float m0 : {kNegInf, -3.f, 0.5f, 20.f}) {
      CheckSoftmax(n, m0, false);
      CheckSoftmax(n, m0, true);
    }
  }
  for (int64_t rows : {1, 3, 7, 8, 9, 16, 17, 31, 64}) {
    for (int64_t n : {1, 5, 16, 17, 31, 32, 40}) CheckSoftmaxRows(rows, n);
  }
#if defined(MSA_BF16_PAIRS)
  CheckBf16Pairs();
  CheckPairTiles();
  const char *isa = bf16::kNativeDot ? "avx512bf16" : "avx512";
#else
  const char *isa = simd::kHasSimd ? (simd::kWidth == 16 ? "avx512" : "avx2") : "scalar";
#endif
  std::printf("%s: %d mismatches\n", isa, failures);
  return failures == 0 ? 0 : 1;
}
