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
