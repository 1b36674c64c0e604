// Scores of a tile: S[r][j] = q_r . k_j for a group of query rows (the G heads of a GQA group, times the query
// positions of a block) and a tile of keys, as a small GEMM.
//
// The query rows are float32 (already scaled); the keys stay in their storage type (float16, bfloat16, int8)
// and are widened in registers as they are loaded, each key vector serving every query row of the block.
// A block of MR rows x NR keys keeps its MR * NR partial sums in vector registers over the whole head dim,
// then reduces them all at once (simd::SumEach) when MR * NR is a full vector's worth. That is the path of few
// rows (decode); from kPackMinRows rows on (prefill) the key tile is packed once and the scores computed as an
// outer-product micro-GEMM instead (tile_pack.h).
#pragma once

#include <cstdint>

#include "attention/bf16_dot.h"
#include "attention/simd.h"
#include "attention/tile_pack.h"

namespace msa {
namespace detail {

#if defined(MSA_SIMD)
template <class E, int MR, int NR>
inline void ScoreBlock(const float *q, int64_t ldq, const E *const *k, int64_t D, float *s, int64_t lds) {
  using namespace simd;
  Vec acc[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR * NR; ++i) acc[i] = Zero();
  int64_t d = 0;
  for (; d + kWidth <= D; d += kWidth) {
    Vec qv[MR];  // in registers: each serves NR keys (folded into the FMAs it would be loaded NR times)
    for (int r = 0; r < MR; ++r) qv[r] = InRegister(Load(q + r * ldq + d));
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const Vec kv = Load(k[j] + d);
      for (int r = 0; r < MR; ++r) acc[r * NR + j] = Fma(qv[r], kv, acc[r * NR + j]);
    }
  }
  if (d < D) {
    const int n = static_cast<int>(D - d);
    Vec qv[MR];
    for (int r = 0; r < MR; ++r) qv[r] = Load(q + r * ldq + d, n);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const Vec kv = Load(k[j] + d, n);
      for (int r = 0; r < MR; ++r) acc[r * NR + j] = Fma(qv[r], kv, acc[r * NR + j]);
    }
  }
  if constexpr (MR * NR == kWidth) {
    alignas(64) float sums[kWidth];
    Store(sums, SumEach(acc));
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) s[r * lds + j] = sums[r * NR + j];
    }
  } else {
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) s[r * lds + j] = ReduceAdd(acc[r * NR + j]);
    }
  }
}

template <class E, int MR, int NR>
inline void ScoreRows(const float *q, int64_t ldq, const E *const *k, int64_t n, int64_t D, float *s,
                      int64_t lds) {
  int64_t j = 0;
  for (; j + NR <= n; j += NR) ScoreBlock<E, MR, NR>(q, ldq, k + j, D, s + j, lds);
  for (; j < n; ++j) ScoreBlock<E, MR, 1>(q, ldq, k + j, D, s + j, lds);
}
#endif

#if defined(MSA_BF16_PAIRS)
// ScoreBlock for bfloat16 query rows and keys, in pairs (vdpbf16ps): no widening, half the multiply-adds.
// The query rows are zero-padded to a multiple of 32 values, the keys' last chunk is a masked load.
template <int MR, int NR>
inline void ScoreBlockPairs(const BFloat16 *q, int64_t ldq, const BFloat16 *const *k, int64_t D, float scale,
                            float *s, int64_t lds) {
  using namespace simd;
  Vec acc[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR * NR; ++i) acc[i] = Zero();
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    bf16::Pairs qv[MR];
    for (int r = 0; r < MR; ++r) qv[r] = bf16::InRegister(bf16::LoadPairs(q + r * ldq + d));
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const bf16::Pairs kv = bf16::LoadPairs(k[j] + d);
      for (int r = 0; r < MR; ++r) acc[r * NR + j] = bf16::DotPairs(acc[r * NR + j], qv[r], kv);
    }
  }
  if (d < D) {
    bf16::Pairs qv[MR];
    for (int r = 0; r < MR; ++r) qv[r] = bf16::LoadPairs(q + r * ldq + d);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const bf16::Pairs kv = bf16::LoadPairs(k[j] + d, D - d);
      for (int r = 0; r < MR; ++r) acc[r * NR + j] = bf16::DotPairs(acc[r * NR + j], qv[r], kv);
    }
  }
  if constexpr (MR * NR == kWidth) {
    alignas(64) float sums[kWidth];
    Store(sums, Mul(SumEach(acc), Set1(scale)));
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) s[r * lds + j] = sums[r * NR + j];
    }
  } else {
    for (int r = 0; r < MR; ++r) {
      for (int j = 0; j < NR; ++j) s[r * lds + j] = ReduceAdd(acc[r * NR + j]) * scale;
    }
  }
}

// Packed pair panels (many rows, prefill): s[r][j] = (q_r . k_j) * scale for MR rows and the keys of two panels
// of 16 (PackPairsTransposed), n <= 32 of them; per pair of head-dim values, a broadcast query pair times
// each panel's vector: no horizontal reduction.
template <int MR>
inline void ScorePanelPairs(const BFloat16 *q, int64_t ldq, const uint32_t *k0, const uint32_t *k1, int64_t pairs,
                            float scale, int64_t n, float *s, int64_t lds) {
  using namespace simd;
  Vec a0[MR], a1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = Zero();
  for (int64_t e = 0; e < pairs; ++e) {
    const bf16::Pairs x0 = bf16::LoadPairs(k0 + e * 16), x1 = bf16::LoadPairs(k1 + e * 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const bf16::Pairs qp = bf16::BroadcastPair(q + r * ldq + 2 * e);
      a0[r] = bf16::DotPairs(a0[r], qp, x0);
      a1[r] = bf16::DotPairs(a1[r], qp, x1);
    }
  }
  const Vec sv = Set1(scale);
  for (int r = 0; r < MR; ++r) {
    if (n >= 32) {
      Store(s + r * lds, Mul(a0[r], sv));
      Store(s + r * lds + 16, Mul(a1[r], sv));
    } else if (n > 16) {
      Store(s + r * lds, Mul(a0[r], sv));
      Store(s + r * lds + 16, Mul(a1[r], sv), static_cast<int>(n - 16));
    } else {
      Store(s + r * lds, Mul(a0[r], sv), static_cast<int>(n));
    }
  }
}

template <int MR>
inline void ScorePanelPairsTail(const BFloat16 *q, int64_t ldq, int64_t rows, const uint32_t *k0, const uint32_t *k1,
                                int64_t pairs, float scale, int64_t n, float *s, int64_t lds) {
  if constexpr (MR > 0) {
    if (rows == MR) {
      ScorePanelPairs<MR>(q, ldq, k0, k1, pairs, scale, n, s, lds);
    } else {
      ScorePanelPairsTail<MR - 1>(q, ldq, rows, k0, k1, pairs, scale, n, s, lds);
    }
  }
}

template <int MR, int NR>
inline void ScoreRowsPairs(const BFloat16 *q, int64_t ldq, const BFloat16 *const *k, int64_t n, int64_t D,
                           float scale, float *s, int64_t lds) {
  int64_t j = 0;
  for (; j + NR <= n; j += NR) ScoreBlockPairs<MR, NR>(q, ldq, k + j, D, scale, s + j, lds);
  for (; j < n; ++j) ScoreBlockPairs<MR, 1>(q, ldq, k + j, D, scale, s + j, lds);
}
#endif

}  // namespace detail

#if defined(MSA_BF16_PAIRS)
// s[r * lds + j] = (q_r . k_j) * scale for bfloat16 query rows (raw, not scaled: each product is exact) and
// keys, r < rows, j < n. Query rows hold D values zero-padded to a multiple of 32 (ldq >= that). From
// kPackMinRows rows on the keys are packed into pair panels (outer-product micro-GEMM), below read in place.
inline void ScoreTilePairs(const BFloat16 *q, int64_t ldq, int64_t rows, const BFloat16 *const *k, int64_t n,
                           int64_t D, float scale, float *s, int64_t lds) {
  constexpr int W = simd::kWidth;
  const int64_t pairs = (D + 1) / 2;
  uint32_t *panel = rows >= detail::kPackMinRows
                        ? reinterpret_cast<uint32_t *>(detail::TileBuffer(0, 32 * pairs))
                        : nullptr;
  if (panel != nullptr) {  // many rows: keys packed into pair panels once, then an outer-product micro-GEMM
    constexpr int MR = detail::kScorePanelRows;
    for (int64_t j = 0; j < n; j += 32) {
      const int64_t nj = std::min<int64_t>(32, n - j);
      bf16::PackPairsTransposed(k + j, std::min<int64_t>(16, nj), D, panel);
      bf16::PackPairsTransposed(k + j + std::min<int64_t>(16, nj), std::max<int64_t>(0, nj - 16), D, panel + 16 * pairs);
      int64_t r = 0;
      for (; r + MR <= rows; r += MR) {
        detail::ScorePanelPairs<MR>(q + r * ldq, ldq, panel, panel + 16 * pairs, pairs, scale, nj, s + r * lds + j,
                                    lds);
      }
      if (r < rows) {
        detail::ScorePanelPairsTail<MR - 1>(q + r * ldq, ldq, rows - r, panel, panel + 16 * pairs, pairs, scale, nj,
                                            s + r * lds + j, lds);
      }
    }
    return;
  }
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) detail::ScoreRowsPairs<4, W / 4>(q + r * ldq, ldq, k, n, D, scale, s + r * lds, lds);
  q += r * ldq;
  s += r * lds;
  switch (rows - r) {
    case 1: detail::ScoreRowsPairs<1, W>(q, ldq, k, n, D, scale, s, lds); break;
    case 2: detail::ScoreRowsPairs<2, W / 2>(q, ldq, k, n, D, scale, s, lds); break;
    case 3: detail::ScoreRowsPairs<3, W / 4>(q, ldq, k, n, D, scale, s, lds); break;
    default: break;
  }
}
#endif

// s[r * lds + j] = q[r * ldq, + D) . k[j][0, D) for r < rows, j < n. row_scratch (D floats) is used only
// without SIMD, where each key row is widened once and then dotted with every query row.
template <class E>
inline void ScoreTile(const float *q, int64_t ldq, int64_t rows, const E *const *k, int64_t n, int64_t D,
                      float *s, int64_t lds, float *row_scratch) {
#if defined(MSA_SIMD)
  (void)row_scratch;
  if (rows >= detail::kPackMinRows) {
    if (float *kt = detail::TileBuffer(0, D * detail::kPackKeys)) {
      detail::ScoreTilePacked(q, ldq, rows, k, n, D, s, lds, kt);
      return;
    }
  }
  constexpr int W = simd::kWidth;  // accumulators per block: one vector's worth, reduced together
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) detail::ScoreRows<E, 4, W / 4>(q + r * ldq, ldq, k, n, D, s + r * lds, lds);
  q += r * ldq;
  s += r * lds;
  switch (rows - r) {
    case 1: detail::ScoreRows<E, 1, W>(q, ldq, k, n, D, s, lds); break;
    case 2: detail::ScoreRows<E, 2, W / 2>(q, ldq, k, n, D, s, lds); break;
    case 3: detail::ScoreRows<E, 3, W / 4>(q, ldq, k, n, D, s, lds); break;
    default: break;
  }
#else
  for (int64_t j = 0; j < n; ++j) {
    simd::LoadRow(k[j], D, row_scratch);
    for (int64_t r = 0; r < rows; ++r) {
      const float *qr = q + r * ldq;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += qr[d] * row_scratch[d];
      s[r * lds + j] = sum;
    }
  }
#endif
}

}  // namespace msa
