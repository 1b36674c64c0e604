// The online softmax of flash attention and the merge of a row's partial results over key splits.
//
// A query row keeps a running max m and sum l while its key tiles stream past; the accumulated P.V is
// rescaled by exp(m_old - m_new) whenever the max grows, so no row of scores is ever held whole.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/simd.h"

namespace msa {

constexpr float kNegInf = -INFINITY;

// Folds one tile of a row's scores s[0, n) into its running (m, l): s becomes exp(s - m_new) and
// *correction the factor for what was accumulated so far. A tile whose keys are all masked (-inf) leaves
// m and l alone, zeroes s and returns false.
inline bool SoftmaxTile(float *s, int64_t n, float *m, float *l, float *correction) {
  const float tile_max = simd::MaxOf(s, n);
  if (tile_max == kNegInf) {
    std::fill(s, s + n, 0.f);
    *correction = 1.f;
    return false;
  }
  const float m_new = std::max(*m, tile_max);
  *correction = std::exp(*m - m_new);  // 0 on a row's first visible tile (m = -inf)
  *l = *l * *correction + simd::ExpShiftedSum(s, n, m_new);
  *m = m_new;
  return true;
}

#if defined(MSA_SIMD_AVX512)
namespace detail {
// SoftmaxTile for rows [0, c) (c <= 16) of a tile of n <= 32 keys, vectorised across the rows: one pass for
// the rows' maxima (reduced 16 at once), the corrections as one vector, one pass for exp and the sums.
inline bool SoftmaxRows16(float *s, int64_t lds, int c, int64_t n, float *m, float *l, float *correction) {
  using namespace simd;
  const __mmask16 k0 = n >= 16 ? FirstN(16) : FirstN(static_cast<int>(n));
  const __mmask16 k1 = n > 16 ? FirstN(static_cast<int>(n - 16)) : 0;
  const __mmask16 rows = FirstN(c);
  const Vec neg = Set1(kNegInf);
  Vec mx[16];
  for (int i = 0; i < 16; ++i) {
    mx[i] = neg;
    if (i >= c) continue;
    mx[i] = _mm512_mask_loadu_ps(neg, k0, s + i * lds);
    if (k1) mx[i] = Max(mx[i], _mm512_mask_loadu_ps(neg, k1, s + i * lds + 16));
  }
  const Vec tile_max = MaxEach(mx);
  const Vec m_old = _mm512_mask_loadu_ps(neg, rows, m);
  const Vec m_new = Max(m_old, tile_max);
  const __mmask16 seen = _mm512_cmp_ps_mask(tile_max, neg, _CMP_NEQ_OQ) & rows;  // a visible key in this tile
  // A row with no visible key so far shifts by 0 (its scores are all -inf and become 0); a tile with no
  // visible key of a row leaves its m and l alone, with correction 1.
  const Vec shift = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_new, neg, _CMP_EQ_OQ), m_new, Zero());
  const Vec corr = _mm512_mask_blend_ps(seen, Set1(1.f), Exp(Sub(m_old, shift)));
  alignas(64) float shifts[16];
  Store(shifts, shift);
  Vec sums[16];
  for (int i = 0; i < 16; ++i) {
    sums[i] = Zero();
    if (i >= c) continue;
    const Vec sh = Set1(shifts[i]);
    float *row = s + i * lds;
    const Vec e0 = Exp(Sub(_mm512_mask_loadu_ps(neg, k0, row), sh));
    _mm512_mask_storeu_ps(row, k0, e0);
    sums[i] = e0;
    if (k1) {
      const Vec e1 = Exp(Sub(_mm512_mask_loadu_ps(neg, k1, row + 16), sh));
      _mm512_mask_storeu_ps(row + 16, k1, e1);
      sums[i] = Add(e0, e1);
    }
  }
  const Vec l_new = Fma(_mm512_mask_loadu_ps(Zero(), rows, l), corr, SumEach(sums));
  _mm512_mask_storeu_ps(l, rows, l_new);
  _mm512_mask_storeu_ps(m, rows, m_new);
  _mm512_mask_storeu_ps(correction, rows, corr);
  return seen != 0;
}
}  // namespace detail
#endif

// SoftmaxTile for each of `rows` rows, row r at s + r * lds with state m[r], l[r], correction[r]; returns
// whether any row had a visible key. Many rows (prefill) are done 16 at a time in vectors across rows.
inline bool SoftmaxTileRows(float *s, int64_t lds, int64_t rows, int64_t n, float *m, float *l, float *correction) {
  bool any = false;
  int64_t r = 0;
#if defined(MSA_SIMD_AVX512)
  if (rows >= 8 && n <= 32) {
    for (; r < rows; r += 16) {
      const int c = static_cast<int>(rows - r < 16 ? rows - r : 16);
      any |= detail::SoftmaxRows16(s + r * lds, lds, c, n, m + r, l + r, correction + r);
    }
  }
#endif
  for (; r < rows; ++r) any |= SoftmaxTile(s + r * lds, n, m + r, l + r, correction + r);
  return any;
}

// Split-K merge of one row: split s computed (m, l, acc) over its own key range, at m[s * ml_stride],
// l[s * ml_stride], acc[s * acc_stride]. Writes the normalised row o[0, D) and the row's overall (m, l);
// returns false when no split saw a visible key (the row is not computed, o is left as it was).
inline bool MergeSplits(const float *m, const float *l, int64_t ml_stride, const float *acc, int64_t acc_stride,
                        int64_t splits, int64_t D, float *o, float *m_out, float *l_out) {
  float m_all = kNegInf;
  for (int64_t s = 0; s < splits; ++s) m_all = std::max(m_all, m[s * ml_stride]);
  if (m_all == kNegInf) return false;
  float l_all = 0.f;
  std::fill(o, o + D, 0.f);
  for (int64_t s = 0; s < splits; ++s) {
    if (m[s * ml_stride] == kNegInf) continue;  // saw no key: l = 0, acc unset
    const float f = std::exp(m[s * ml_stride] - m_all);
    l_all += l[s * ml_stride] * f;
    simd::ScaleAdd(o, 1.f, acc + s * acc_stride, f, D);
  }
  const float inv = 1.f / l_all;
  for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  *m_out = m_all;
  *l_out = l_all;
  return true;
}

}  // namespace msa
