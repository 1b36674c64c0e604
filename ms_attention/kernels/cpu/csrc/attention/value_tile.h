// The value side of a tile: acc[r] = acc[r] * correction[r] + sum_j p[r][j] * v_j, for a group of query rows.
//
// The values stay in their storage type and are widened in registers; each loaded value vector serves
// every row of the block, and a block's slice of the accumulators stays in registers for the whole tile
// (one load and one store of acc per tile instead of one per key). From kPackMinRows rows on (prefill) the value
// tile is first widened to float32 once (tile_pack.h), so the blocks read float32 rows with no conversion.
#pragma once

#include <algorithm>
#include <cstdint>

#include "attention/bf16_dot.h"
#include "attention/simd.h"
#include "attention/tile_pack.h"

namespace msa {
namespace detail {

#if defined(MSA_SIMD)
// MR rows x NC vectors of acc starting at column d0; kTail: a single vector holding only `tail` columns.
template <class E, int MR, int NC, bool kTail>
inline void ValueBlock(float *acc, int64_t lda, const float *corr, const float *p, int64_t ldp,
                       const E *const *v, int64_t n, int64_t d0, int tail) {
  using namespace simd;
  static_assert(!kTail || NC == 1, "a tail block is one vector");
  Vec a[MR * NC];
  for (int r = 0; r < MR; ++r) {
    const Vec c = Set1(corr[r]);
    const bool rescale = corr[r] != 1.f;  // mostly 1 once a row's max has settled: skip the multiplies
    for (int i = 0; i < NC; ++i) {
      const float *src = acc + r * lda + d0 + i * kWidth;
      const Vec x = kTail ? Load(src, tail) : Load(src);
      a[r * NC + i] = rescale ? Mul(x, c) : x;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    Vec pj[MR];
    for (int r = 0; r < MR; ++r) pj[r] = Set1(p[r * ldp + j]);
    const E *row = v[j] + d0;
    for (int i = 0; i < NC; ++i) {
      const Vec x = InRegister(kTail ? Load(row, tail) : Load(row + i * kWidth));
      for (int r = 0; r < MR; ++r) a[r * NC + i] = Fma(pj[r], x, a[r * NC + i]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int i = 0; i < NC; ++i) {
      float *dst = acc + r * lda + d0 + i * kWidth;
      if (kTail) {
        Store(dst, a[r * NC + i], tail);
      } else {
        Store(dst, a[r * NC + i]);
      }
    }
  }
}

template <class E, int MR, int NC>
inline void ValueRows(float *acc, int64_t lda, const float *corr, const float *p, int64_t ldp, const E *const *v,
                      int64_t n, int64_t D) {
  constexpr int W = simd::kWidth;
  int64_t d = 0;
  for (; d + NC * W <= D; d += NC * W) ValueBlock<E, MR, NC, false>(acc, lda, corr, p, ldp, v, n, d, W);
  for (; d + W <= D; d += W) ValueBlock<E, MR, 1, false>(acc, lda, corr, p, ldp, v, n, d, W);
  if (d < D) ValueBlock<E, MR, 1, true>(acc, lda, corr, p, ldp, v, n, d, static_cast<int>(D - d));
}
#endif

#if defined(MSA_BF16_PAIRS)
// The probabilities of a chunk of 32 keys as pairs, per row: kLoPairs hi pairs then kLoPairs lo pairs
// (bf16::SplitRowToPairs: p = hi + lo to about 16 bits).
constexpr int64_t kLoPairs = 16;
constexpr int64_t kSplitPairs = 2 * kLoPairs;  // uint32 per row

// ValueBlock for bfloat16 values, two keys per vdpbf16ps: the rows of keys j and j + 1 are interleaved into
// (v_j[d], v_j+1[d]) pairs in registers and dotted with the broadcast pairs (p_j, p_j+1) of each row, hi and
// lo. MR rows x NC vectors of 16 columns (NC even: whole 32-column chunks of a value row) from column d0;
// kTail: one chunk of `tail` < 32 columns (NC == 2). pp[r * ldpp + t] (+ kLoPairs for lo): the pair of keys
// 2t, 2t + 1 of row r (0 after an odd n). corr == nullptr: no rescale.
template <int MR, int NC, bool kTail>
inline void ValueBlockPairs(float *acc, int64_t lda, const float *corr, const uint32_t *pp, int64_t ldpp,
                            const BFloat16 *const *v, int64_t n, int64_t d0, int tail) {
  using namespace simd;
  static_assert(NC % 2 == 0 && (!kTail || NC == 2), "whole 32-column chunks; a tail is one chunk");
  auto columns = [tail](int i) { return kTail ? std::min(16, std::max(0, tail - 16 * i)) : 16; };
  Vec a[MR * NC];
  for (int r = 0; r < MR; ++r) {
    for (int i = 0; i < NC; ++i) {
      const float *src = acc + r * lda + d0 + i * kWidth;
      Vec x = kTail ? (columns(i) > 0 ? Load(src, columns(i)) : Zero()) : Load(src);
      if (corr != nullptr && corr[r] != 1.f) x = Mul(x, Set1(corr[r]));
      a[r * NC + i] = x;
    }
  }
  auto step = [&](int64_t j, const BFloat16 *second) {
    bf16::Pairs w[MR], w_lo[MR];
    for (int r = 0; r < MR; ++r) {
      w[r] = bf16::BroadcastPair(pp[r * ldpp + j / 2]);
      w_lo[r] = bf16::BroadcastPair(pp[r * ldpp + kLoPairs + j / 2]);
    }
    for (int c = 0; c < NC / 2; ++c) {
      const int64_t at = d0 + 32 * c;
      const bf16::Pairs x = kTail ? bf16::LoadPairs(v[j] + at, tail) : bf16::LoadPairs(v[j] + at);
      const bf16::Pairs y = second == nullptr ? _mm512_setzero_si512()
                            : kTail           ? bf16::LoadPairs(second + at, tail)
                                              : bf16::LoadPairs(second + at);
      bf16::Pairs lo, hi;
      bf16::InterleaveRows(x, y, &lo, &hi);
      for (int r = 0; r < MR; ++r) {
        a[r * NC + 2 * c] = bf16::DotPairs(bf16::DotPairs(a[r * NC + 2 * c], lo, w[r]), lo, w_lo[r]);
        a[r * NC + 2 * c + 1] = bf16::DotPairs(bf16::DotPairs(a[r * NC + 2 * c + 1], hi, w[r]), hi, w_lo[r]);
      }
    }
  };
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) step(j, v[j + 1]);
  if (j < n) step(j, nullptr);
  for (int r = 0; r < MR; ++r) {
    for (int i = 0; i < NC; ++i) {
      float *dst = acc + r * lda + d0 + i * kWidth;
      if (!kTail) {
        Store(dst, a[r * NC + i]);
      } else if (columns(i) > 0) {
        Store(dst, a[r * NC + i], columns(i));
      }
    }
  }
}

// Packed pairs (many rows, prefill): acc[r][d0, + NC * 16) = acc * corr + sum_t pp[r][t] . vp[t][d] for the
// `pairs` key pairs of a tile, vp[t * ldv + d] = (v_2t[d], v_2t+1[d]) (InterleaveRowPairs). kTail: one vector of
// `tail` < 16 columns (NC == 1).
template <int MR, int NC, bool kTail>
inline void ValueBlockPacked(float *acc, int64_t lda, const float *corr, const uint32_t *pp, int64_t ldpp,
                             const uint32_t *vp, int64_t ldv, int64_t pairs, int64_t d0, int tail) {
  using namespace simd;
  static_assert(!kTail || NC == 1, "a tail block is one vector");
  Vec a[MR * NC];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const bool rescale = corr != nullptr && corr[r] != 1.f;
#pragma GCC unroll 8
    for (int i = 0; i < NC; ++i) {
      const float *src = acc + r * lda + d0 + i * kWidth;
      const Vec x = kTail ? Load(src, tail) : Load(src);
      a[r * NC + i] = rescale ? Mul(x, Set1(corr[r])) : x;
    }
  }
  for (int64_t t = 0; t < pairs; ++t) {
    bf16::Pairs w[MR], w_lo[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      w[r] = bf16::BroadcastPair(pp[r * ldpp + t]);
      w_lo[r] = bf16::BroadcastPair(pp[r * ldpp + kLoPairs + t]);
    }
    const uint32_t *row = vp + t * ldv + d0;
#pragma GCC unroll 8
    for (int i = 0; i < NC; ++i) {
      const bf16::Pairs x = bf16::InRegister(kTail ? _mm512_maskz_loadu_epi32(simd::FirstN(tail), row)
                                                   : bf16::LoadPairs(row + i * 16));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) a[r * NC + i] = bf16::DotPairs(bf16::DotPairs(a[r * NC + i], x, w[r]), x, w_lo[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int i = 0; i < NC; ++i) {
      float *dst = acc + r * lda + d0 + i * kWidth;
      if (kTail) {
        Store(dst, a[r * NC + i], tail);
      } else {
        Store(dst, a[r * NC + i]);
      }
    }
  }
}

template <int MR, int NC>
inline void ValueRowsPacked(float *acc, int64_t lda, const float *corr, const uint32_t *pp, int64_t ldpp,
                            const uint32_t *vp, int64_t pairs, int64_t D) {
  int64_t d = 0;
  for (; d + NC * 16 <= D; d += NC * 16) ValueBlockPacked<MR, NC, false>(acc, lda, corr, pp, ldpp, vp, D, pairs, d, 16);
  for (; d + 16 <= D; d += 16) ValueBlockPacked<MR, 1, false>(acc, lda, corr, pp, ldpp, vp, D, pairs, d, 16);
  if (d < D) ValueBlockPacked<MR, 1, true>(acc, lda, corr, pp, ldpp, vp, D, pairs, d, static_cast<int>(D - d));
}

template <int MR, int NC>
inline void ValueRowsPairs(float *acc, int64_t lda, const float *corr, const uint32_t *pp, int64_t ldpp,
                           const BFloat16 *const *v, int64_t n, int64_t D) {
  int64_t d = 0;
  for (; d + NC * 16 <= D; d += NC * 16) ValueBlockPairs<MR, NC, false>(acc, lda, corr, pp, ldpp, v, n, d, 32);
  for (; d + 32 <= D; d += 32) ValueBlockPairs<MR, 2, false>(acc, lda, corr, pp, ldpp, v, n, d, 32);
  if (d < D) ValueBlockPairs<MR, 2, true>(acc, lda, corr, pp, ldpp, v, n, d, static_cast<int>(D - d));
}
#endif

}  // namespace detail

#if defined(MSA_BF16_PAIRS)
constexpr int64_t kPairRowsMax = 16;  // AccumulateTilePairs takes fewer rows than this (decode: in place)

// AccumulateTile for bfloat16 values in pairs of keys (vdpbf16ps), the probabilities as the sum of two bfloat16
// (hi + lo): acc[r * lda, + D) = acc * corr[r] + sum_{j < n} (hi + lo)(p[r * ldp + j]) * v[j][0, D), rows < 16.
// (P rounded to one bfloat16, as SPEC §2.4 allows, puts ~10 % of the outputs of the bf16 numeric tests outside
// their tolerance: the products p_j * v_j of a row cancel, and their rounding errors do not.)
inline void AccumulateTilePairs(float *acc, int64_t lda, int64_t rows, const float *corr, const float *p,
                                int64_t ldp, const BFloat16 *const *v, int64_t n, int64_t D);

// AccumulateTilePairs for any number of rows: from kPackMinRows rows on (prefill) the value rows are interleaved
// into key pairs once per tile and the probabilities rounded once, then every row block reads them packed.
inline void AccumulateTileManyPairs(float *acc, int64_t lda, int64_t rows, const float *corr, const float *p,
                                    int64_t ldp, const BFloat16 *const *v, int64_t n, int64_t D) {
  constexpr int64_t kChunk = 32;  // keys per packed chunk
  const int64_t ldpp = detail::kSplitPairs;
  uint32_t *vp = rows >= detail::kPackMinRows ? reinterpret_cast<uint32_t *>(detail::TileBuffer(1, kChunk / 2 * D)) : nullptr;
  uint32_t *pp = vp != nullptr ? reinterpret_cast<uint32_t *>(detail::TileBuffer(2, rows * ldpp)) : nullptr;
  if (pp == nullptr) {  // few rows, or no buffer: in place, in groups of rows AccumulateTilePairs takes
    for (int64_t r = 0; r < rows; r += kPairRowsMax - 1) {
      AccumulateTilePairs(acc + r * lda, lda, std::min(kPairRowsMax - 1, rows - r), corr + r, p + r * ldp, ldp, v, n, D);
    }
    return;
  }
  constexpr int MR = detail::kValueRows, NC = detail::kValueVectors;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t nn = std::min(kChunk, n - j0), pairs = (nn + 1) / 2;
    for (int64_t t = 0; t < pairs; ++t) {
      bf16::InterleaveRowPairs(v[j0 + 2 * t], 2 * t + 1 < nn ? v[j0 + 2 * t + 1] : nullptr, D, vp + t * D);
    }
    for (int64_t r = 0; r < rows; ++r) {
      bf16::SplitRowToPairs(p + r * ldp + j0, nn, pp + r * ldpp, pp + r * ldpp + detail::kLoPairs);
    }
    const float *c = j0 == 0 ? corr : nullptr;  // the rescale goes with the first chunk
    int64_t r = 0;
    for (; r + MR <= rows; r += MR) {
      detail::ValueRowsPacked<MR, NC>(acc + r * lda, lda, c ? c + r : nullptr, pp + r * ldpp, ldpp, vp, pairs, D);
    }
    for (; r + 2 <= rows; r += 2) {
      detail::ValueRowsPacked<2, NC>(acc + r * lda, lda, c ? c + r : nullptr, pp + r * ldpp, ldpp, vp, pairs, D);
    }
    if (r < rows) {
      detail::ValueRowsPacked<1, NC>(acc + r * lda, lda, c ? c + r : nullptr, pp + r * ldpp, ldpp, vp, pairs, D);
    }
  }
}

inline void AccumulateTilePairs(float *acc, int64_t lda, int64_t rows, const float *corr, const float *p,
                                int64_t ldp, const BFloat16 *const *v, int64_t n, int64_t D) {
  constexpr int64_t kChunk = 32;  // keys whose probabilities are rounded at once
  alignas(64) uint32_t pp[kPairRowsMax * detail::kSplitPairs];
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t nn = std::min(kChunk, n - j0);
    constexpr int64_t ld = detail::kSplitPairs;
    for (int64_t r = 0; r < rows; ++r) {
      bf16::SplitRowToPairs(p + r * ldp + j0, nn, pp + r * ld, pp + r * ld + detail::kLoPairs);
    }
    const float *c = j0 == 0 ? corr : nullptr;  // the rescale goes with the first chunk
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      detail::ValueRowsPairs<4, 4>(acc + r * lda, lda, c ? c + r : nullptr, pp + r * ld, ld, v + j0, nn, D);
    }
    float *a = acc + r * lda;
    const float *cr = c ? c + r : nullptr;
    const uint32_t *q = pp + r * ld;
    switch (rows - r) {
      case 1: detail::ValueRowsPairs<1, 8>(a, lda, cr, q, ld, v + j0, nn, D); break;
      case 2: detail::ValueRowsPairs<2, 8>(a, lda, cr, q, ld, v + j0, nn, D); break;
      case 3: detail::ValueRowsPairs<3, 4>(a, lda, cr, q, ld, v + j0, nn, D); break;
      default: break;
    }
  }
}
#endif

// acc[r * lda, + D) = acc * corr[r] + sum_{j < n} p[r * ldp + j] * v[j][0, D), for r < rows. row_scratch
// (D floats) is used only without SIMD, where each value row is widened once and added to every row.
template <class E>
inline void AccumulateTile(float *acc, int64_t lda, int64_t rows, const float *corr, const float *p, int64_t ldp,
                           const E *const *v, int64_t n, int64_t D, float *row_scratch) {
#if defined(MSA_SIMD)
  (void)row_scratch;
  float *vw = rows >= detail::kPackMinRows && n <= detail::kPackKeys ? detail::TileBuffer(1, n * D) : nullptr;
  if (vw != nullptr) {  // values widened once, then read as float32 by every row block
    const float *vrows[detail::kPackKeys];
    detail::WidenValues(v, n, D, vw, vrows);
    constexpr int MR = detail::kValueRows, NC = detail::kValueVectors;
    int64_t r = 0;
    for (; r + MR <= rows; r += MR) {
      detail::ValueRows<float, MR, NC>(acc + r * lda, lda, corr + r, p + r * ldp, ldp, vrows, n, D);
    }
    for (; r + 2 <= rows; r += 2) {
      detail::ValueRows<float, 2, NC>(acc + r * lda, lda, corr + r, p + r * ldp, ldp, vrows, n, D);
    }
    if (r < rows) detail::ValueRows<float, 1, NC>(acc + r * lda, lda, corr + r, p + r * ldp, ldp, vrows, n, D);
    return;
  }
  // Register budget per block: MR * NC accumulators plus MR broadcast weights and one value vector.
  constexpr int kAcc = simd::kWidth;  // 16 accumulators with AVX-512 (32 registers), 8 with AVX2 (16)
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    detail::ValueRows<E, 4, kAcc / 4>(acc + r * lda, lda, corr + r, p + r * ldp, ldp, v, n, D);
  }
  acc += r * lda;
  corr += r;
  p += r * ldp;
  switch (rows - r) {
    case 1: detail::ValueRows<E, 1, kAcc / 2>(acc, lda, corr, p, ldp, v, n, D); break;
    case 2: detail::ValueRows<E, 2, kAcc / 2>(acc, lda, corr, p, ldp, v, n, D); break;
    case 3: detail::ValueRows<E, 3, kAcc / 4>(acc, lda, corr, p, ldp, v, n, D); break;
    default: break;
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    float *a = acc + r * lda;
    for (int64_t d = 0; d < D; ++d) a[d] *= corr[r];
  }
  for (int64_t j = 0; j < n; ++j) {
    simd::LoadRow(v[j], D, row_scratch);
    for (int64_t r = 0; r < rows; ++r) {
      const float w = p[r * ldp + j];
      float *a = acc + r * lda;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += w * row_scratch[d];
    }
  }
#endif
}

}  // namespace msa
