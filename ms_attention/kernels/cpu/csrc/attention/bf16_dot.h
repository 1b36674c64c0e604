// bfloat16 dot products on pairs: AVX512_BF16 `vdpbf16ps`, or the same arithmetic with two float32 FMAs.
//
// A 512-bit vector of Pairs holds 32 bfloat16 values as 16 pairs, pair i in 32-bit lane i (its first value in
// the low half). DotPairs(acc, a, b) adds a.first * b.first + a.second * b.second to lane i of acc: products
// of two bfloat16 are exact in float32 and the sums are rounded in float32 (SPEC §2.1: widened, never
// multiplied in half precision). With __AVX512BF16__ this is one vdpbf16ps; without it (an AVX-512 build for
// a CPU that lacks it) each half is widened by a shift or a mask and FMA'd, in vdpbf16ps' order (second
// value first), so both give the same sums up to vdpbf16ps flushing subnormals.
//
// Two layouts feed a GEMM from this:
// - a dot product along a row: 32 consecutive values of two rows are already 16 pairs (LoadPairs), and
//   a broadcast pair (BroadcastPair) times a vector of 16 pairs from 16 different rows (PackPairsTransposed)
//   gives 16 dot products at once (outer-product micro-GEMM, no horizontal reduction);
// - a sum over rows: InterleaveRows makes (a[d], b[d]) pairs of two rows, so a broadcast pair of weights
//   (w_a, w_b) adds w_a * a + w_b * b to 16 columns at once (P.V with P rounded to bfloat16).
// Only for AVX-512 builds (AVX2 and the portable build widen bfloat16 to float32 instead). Odd counts are
// zero-padded: a missing second value, or a missing second row, multiplies as 0.
#pragma once

#include <cstdint>

#include "attention/numeric.h"
#include "attention/simd.h"
#include "attention/tile_pack.h"

#if defined(MSA_SIMD_AVX512)
#define MSA_BF16_PAIRS 1

namespace msa {
namespace bf16 {

#if defined(__AVX512BF16__)
constexpr bool kNativeDot = true;
#else
constexpr bool kNativeDot = false;
#endif

using Pairs = __m512i;
using simd::Vec;

inline __mmask32 FirstN32(int64_t n) { return n >= 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1; }

// lane i of acc += a.first[i] * b.first[i] + a.second[i] * b.second[i]
inline Vec DotPairs(Vec acc, Pairs a, Pairs b) {
#if defined(__AVX512BF16__)
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
#else
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(a, high)),
                        _mm512_castsi512_ps(_mm512_and_si512(b, high)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),
                         _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)), acc);
#endif
}

// x, kept in a register (see simd::InRegister).
inline Pairs InRegister(Pairs x) {
  __asm__("" : "+v"(x));
  return x;
}

// Values [0, 32) of p as 16 pairs; with a count n, values [0, n) and zeros after (reads only those n).
inline Pairs LoadPairs(const BFloat16 *p) { return _mm512_loadu_si512(p); }
inline Pairs LoadPairs(const BFloat16 *p, int64_t n) { return _mm512_maskz_loadu_epi16(FirstN32(n), p); }
inline Pairs LoadPairs(const uint32_t *p) { return _mm512_loadu_si512(p); }

// The pair (p[0], p[1]) in every lane; with only = true, (p[0], 0) (the last value of an odd count).
inline Pairs BroadcastPair(const BFloat16 *p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  return _mm512_set1_epi32(static_cast<int>(x));
}
inline Pairs BroadcastFirst(const BFloat16 *p) { return _mm512_set1_epi32(p[0].bits); }
inline Pairs BroadcastPair(uint32_t pair) { return _mm512_set1_epi32(static_cast<int>(pair)); }

// The 32 bfloat16 (round to nearest even) of lo (values 0-15) and hi (values 16-31): 16 pairs in order.
inline Pairs RoundToPairs(Vec lo, Vec hi) {
#if defined(__AVX512BF16__)
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
#else
  auto round = [](Vec x) {  // as FloatToBF16: quiet NaN, else round to nearest even, the high half kept
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_srli_epi32(_mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x400000)), 16);
  };
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(round(lo))), _mm512_cvtepi32_epi16(round(hi)),
                            1);
#endif
}

// Pairs (a[d], b[d]) of two rows of 32 values each: lo holds columns 0-15, hi columns 16-31.
inline void InterleaveRows(Pairs a, Pairs b, Pairs *lo, Pairs *hi) {
  const __m512i first = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i second = _mm512_add_epi16(first, _mm512_set1_epi16(16));
  *lo = _mm512_permutex2var_epi16(a, first, b);
  *hi = _mm512_permutex2var_epi16(a, second, b);
}

// dst[e * 16 + j] = pair e of row j, (rows[j][2e], rows[j][2e + 1]), for j < 16 and 2e < D (rounded up to even);
// rows j >= n and the odd value past D are 0. The key panel of an outer-product Q.K^T: 16 keys per vector.
inline void PackPairsTransposed(const BFloat16 *const *rows, int64_t n, int64_t D, uint32_t *dst) {
  const int64_t pairs = (D + 1) / 2;
  for (int64_t e0 = 0; e0 < pairs; e0 += 16) {
    const int64_t w = pairs - e0 < 16 ? pairs - e0 : 16;  // pairs in this block
    Vec r[16];
    for (int j = 0; j < 16; ++j) {
      r[j] = j >= n ? simd::Zero() : _mm512_castsi512_ps(LoadPairs(rows[j] + 2 * e0, D - 2 * e0));
    }
    detail::Transpose(r);  // 16 x 16 32-bit lanes (held as floats: only moved, never computed)
    for (int i = 0; i < w; ++i) _mm512_storeu_ps(reinterpret_cast<float *>(dst + (e0 + i) * 16), r[i]);
  }
}

// dst[d] = (a[d], b[d]) for d < D; b == nullptr: (a[d], 0). The pair layout of two value rows.
inline void InterleaveRowPairs(const BFloat16 *a, const BFloat16 *b, int64_t D, uint32_t *dst) {
  int64_t d = 0;
  for (; d < D; d += 32) {
    const int64_t n = D - d;
    const Pairs x = LoadPairs(a + d, n), y = b ? LoadPairs(b + d, n) : _mm512_setzero_si512();
    Pairs lo, hi;
    InterleaveRows(x, y, &lo, &hi);
    _mm512_mask_storeu_epi32(dst + d, static_cast<__mmask16>(FirstN32(n)), lo);
    if (n > 16) _mm512_mask_storeu_epi32(dst + d + 16, static_cast<__mmask16>(FirstN32(n - 16)), hi);
  }
}

// Values x[0, n) rounded to bfloat16 as pairs: dst[e] = (x[2e], x[2e + 1]), a zero after an odd count.
inline void RoundRowToPairs(const float *x, int64_t n, uint32_t *dst) {
  for (int64_t i = 0; i < n; i += 32) {
    const int64_t m = n - i;
    const Vec lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(FirstN32(m)), x + i);
    const Vec hi = m > 16 ? _mm512_maskz_loadu_ps(static_cast<__mmask16>(FirstN32(m - 16)), x + i + 16) : simd::Zero();
    _mm512_mask_storeu_epi32(dst + i / 2, static_cast<__mmask16>(FirstN32((m + 1) / 2)), RoundToPairs(lo, hi));
  }
}

// x[0, n) as the sum of two bfloat16 rows, hi = bf16(x) and lo = bf16(x - hi), in pairs (as RoundRowToPairs):
// hi + lo keeps about 16 significant bits of x (relative error <= 2^-17 against 2^-9 for hi alone), enough
// for probabilities whose products with values cancel in the sum (P.V); two vdpbf16ps then take the place of
// one float32 FMA per key and column, with no widening of the values.
inline void SplitRowToPairs(const float *x, int64_t n, uint32_t *hi, uint32_t *lo) {
  for (int64_t i = 0; i < n; i += 32) {
    const int64_t m = n - i;
    const Vec x0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(FirstN32(m)), x + i);
    const Vec x1 = m > 16 ? _mm512_maskz_loadu_ps(static_cast<__mmask16>(FirstN32(m - 16)), x + i + 16) : simd::Zero();
    const Pairs h = RoundToPairs(x0, x1);
    // the rounded values back in float32: the low half of each 32-bit lane is value 2e, the high half 2e + 1
    const Vec h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const Vec h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    const Pairs l = RoundToPairs(simd::Sub(x0, h0), simd::Sub(x1, h1));
    const __mmask16 store = static_cast<__mmask16>(FirstN32((m + 1) / 2));
    _mm512_mask_storeu_epi32(hi + i / 2, store, h);
    _mm512_mask_storeu_epi32(lo + i / 2, store, l);
  }
}

// sum_d a[d] * b[d] for d < n, in pairs (a dot product of two bfloat16 rows).
inline float DotRow(const BFloat16 *a, const BFloat16 *b, int64_t n) {
  Vec acc0 = simd::Zero(), acc1 = simd::Zero();
  int64_t d = 0;
  for (; d + 64 <= n; d += 64) {
    acc0 = DotPairs(acc0, LoadPairs(a + d), LoadPairs(b + d));
    acc1 = DotPairs(acc1, LoadPairs(a + d + 32), LoadPairs(b + d + 32));
  }
  for (; d < n; d += 32) acc0 = DotPairs(acc0, LoadPairs(a + d, n - d), LoadPairs(b + d, n - d));
  return simd::ReduceAdd(simd::Add(acc0, acc1));
}

}  // namespace bf16
}  // namespace msa

#endif  // MSA_SIMD_AVX512
