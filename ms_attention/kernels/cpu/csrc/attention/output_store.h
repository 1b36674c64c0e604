// Writing a finished output row: rounding to float16 / bfloat16, or post-quantization to int8, and the
// optional log-sum-exp. A row that was not computed (no visible key) is 0, also after
// quantization, and its lse is +inf.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention/numeric.h"
#include "attention/problem.h"

namespace msa {

// Row (b, h, i) of the output, i the stored query position; o holds D normalised values (unread when
// !computed); lse is the row's log-sum-exp (+inf when not computed).
inline void StoreOutputRow(const Problem &p, int64_t b, int64_t h, int64_t i, const float *o, bool computed,
                           float lse) {
  const int64_t D = p.D, base = p.out_rows.At(b, h, i);
  if (p.post_quant.enabled()) {
    const PostQuant &pq = p.post_quant;
    int8_t *dst = static_cast<int8_t *>(p.out) + base;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t c = pq.per_channel ? h * D + d : 0;
      dst[d] = computed ? SaturateToInt8(o[d] * pq.scale[c] + (pq.offset.empty() ? 0.f : pq.offset[c])) : 0;
    }
  } else if (p.out_dtype == abi::kFloat16) {
    uint16_t *dst = static_cast<uint16_t *>(p.out) + base;
    for (int64_t d = 0; d < D; ++d) dst[d] = computed ? FloatToHalf(o[d]) : 0;
  } else if (p.out_dtype == abi::kBfloat16) {
    uint16_t *dst = static_cast<uint16_t *>(p.out) + base;
    for (int64_t d = 0; d < D; ++d) dst[d] = computed ? FloatToBF16(o[d]) : 0;
  } else {  // float32
    float *dst = static_cast<float *>(p.out) + base;
    for (int64_t d = 0; d < D; ++d) dst[d] = computed ? o[d] : 0.f;
  }
  if (p.lse != nullptr) p.lse[p.lse_rows.At(b, h, i)] = lse;
}

// softmax_max / softmax_sum of row (b, h, i), i the stored query position: the row's final max and sum,
// or -FLT_MAX / FLT_MAX for a row with no visible key.
inline void StoreSoftmaxStats(const Problem &p, int64_t b, int64_t h, int64_t i, bool computed, float m, float l) {
  const int64_t at = p.stats.rows.At(b, h, i);
  const float max = computed ? m : -FLT_MAX, sum = computed ? l : FLT_MAX;
  for (int64_t x = 0; x < kStatsWidth; ++x) {
    p.stats.max[at + x] = max;
    p.stats.sum[at + x] = sum;
  }
}

// Zero output and +inf lse for the stored query positions outside every batch's window (rows past the actual
// length, left padding). Only for dense layouts, where batch b owns positions [0, Sq) of its own rows.
inline void ClearRowsOutsideWindows(const Problem &p) {
  const int64_t D = p.D;
  const size_t bytes = p.post_quant.enabled() ? 1 : p.out_dtype == abi::kFloat32 ? 4 : 2;
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t i = 0; i < p.Sq; ++i) {
      if (i >= p.q_start[b] && i < p.q_start[b] + p.q_len[b]) continue;
      for (int64_t h = 0; h < p.N; ++h) {
        std::memset(static_cast<char *>(p.out) + p.out_rows.At(b, h, i) * bytes, 0, D * bytes);
        if (p.lse != nullptr) p.lse[p.lse_rows.At(b, h, i)] = INFINITY;
      }
    }
  }
}

}  // namespace msa
