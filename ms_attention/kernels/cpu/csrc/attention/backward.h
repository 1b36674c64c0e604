// The flash-attention backward of training attention (flash_attention_score / speed_fusion_attention grad).
//
// P is recomputed from the forward's softmax_max / softmax_sum, with the forward's own score terms
// (score_terms.h: visibility, pse / ALiBi, dropout keep bit), and the gradients follow the standard flash
// backward, with Pd = P * Z / keep_prob and Dsum_i = dO_i . O_i:
//   dV_j += sum_i Pd_ij dO_i,  dP_ij = (dO_i . v_j) * Z_ij / keep_prob,  dS_ij = P_ij (dP_ij - Dsum_i),
//   dQ_i += scale * sum_j dS_ij k_j,  dK_j += scale * sum_i dS_ij q_i,  dpse += factor * dS_ij.
//
// A unit of work is a (batch, KV head) with all G query heads of that KV head, so dK / dV of its keys are
// written by it alone (no atomics). When the pse is broadcast over the batch, a unit is one KV head looping over
// the batches, so dpse's elements are summed by one thread. A unit walks its keys in blocks of kGradKeys; for
// each block, the query row blocks that see some of its keys (band / causal skipping) in blocks of about
// kGradRows rows (positions x G heads, the forward's row order). Each (key block, row block) tile is held
// key-major (keys x rows, rows contiguous), which makes every product a register-blocked micro-GEMM of
// tile_pack.h / value_tile.h:
//   S^T = K (scale Q)^T and dPd^T = V dO^T   (ScorePanel: the rows packed transposed in panels),
//   dV += Pd^T dO and dK += dS^T (scale Q)   (ValueRows: key rows accumulate, weights P^T / dS^T),
//   dQ += dS K, times scale when stored      (ValueRows on the transposed dS tile).
// A unit first gathers its rows' queries (times scale) and output gradients, widened, into contiguous scratch:
// every key block reads them again. dQ accumulates in float32 scratch (the unit's rows x D), dK / dV per key
// block; nothing is S x S. dpse
// accumulates in a float32 buffer of the pse's size (the pse itself when it is float32), converted at the end.
// All scratch is allocated once per call, before the parallel region.
// bfloat16 on a CPU with AVX512_BF16 takes its own unit (GradUnitBf16, below): the same tiles, with vdpbf16ps
// micro-GEMMs on bf16 operands instead of the widened float32 ones.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention/bf16_dot.h"
#include "attention/numeric.h"
#include "attention/problem.h"
#include "attention/score_terms.h"
#include "attention/simd.h"
#include "attention/softmax.h"
#include "attention/tile_pack.h"
#include "attention/value_tile.h"
#include "parallel.h"

namespace msa {

// The backward's tensors beyond the forward's Problem (whose query / key / value / pse / mask / band / dropout /
// stats describe the forward call): dy and the forward's output in the query's shape and layout (q_rows), and
// the gradients, each in the shape, layout and dtype of its input (dq: q_rows, dk / dv: kv.rows).
struct GradTensors {
  const void *dy = nullptr, *out = nullptr;  // q_dtype, q_numel elements each
  void *dq = nullptr;                        // q_dtype, q_numel elements
  void *dk = nullptr, *dv = nullptr;         // kv.dtype, kv.numel elements each
  // dpse: pse's dtype and size (bias.numel elements at BiasOffset) with a pse tensor; with ALiBi slopes zeros of
  // dpse_numel elements; null when there is no pse.
  void *dpse = nullptr;
  DType dpse_dtype = kUnknownDType;
  int64_t dpse_numel = 0;
};

namespace detail {

constexpr int64_t kGradKeys = 48;   // keys per block: a multiple of the score panel's rows (12, or 6 with AVX2)
constexpr int64_t kGradRows = 64;   // query rows per block (positions x G heads), before rounding to panels
constexpr int64_t kGradPanel = 32;  // row blocks are padded to a multiple of this (>= any packed panel width)

#if defined(MSA_SIMD)
static_assert(kGradKeys % kScorePanelRows == 0, "a key block is whole score panels");
static_assert(kGradPanel % kPackKeys == 0 && kGradPanel % simd::kWidth == 0, "row panels are whole vectors");
static_assert(kGradKeys % simd::kWidth == 0, "key blocks transpose in whole vectors");
#endif

// Element type helpers: a row widened to float32 (times a factor), a float32 row rounded to the storage type.
template <class E>
inline void WidenRow(const E *src, int64_t n, float factor, float *dst) {
  simd::LoadRow(src, n, dst);
  if (factor != 1.f) {
    for (int64_t d = 0; d < n; ++d) dst[d] *= factor;
  }
}
inline void StoreRow(const float *src, int64_t n, float *dst) { std::memcpy(dst, src, n * sizeof(float)); }
inline void StoreRow(const float *src, int64_t n, Half *dst) {
  for (int64_t d = 0; d < n; ++d) dst[d].bits = FloatToHalf(src[d]);
}
inline void StoreRow(const float *src, int64_t n, BFloat16 *dst) {
  for (int64_t d = 0; d < n; ++d) dst[d].bits = FloatToBF16(src[d]);
}

// One thread's working memory (floats), carved from one buffer; R is the padded row block, M the most rows
// (positions x G) of a unit's batch.
struct GradScratch {
  float *kw, *vw;           // kGradKeys x D: the key and value block (widened)
  float *dk, *dv;           // kGradKeys x D: accumulators of the key block
  float *qt, *dot;          // R x D: the row block's queries and output gradients packed transposed
  float *st, *dpt;          // kGradKeys x R: S^T -> Pd^T, dPd^T -> dS^T
  float *ds;                // R x kGradKeys: dS
  float *terms, *zt;        // kGradKeys x R: score terms (bias, -inf masked) and Z / keep_prob, key-major
  float *rm;                // R x kGradKeys: the row-major terms before their transpose
  float *bm, *bl, *bd;      // R: the row block's max, 1 / sum, Dsum (0 for padding rows)
  float *lo, *hi;           // R: first / last key of each row's band (floats, clamped to the block)
  float *ones;              // max(R, kGradKeys): unit corrections for ValueRows
  float *m, *inv_l, *dsum;  // M: per row of the unit's batch
  float *qa, *doa, *dq;     // M x D: the batch's queries times scale, output gradients (widened), dQ
  static constexpr int kArrays = 24;
  static int64_t Floats(int64_t R, int64_t M, int64_t D) {
    const int64_t K = kGradKeys;
    return 4 * K * D + 2 * R * D + 5 * K * R + 2 * R * K + 5 * R + std::max(R, K) + 3 * M + 3 * M * D +
           kArrays * 16;  // each array rounded up to 16 floats
  }
  GradScratch(float *base, int64_t R, int64_t M, int64_t D) {
    const int64_t K = kGradKeys;
    float *p = base;
    auto take = [&p](int64_t n) {
      float *at = p;
      p += (n + 15) / 16 * 16;  // keep every array 64-byte aligned relative to the base
      return at;
    };
    kw = take(K * D), vw = take(K * D), dk = take(K * D), dv = take(K * D);
    qt = take(R * D), dot = take(R * D);
    st = take(K * R), dpt = take(K * R), ds = take(R * K), terms = take(K * R), zt = take(K * R), rm = take(R * K);
    bm = take(R), bl = take(R), bd = take(R), lo = take(R), hi = take(R);
    ones = take(std::max(R, K));
    m = take(M), inv_l = take(M), dsum = take(M);
    qa = take(M * D), doa = take(M * D), dq = take(M * D);
    for (int64_t i = 0; i < std::max(R, K); ++i) ones[i] = 1.f;
  }
};

// ---- tile products --------------------------------------------------------------------------------------

// Rows [0, n) of a row block (pointers), packed for TileProducts: transposed in panels of kPackKeys rows,
// zero-padded to R rows (row-major, widened, without SIMD).
template <class E>
inline void PackRows(const E *const *rows, int64_t n, int64_t R, int64_t D, float *packed) {
#if defined(MSA_SIMD)
  for (int64_t r = 0; r < R; r += kPackKeys) {
    PackKeysTransposed(rows + std::min(r, n), std::max<int64_t>(0, std::min(kPackKeys, n - r)), D, packed + r * D);
  }
#else
  for (int64_t r = 0; r < R; ++r) {
    if (r < n) {
      simd::LoadRow(rows[r], D, packed + r * D);
    } else {
      std::fill(packed + r * D, packed + (r + 1) * D, 0.f);
    }
  }
#endif
}

// c[j * ldc + r] = a_j . b_r for keys j < m (a: rows of D floats) and every row r < R of a packed block.
inline void TileProducts(const float *a, int64_t m, const float *packed, int64_t R, int64_t D, float *c,
                         int64_t ldc) {
#if defined(MSA_SIMD)
  for (int64_t r = 0; r < R; r += kPackKeys) {
    const float *panel = packed + r * D;
    int64_t j = 0;
    for (; j + kScorePanelRows <= m; j += kScorePanelRows) {
      ScorePanel<kScorePanelRows>(a + j * D, D, panel, D, kPackKeys, c + j * ldc + r, ldc);
    }
    if (j < m) ScorePanelTail<kScorePanelRows - 1>(a + j * D, D, m - j, panel, D, kPackKeys, c + j * ldc + r, ldc);
  }
#else
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t r = 0; r < R; ++r) {
      const float *x = a + j * D, *y = packed + r * D;
      float sum = 0.f;
      for (int64_t d = 0; d < D; ++d) sum += x[d] * y[d];
      c[j * ldc + r] = sum;
    }
  }
#endif
}

// acc[r * D, + D) += sum_{k < n} w[r * ldw + k] * src[k][0, D) for r < rows.
inline void AccumulateProducts(float *acc, int64_t rows, const float *w, int64_t ldw, const float *const *src,
                               int64_t n, int64_t D, const float *ones) {
#if defined(MSA_SIMD)
  constexpr int MR = kValueRows, NC = kValueVectors;
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) ValueRows<float, MR, NC>(acc + r * D, D, ones, w + r * ldw, ldw, src, n, D);
  for (; r < rows; ++r) ValueRows<float, 1, NC>(acc + r * D, D, ones, w + r * ldw, ldw, src, n, D);
#else
  (void)ones;
  for (int64_t r = 0; r < rows; ++r) {
    float *a = acc + r * D;
    for (int64_t k = 0; k < n; ++k) {
      const float x = w[r * ldw + k];
      if (x == 0.f) continue;
      for (int64_t d = 0; d < D; ++d) a[d] += x * src[k][d];
    }
  }
#endif
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (multiples of the vector width with SIMD).
inline void TransposeTile(const float *src, int64_t lds, int64_t rows, int64_t cols, float *dst, int64_t ldd) {
#if defined(MSA_SIMD)
  constexpr int W = simd::kWidth;
  simd::Vec v[W];
  for (int64_t r = 0; r < rows; r += W) {
    for (int64_t c = 0; c < cols; c += W) {
      for (int i = 0; i < W; ++i) v[i] = simd::Load(src + (r + i) * lds + c);
      Transpose(v);
      for (int i = 0; i < W; ++i) simd::Store(dst + (c + i) * ldd + r, v[i]);
    }
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
#endif
}

// ---- the element-wise step of a tile ----------------------------------------------------------------------

#if defined(MSA_SIMD_AVX512)
inline simd::Vec KeepVisible(simd::Vec s, simd::Vec j, simd::Vec lo, simd::Vec hi) {
  const __mmask16 in = _mm512_cmp_ps_mask(j, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(j, hi, _CMP_LE_OQ);
  return _mm512_mask_blend_ps(in, simd::Set1(kNegInf), s);
}
#elif defined(MSA_SIMD_AVX2)
inline simd::Vec KeepVisible(simd::Vec s, simd::Vec j, simd::Vec lo, simd::Vec hi) {
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(j, lo, _CMP_GE_OQ), _mm256_cmp_ps(j, hi, _CMP_LE_OQ));
  return _mm256_blendv_ps(simd::Set1(kNegInf), s, in);
}
#endif

// What a tile applies to its scores: the terms tile (pse / ALiBi, and -inf where a mask or an open prefix decides
// visibility), the band from the rows' [lo, hi] (sc.lo / sc.hi), the dropout factors (sc.zt). None: every key is
// visible to every row.
struct TileSteps {
  bool terms = false, band = false, dropout = false;
};

// On keys [0, nk) x rows [0, R) of the tile: st (scale q.k) becomes Pd^T = P Z / keep_prob, dpt (dO . v) becomes
// dS^T = P (dP - Dsum). j0: the block's first key; row r's max / (1 / sum) / Dsum in sc.bm / sc.bl / sc.bd.
inline void TileGradients(const GradScratch &sc, int64_t R, int64_t nk, int64_t j0, TileSteps steps) {
  const bool dropout = steps.dropout;
#if defined(MSA_SIMD)
  using namespace simd;
  for (int64_t j = 0; j < nk; ++j) {
    float *s = sc.st + j * R, *dp = sc.dpt + j * R;
    const float *terms = sc.terms + j * R, *z = sc.zt + j * R;
    const Vec key = Set1(static_cast<float>(j0 + j));
    for (int64_t r = 0; r < R; r += kWidth) {
      Vec x = Load(s + r);
      if (steps.terms) x = Add(x, Load(terms + r));
      if (steps.band) x = KeepVisible(x, key, Load(sc.lo + r), Load(sc.hi + r));
      const Vec prob = Mul(Exp(Sub(x, Load(sc.bm + r))), Load(sc.bl + r));
      Vec dprob = Load(dp + r), kept = prob;
      if (dropout) {
        const Vec zr = Load(z + r);
        kept = Mul(prob, zr);
        dprob = Mul(dprob, zr);
      }
      Store(s + r, kept);
      Store(dp + r, Mul(prob, Sub(dprob, Load(sc.bd + r))));
    }
  }
#else
  for (int64_t j = 0; j < nk; ++j) {
    float *s = sc.st + j * R, *dp = sc.dpt + j * R;
    const float *terms = sc.terms + j * R, *z = sc.zt + j * R;
    const float key = static_cast<float>(j0 + j);
    for (int64_t r = 0; r < R; ++r) {
      float x = s[r];
      if (steps.terms) x += terms[r];
      if (steps.band && !(key >= sc.lo[r] && key <= sc.hi[r])) x = kNegInf;
      const float prob = x == kNegInf ? 0.f : std::exp(x - sc.bm[r]) * sc.bl[r];
      float dprob = dp[r], kept = prob;
      if (dropout) {
        kept = prob * z[r];
        dprob *= z[r];
      }
      s[r] = kept;
      dp[r] = prob * (dprob - sc.bd[r]);
    }
  }
#endif
}

// ---- a unit of work ---------------------------------------------------------------------------------------

struct GradPlan {
  int64_t block_pos = 1;   // query positions per row block
  int64_t R = 0;           // rows of a row block, padded to kGradPanel
  int64_t M = 0;           // the most rows (positions x G) of a batch
  bool terms = false;      // every tile needs the score terms (mask, pse, ALiBi); dropout is apart
  bool mask = false;       // a discard mask: visibility per element
  float *dpse = nullptr;   // float32 accumulator of dpse (pse's size), null when not computed
};

// ---- the score terms of a tile: pse / ALiBi, visibility, dropout ------------------------------------------

// row[t] = -inf for the keys j0 + t (t < nk) that row (b, h, i) does not see (score_terms.h's KeyVisible): the
// band as one range of keys plus the open prefix keys, the discard mask compared 16 bytes at a time.
inline void DiscardRow(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t nk, float *row) {
  const Band &band = p.band;
  if (band.enabled()) {
    // visible: keys [i + lo, i + hi] and keys below open_keys; t indexes the block
    const int64_t open = band.open_keys.empty() ? 0 : std::min(nk, std::max<int64_t>(0, band.open_keys[b] - j0));
    const int64_t first = std::max(open, std::min(nk, std::max<int64_t>(0, i + band.lo[b] - j0)));
    const int64_t last = std::max(open, std::min(nk, std::max<int64_t>(0, i + band.hi[b] - j0 + 1)));
    std::fill(row + open, row + first, kNegInf);
    std::fill(row + last, row + nk, kNegInf);
  }
  if (p.mask.data == nullptr || p.mask.additive) return;
  const uint8_t *mask = static_cast<const uint8_t *>(p.mask.data) + MaskOffset(p, b, h, i, j0);
  int64_t t = 0;
#if defined(MSA_SIMD_AVX512)
  for (; t < nk; t += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, nk - t));
    const __mmask16 in = simd::FirstN(n);
    const __mmask16 discard = _mm_mask_test_epi8_mask(in, _mm_maskz_loadu_epi8(in, mask + t), _mm_set1_epi8(-1));
    _mm512_mask_storeu_ps(row + t, discard, simd::Set1(kNegInf));
  }
#endif
  for (; t < nk; ++t) {
    if (mask[t] != 0) row[t] = kNegInf;
  }
}

#if defined(MSA_SIMD_AVX512) && defined(__AVX512DQ__)
// Mix64 on 8 lanes.
inline __m512i Mix64x8(__m512i x) {
  x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 30));
  x = _mm512_mullo_epi64(x, _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ull)));
  x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
  x = _mm512_mullo_epi64(x, _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull)));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}
#endif

// z[t] = Z / keep_prob of row (b, h, i), keys j0 + t (t < nk): score_terms.h's DropKeep, 64 bits of an explicit
// mask at a time, the generated hash 8 keys at a time.
inline void DropoutFactorsRow(const Dropout &d, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t nk, float *z) {
  const float kept = d.inv_keep;
  if (d.bits != nullptr) {
    const int64_t k0 = DropoutBitBase(d, b, h, i) + j0;
    for (int64_t t = 0; t < nk; t += 56) {  // 56 bits from 8 bytes whatever the first bit's offset
      const int64_t n = std::min<int64_t>(56, nk - t), first = (k0 + t) >> 3, last = (k0 + t + n - 1) >> 3;
      uint64_t bits = 0;
      std::memcpy(&bits, d.bits + first, static_cast<size_t>(last - first + 1));  // bytes the row owns
      bits >>= (k0 + t) & 7;
      for (int64_t u = 0; u < n; ++u) z[t + u] = ((bits >> u) & 1) ? kept : 0.f;
    }
    return;
  }
  const uint64_t row_key = DropoutRowKey(d, b, h, i), threshold = d.threshold;
  int64_t t = 0;
#if defined(MSA_SIMD_AVX512) && defined(__AVX512DQ__)
  const __m512i step = _mm512_set1_epi64(static_cast<long long>(0xA24BAED4963EE407ull));
  const __m512i lanes = _mm512_set_epi64(8, 7, 6, 5, 4, 3, 2, 1);  // j + 1 for j = j0 + t + lane
  const __m512i limit = _mm512_set1_epi64(static_cast<long long>(threshold));
  for (; t + 16 <= nk; t += 16) {
    __mmask16 keep = 0;
    for (int half = 0; half < 2; ++half) {
      const __m512i j1 = _mm512_add_epi64(lanes, _mm512_set1_epi64(j0 + t + 8 * half));
      const __m512i u = Mix64x8(_mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(row_key)),
                                                 _mm512_mullo_epi64(j1, step)));
      keep |= static_cast<__mmask16>(_mm512_cmplt_epu64_mask(_mm512_srli_epi64(u, 40), limit)) << (8 * half);
    }
    _mm512_storeu_ps(z + t, _mm512_maskz_mov_ps(keep, simd::Set1(kept)));
  }
#endif
  for (; t < nk; ++t) z[t] = GeneratedKeep(row_key, j0 + t, threshold) ? kept : 0.f;
}

// The score terms of a tile, key-major: with `terms`, sc.terms (pse / ALiBi, and -inf where the key is not
// visible when `visibility`); with dropout, sc.zt (Z / keep_prob). Computed row by row, then transposed. The
// tile's rows are rows [r0, r0 + nr) of the unit (row r: position r / G, head kh * G + r % G), padded to R;
// padding rows get 0, Z 0. Scratch: any scratch with K x R `terms` / `zt` and R x K `rm` (R and K multiples of
// the vector width).
// Returns false when `visibility` hides every key of the tile from every row (the tile adds nothing).
template <class Scratch>
inline bool TileTerms(const Problem &p, int64_t b, int64_t kh, int64_t r0, int64_t nr, int64_t R, int64_t j0,
                      int64_t nk, bool terms, bool visibility, const Scratch &sc) {
  const int64_t G = p.G, K = kGradKeys;
  bool seen = !visibility;
  if (terms) {
    for (int64_t r = 0; r < R; ++r) {
      float *row = sc.rm + r * K;
      std::fill(row, row + K, 0.f);
      if (r >= nr) continue;
      const int64_t h = kh * G + (r0 + r) % G, i = (r0 + r) / G;
      if (p.bias.data != nullptr) AddPseRow(p, b, h, i, j0, nk, row);
      if (p.alibi.enabled()) AddAlibiRow(p, b, h, i, j0, nk, row);
      if (visibility) {
        DiscardRow(p, b, h, i, j0, nk, row);
        for (int64_t t = 0; t < nk && !seen; ++t) seen = row[t] != kNegInf;
      }
    }
    if (!seen) return false;
    TransposeTile(sc.rm, K, R, K, sc.terms, R);
  }
  if (!p.dropout.enabled()) return true;
  for (int64_t r = 0; r < R; ++r) {
    float *row = sc.rm + r * K;
    std::fill(row, row + K, 0.f);
    if (r < nr) DropoutFactorsRow(p.dropout, b, kh * G + (r0 + r) % G, (r0 + r) / G, j0, nk, row);
  }
  TransposeTile(sc.rm, K, R, K, sc.zt, R);
  return true;
}

// dpse += factor * dS over the tile's elements (dS row-major in ds, kGradKeys per row; rows [r0, r0 + nr) of the
// unit), at the pse elements they read: a row's keys read consecutive elements (a compressed pse's shifted row 0
// included, up to its last column), as in AddPseRow.
inline void TileBiasGradient(const Problem &p, int64_t b, int64_t kh, int64_t r0, int64_t nr, int64_t j0, int64_t nk,
                             const float *ds, float *dpse) {
  const ScoreBias &bias = p.bias;
  const int64_t G = p.G;
  const float factor = bias.factor;
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t h = kh * G + (r0 + r) % G, i = (r0 + r) / G, shifted = i + bias.compressed_rows - p.q_len[b];
    int64_t n = nk, at = 0;
    if (bias.compressed_rows > 0 && shifted < 0) {  // row 0 from column j0 - shifted
      const int64_t col = j0 - shifted;
      n = std::max<int64_t>(0, std::min(nk, bias.cols - col));
      at = b * bias.batch + h * bias.head + col;
    } else {
      at = BiasOffset(p, b, h, i, j0);
    }
    simd::ScaleAdd(dpse + at, 1.f, ds + r * kGradKeys, factor, n);
  }
}

// How the band acts on the tile of keys [j0, jl] and query positions [i0, il] of batch b: not at all (0), through
// each row's [lo, hi] (1), or per element (2: a band edge crosses the tile with open prefix keys in it, where a
// row's visible keys need not be one range).
inline int BandCrossing(const Problem &p, int64_t b, int64_t i0, int64_t il, int64_t j0, int64_t jl) {
  const Band &band = p.band;
  if (!band.enabled()) return 0;
  const bool prefix = !band.open_keys.empty();
  if (prefix && jl < band.open_keys[b]) return 0;
  if (j0 - il >= band.lo[b] && jl - i0 <= band.hi[b]) return 0;
  return prefix && j0 < band.open_keys[b] ? 2 : 1;
}

// The steps the tile of rows [r0, r0 + nr) (padded to R) and keys [j0, jl] of unit (b, kh) needs, with its terms
// (mask, dropout) in sc and, when the band alone acts, each row's clamped band edges in sc.lo / sc.hi. False
// when every key of the tile is hidden from every row: the tile is skipped. Scratch: as for TileTerms, with R
// floats `lo` / `hi`.
template <class Scratch>
inline bool PlanTile(const Problem &p, const GradPlan &plan, int64_t b, int64_t kh, int64_t r0, int64_t nr,
                     int64_t R, int64_t j0, int64_t jl, const Scratch &sc, TileSteps *steps) {
  const int64_t G = p.G, nk = jl - j0 + 1;
  const int crossing = BandCrossing(p, b, r0 / G, (r0 + nr - 1) / G, j0, jl);
  const bool per_element = plan.mask || crossing == 2;
  steps->terms = plan.terms || per_element;
  steps->band = crossing == 1 && !per_element;
  steps->dropout = p.dropout.enabled();
  if ((steps->terms || steps->dropout) && !TileTerms(p, b, kh, r0, nr, R, j0, nk, steps->terms, per_element, sc)) {
    return false;
  }
  if (steps->band) {
    for (int64_t r = 0; r < R; ++r) {  // row r (position i) sees keys [i + lo, i + hi], clamped around the tile
      const int64_t i = (r0 + r) / G;
      sc.lo[r] = static_cast<float>(std::max(j0 - 1, std::min(jl + 1, i + p.band.lo[b])));
      sc.hi[r] = static_cast<float>(std::max(j0 - 1, std::min(jl + 1, i + p.band.hi[b])));
    }
  }
  return true;
}

// The query positions [*lo, *hi) of batch b that see some key of [j0, jl] (empty when *lo >= *hi).
inline void VisibleRows(const Problem &p, int64_t b, int64_t j0, int64_t jl, int64_t *lo, int64_t *hi) {
  const Band &band = p.band;
  *lo = 0;
  *hi = p.q_len[b];
  if (band.enabled() && !(!band.open_keys.empty() && j0 < band.open_keys[b])) {
    *lo = std::max<int64_t>(0, j0 - band.hi[b]);
    *hi = std::min<int64_t>(p.q_len[b], jl - band.lo[b] + 1);
  }
}

// Key blocks [*first, *last) of split s of batch b's keys, when they are split `splits` ways: contiguous ranges
// of about equal work (the query rows that see each block, which a causal band makes uneven).
inline void SplitKeyBlocks(const Problem &p, int64_t b, int64_t splits, int64_t s, int64_t *first, int64_t *last) {
  const int64_t keys = p.kv_len[b], blocks = (keys + kGradKeys - 1) / kGradKeys;
  auto cost = [&](int64_t block) {
    int64_t lo = 0, hi = 0;
    VisibleRows(p, b, block * kGradKeys, std::min(keys, (block + 1) * kGradKeys) - 1, &lo, &hi);
    return std::max<int64_t>(1, hi - lo);  // every block has its own fixed costs
  };
  int64_t total = 0;
  for (int64_t k = 0; k < blocks; ++k) total += cost(k);
  // split s starts at the first block whose preceding work reaches s / splits of the total
  auto start = [&](int64_t part) {
    if (part >= splits) return blocks;
    int64_t done = 0, k = 0;
    for (; k < blocks && done * splits < total * part; ++k) done += cost(k);
    return k;
  };
  *first = start(s);
  *last = start(s + 1);
}

// The gradients of (batch b, KV head kh) from key blocks [kb0, kb1): dK / dV of those keys, their share of dpse,
// and their share of dQ of the G heads' rows, accumulated (unscaled) in dq_acc (M x D floats) and, when `store`,
// scaled and written out. ptrs: kGradKeys + 2 * R row pointers of scratch.
template <class E>
void GradUnit(const Problem &p, const GradTensors &g, const GradPlan &plan, int64_t b, int64_t kh, int64_t kb0,
              int64_t kb1, float *dq_acc, bool store, GradScratch &sc, const float **ptrs) {
  const int64_t G = p.G, D = p.D, K = kGradKeys, R = plan.R;
  const int64_t q_len = p.q_len[b], keys = p.kv_len[b], rows = q_len * G;
  if (q_len == 0 || keys == 0) {  // no gradient (the outputs were zeroed)
    std::fill(dq_acc, dq_acc + rows * D, 0.f);
    return;
  }
  const E *query = static_cast<const E *>(p.query), *dy = static_cast<const E *>(g.dy);  // q_rows
  const E *out = static_cast<const E *>(g.out);
  const E *key = static_cast<const E *>(p.kv.key), *value = static_cast<const E *>(p.kv.value);
  const float scale = p.scale;
  auto q_at = [&](int64_t r) { return p.q_rows.At(b, kh * G + r % G, p.q_start[b] + r / G); };

  // Every row's softmax statistics, Dsum = dO . O, and its query (times scale) and output gradient gathered
  // once, widened and contiguous: each key block reads them all again, and rows of a token-major layout lie a
  // page apart (the tiles stalled on them).
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = p.stats.rows.At(b, kh * G + r % G, p.q_start[b] + r / G);
    const float m = p.stats.max[at], l = p.stats.sum[at];
    const bool empty = !(l > 0.f) || !(m > -FLT_MAX) || std::isinf(m);  // no visible key: contributes nothing
    sc.m[r] = empty ? 0.f : m;
    sc.inv_l[r] = empty ? 0.f : 1.f / l;
    float *q = sc.qa + r * D, *g = sc.doa + r * D, *o = dq_acc + r * D;  // o: dq_acc is free until zeroed
    WidenRow(query + q_at(r), D, scale, q);
    WidenRow(dy + q_at(r), D, 1.f, g);
    WidenRow(out + q_at(r), D, 1.f, o);
    float sum = 0.f;
    for (int64_t d = 0; d < D; ++d) sum += g[d] * o[d];
    sc.dsum[r] = sum;
  }
  std::fill(dq_acc, dq_acc + rows * D, 0.f);

  const float **kw_rows = ptrs, **qw_rows = ptrs + K, **dow_rows = ptrs + K + R;
  E *dk = static_cast<E *>(g.dk), *dv = static_cast<E *>(g.dv);
  for (int64_t j0 = kb0 * K; j0 < std::min(keys, kb1 * K); j0 += K) {
    const int64_t nk = std::min(K, keys - j0), jl = j0 + nk - 1;
    int64_t i_lo = 0, i_hi = 0;  // the query positions that see a key of the block
    VisibleRows(p, b, j0, jl, &i_lo, &i_hi);
    if (i_lo >= i_hi) continue;  // no row sees these keys: their dK, dV stay 0
    for (int64_t t = 0; t < nk; ++t) {
      const int64_t at = p.kv.rows.At(b, kh, p.kv_start[b] + j0 + t);
      WidenRow(key + at, D, 1.f, sc.kw + t * D);
      WidenRow(value + at, D, 1.f, sc.vw + t * D);
      kw_rows[t] = sc.kw + t * D;
    }
    std::fill(sc.dk, sc.dk + nk * D, 0.f);
    std::fill(sc.dv, sc.dv + nk * D, 0.f);
    for (int64_t i0 = i_lo; i0 < i_hi; i0 += plan.block_pos) {
      const int64_t np = std::min(plan.block_pos, i_hi - i0), nr = np * G, r0 = i0 * G;
      // the row block: scaled queries and output gradients, packed; per-row statistics
      for (int64_t r = 0; r < nr; ++r) {
        qw_rows[r] = sc.qa + (r0 + r) * D;
        dow_rows[r] = sc.doa + (r0 + r) * D;
      }
      PackRows(qw_rows, nr, R, D, sc.qt);
      PackRows(dow_rows, nr, R, D, sc.dot);
      for (int64_t r = 0; r < R; ++r) {
        const bool real = r < nr;
        sc.bm[r] = real ? sc.m[r0 + r] : 0.f;
        sc.bl[r] = real ? sc.inv_l[r0 + r] : 0.f;
        sc.bd[r] = real ? sc.dsum[r0 + r] : 0.f;
      }
      // a discard mask, or the band with open prefix keys, is applied per element in the terms; a band alone
      // through each row's [lo, hi]
      TileSteps steps;
      if (!PlanTile(p, plan, b, kh, r0, nr, R, j0, jl, sc, &steps)) continue;
      // S^T = K (scale Q)^T and dPd^T = V dO^T, then Pd^T and dS^T in place
      TileProducts(sc.kw, nk, sc.qt, R, D, sc.st, R);
      TileProducts(sc.vw, nk, sc.dot, R, D, sc.dpt, R);
      TileGradients(sc, R, nk, j0, steps);
      TransposeTile(sc.dpt, R, K, R, sc.ds, K);
      if (plan.dpse != nullptr) TileBiasGradient(p, b, kh, r0, nr, j0, nk, sc.ds, plan.dpse);
      // dV += Pd^T dO, dK += dS^T (scale Q), dQ += dS K (times scale when stored)
      AccumulateProducts(sc.dv, nk, sc.st, R, dow_rows, nr, D, sc.ones);
      AccumulateProducts(sc.dk, nk, sc.dpt, R, qw_rows, nr, D, sc.ones);
      AccumulateProducts(dq_acc + r0 * D, nr, sc.ds, K, kw_rows, nk, D, sc.ones);
    }
    for (int64_t t = 0; t < nk; ++t) {
      const int64_t at = p.kv.rows.At(b, kh, p.kv_start[b] + j0 + t);
      StoreRow(sc.dk + t * D, D, dk + at);
      StoreRow(sc.dv + t * D, D, dv + at);
    }
  }
  if (!store) return;
  E *dq = static_cast<E *>(g.dq);
  for (int64_t r = 0; r < rows; ++r) {
    float *row = dq_acc + r * D;
    for (int64_t d = 0; d < D; ++d) row[d] *= scale;
    StoreRow(row, D, dq + q_at(r));
  }
}

// ---- bfloat16 with AVX512_BF16: the five products as vdpbf16ps micro-GEMMs -------------------------------
//
// For bfloat16 inputs on a CPU with AVX512_BF16 the products take the bf16 values themselves: vdpbf16ps
// multiplies pairs of bf16 exactly and accumulates in float32 (contract decision 3). S = scale * (q . k) and
// dP = dO . v take the raw bf16 operands (scale applied to the float32 scores), at 32 multiply-adds per
// instruction. Pd = P * Z / keep_prob and dS are float32 results: rounded to one bf16 they fail the gradient
// tolerances (a gradient element is a sum with cancellation, 2^-9 relative error per term shows at atol 1e-4),
// so they enter dV += Pd^T dO, dK += dS^T q and dQ += dS k as the sum of two bf16 (high part, and the rounded
// rest), about 16 bits: two vdpbf16ps per pair, 16 multiply-adds per instruction like an fp32 FMA, with the
// other operand read as bf16. dK and dQ are scaled when stored. vdpbf16ps takes a pair of consecutive elements
// of the reduced dimension in each 32-bit lane, so every operand is held in pairs:
//   A (broadcast, one pair per multiply): key / value rows (pairs along d), Pd^T and dS^T key-major (pairs along
//     rows), dS in row pairs of keys (dsp: [key pair][row]);
//   B (16 lanes): the unit's queries and output gradients "transposed" in panels of 16 rows (qt / dt: [panel][d
//     pair][16 rows]) for S^T and dP^T, and "row-paired" (qr / dr: [row pair][Dv columns]) for dK and dV; the key
//     block key-paired (kr: [key pair][Dv columns]) for dQ.
// The unit's rows are packed once (every key block reads them again); row blocks start on 16-row panels, so a
// tile's rows need not begin at a query position's first head: each row's position and head are r / G, r % G.
// D is padded with zeros to Dp (even) in the pairs along d and to Dv (a multiple of 16) in the column vectors.
#if defined(MSA_BF16_PAIRS) && defined(__AVX512BF16__)  // bf16_dot.h's pairs, with the native vdpbf16ps
#define MSA_GRAD_BF16_DOT 1

constexpr int64_t kBf16Rows = 64;  // rows of a tile (whole 16-row panels)

// x, kept in a register (see simd::InRegister).
inline bf16::Pairs PairsInRegister(bf16::Pairs x) {
  __asm__("" : "+v"(x));
  return x;
}

// The A operand of a micro-GEMM: bf16 pairs (one 32-bit word each), pair t of row m at a[m * m_step + t * t_step];
// with `lo` != 0 each value is the sum of two bf16, the second parts at a + lo (a float32 operand split into
// high and low bf16, which keeps it to about 16 bits).
struct PairsA {
  const uint32_t *a;
  int64_t m_step, t_step, lo;
};

// c[m * ldc + 16 v + lane] (+)= sum_{t < steps} A(m, t) . b[t * b_t + v * b_v + 2 lane, + 2), for m < MR, v < NV:
// b holds 16-lane vectors of bf16 pairs (b_t, b_v in bf16 elements). The MR broadcast pairs (2 MR when split)
// stay in registers while each b vector is loaded once.
template <int MR, int NV, bool kAccumulate, bool kSplit>
inline void DotBlock(PairsA A, const uint16_t *b, int64_t b_t, int64_t b_v, int64_t steps, float *c, int64_t ldc) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) acc[m][v] = kAccumulate ? _mm512_loadu_ps(c + m * ldc + v * 16) : _mm512_setzero_ps();
  }
  auto broadcast = [](const uint32_t *at) {  // in a register: not one broadcast load per multiply
    return PairsInRegister(bf16::BroadcastPair(*at));
  };
  for (int64_t t = 0; t < steps; ++t) {
    bf16::Pairs x[MR], y[kSplit ? MR : 1];
    for (int m = 0; m < MR; ++m) {
      x[m] = broadcast(A.a + m * A.m_step + t * A.t_step);
      if (kSplit) y[m] = broadcast(A.a + A.lo + m * A.m_step + t * A.t_step);
    }
    const uint16_t *bt = b + t * b_t;
    for (int v = 0; v < NV; ++v) {
      const bf16::Pairs z = PairsInRegister(_mm512_loadu_si512(bt + v * b_v));
      for (int m = 0; m < MR; ++m) {
        acc[m][v] = bf16::DotPairs(acc[m][v], x[m], z);
        if (kSplit) acc[m][v] = bf16::DotPairs(acc[m][v], y[m], z);
      }
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + m * ldc + v * 16, acc[m][v]);
  }
}

// DotBlock over nv vectors: blocks of NV, then the rest in smaller blocks.
template <int MR, int NV, bool kAccumulate, bool kSplit>
inline void DotColumns(PairsA A, const uint16_t *b, int64_t b_t, int64_t b_v, int64_t nv, int64_t steps, float *c,
                       int64_t ldc) {
  if constexpr (NV > 0) {
    for (; nv >= NV; nv -= NV, b += NV * b_v, c += NV * 16) {
      DotBlock<MR, NV, kAccumulate, kSplit>(A, b, b_t, b_v, steps, c, ldc);
    }
    if (nv > 0) DotColumns<MR, NV - 1, kAccumulate, kSplit>(A, b, b_t, b_v, nv, steps, c, ldc);
  }
}

// The micro-GEMM over `rows` rows of c (blocks of MR, then one at a time) and nv vectors of 16 columns.
template <int MR, int NV, bool kAccumulate, bool kSplit>
inline void Dot(PairsA A, int64_t rows, const uint16_t *b, int64_t b_t, int64_t b_v, int64_t nv, int64_t steps,
                float *c, int64_t ldc) {
  int64_t m = 0;
  for (; m + MR <= rows; m += MR, A.a += MR * A.m_step) {
    DotColumns<MR, NV, kAccumulate, kSplit>(A, b, b_t, b_v, nv, steps, c + m * ldc, ldc);
  }
  for (; m < rows; ++m, A.a += A.m_step) DotColumns<1, NV, kAccumulate, kSplit>(A, b, b_t, b_v, nv, steps, c + m * ldc, ldc);
}

// Rows a and b (b null: zeros) interleaved by column, out[d] = (a[d], b[d]), zeros for D <= d < Dv; a null: all
// zeros.
inline void PackRowPair(const BFloat16 *a, const BFloat16 *b, int64_t D, int64_t Dv, uint32_t *out) {
  if (a == nullptr) {
    std::fill(out, out + Dv, 0u);
    return;
  }
  bf16::InterleaveRowPairs(a, b, D, out);
  std::fill(out + D, out + Dv, 0u);
}

// One thread's working memory of the bf16 path (carved from floats; bf16 arrays take half a float per element).
// K = kGradKeys keys, R = kBf16Rows rows, Mp the unit's rows rounded up to 16, Dp / Dv the padded head dims.
constexpr int64_t kLoTile = kGradKeys * kBf16Rows / 2;  // 32-bit words from a tile's high parts to its low parts

struct Bf16Scratch {
  uint16_t *kw, *vw;      // K x Dp: the key block's keys and values (pairs along d)
  uint32_t *kr;           // K / 2 x Dv: the keys in key pairs
  float *st, *dpt;        // K x R: q.k -> Pd^T (float32), dO.v -> dS^T
  uint16_t *pd, *dst;     // 2 x K x R: Pd^T and dS^T as bf16 high parts, then low parts (kLoTile words on)
  uint32_t *dsp;          // 2 x K / 2 x R: dS in key pairs, high then low parts (kLoTile words on)
  float *terms, *zt;      // K x R: score terms and Z / keep_prob (TileTerms)
  float *rm;              // R x K: TileTerms' rows; dS row-major for dpse
  float *lo, *hi;         // R: each row's band, clamped around the block
  float *dk, *dv;         // K x Dv: accumulators of the key block
  float *m, *inv_l, *dsum;  // Mp: per row of the unit
  uint32_t *qt, *dt;      // Mp / 16 panels x Dp / 2 x 16: queries, output gradients (B of S^T, dP^T)
  uint32_t *qr, *dr;      // Mp / 2 x Dv: the same in row pairs (B of dK, dV)
  float *dq;              // Mp x Dv: dQ (unscaled)
  uint32_t *ot;           // Dp / 2 x 16: a panel of outputs, transposed (for Dsum)
  static constexpr int kArrays = 24;
  static int64_t Floats(int64_t Mp, int64_t Dp, int64_t Dv) {
    const int64_t K = kGradKeys, R = kBf16Rows;
    return K * Dp + K * Dv / 2 + 2 * K * R + 3 * K * R + 2 * K * R + R * K + 2 * R + 2 * K * Dv + 3 * Mp +
           Mp * Dp + Mp * Dv + Mp * Dv + 8 * Dp + kArrays * 16;
  }
  Bf16Scratch(float *base, int64_t Mp, int64_t Dp, int64_t Dv) {
    const int64_t K = kGradKeys, R = kBf16Rows;
    float *p = base;
    auto take = [&p](int64_t n) {  // n floats, 64-byte aligned relative to the base
      float *at = p;
      p += (n + 15) / 16 * 16;
      return at;
    };
    kw = reinterpret_cast<uint16_t *>(take(K * Dp / 2));
    vw = reinterpret_cast<uint16_t *>(take(K * Dp / 2));
    kr = reinterpret_cast<uint32_t *>(take(K / 2 * Dv));
    st = take(K * R), dpt = take(K * R);
    pd = reinterpret_cast<uint16_t *>(take(K * R));
    dst = reinterpret_cast<uint16_t *>(take(K * R));
    dsp = reinterpret_cast<uint32_t *>(take(K * R));
    terms = take(K * R), zt = take(K * R), rm = take(R * K);
    lo = take(R), hi = take(R);
    dk = take(K * Dv), dv = take(K * Dv);
    m = take(Mp), inv_l = take(Mp), dsum = take(Mp);
    qt = reinterpret_cast<uint32_t *>(take(Mp * Dp / 2));
    dt = reinterpret_cast<uint32_t *>(take(Mp * Dp / 2));
    qr = reinterpret_cast<uint32_t *>(take(Mp / 2 * Dv));
    dr = reinterpret_cast<uint32_t *>(take(Mp / 2 * Dv));
    dq = take(Mp * Dv);
    ot = reinterpret_cast<uint32_t *>(take(8 * Dp));
  }
};

// x as bf16 high and low parts (x - high, rounded; round to nearest even), each in the low half of a 32-bit lane.
inline void SplitBf16(__m512 x, __m512i *hi, __m512i *lo) {
  *hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x));
  const __m512 rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(*hi, 16)));
  *lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(rest));
}

inline void StoreLow16(uint16_t *dst, __m512i x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), _mm512_cvtepi32_epi16(x));
}

// The element-wise step of a bf16 tile (keys [0, nk) x rows [0, R), rows from unit row r0): st (q.k) becomes
// Pd^T in pd, dpt (dO.v) becomes dS^T in dst and dsp (each as bf16 high and low parts) and, with `keep_f32`, stays
// in dpt as float32 (for dpse). Key nk, when nk is odd, gets dS 0 in dsp (its pair partner).
inline void Bf16TileGradients(const Bf16Scratch &sc, int64_t R, int64_t r0, int64_t nk, int64_t j0, float scale,
                              TileSteps steps, bool keep_f32) {
  using namespace simd;
  const Vec vscale = Set1(scale);
  const float *bm = sc.m + r0, *bl = sc.inv_l + r0, *bd = sc.dsum + r0;
  uint16_t *pd_lo = sc.pd + 2 * kLoTile, *dst_lo = sc.dst + 2 * kLoTile;
  uint32_t *dsp_lo = sc.dsp + kLoTile;
  for (int64_t j = 0; j < nk; j += 2) {
    for (int64_t r = 0; r < R; r += kWidth) {
      __m512i ds_hi[2], ds_lo[2];
      for (int u = 0; u < 2; ++u) {
        const int64_t jj = j + u;
        if (jj >= nk) {
          ds_hi[u] = ds_lo[u] = _mm512_setzero_si512();
          continue;
        }
        float *s = sc.st + jj * R + r, *dp = sc.dpt + jj * R + r;
        Vec x = Mul(Load(s), vscale);
        if (steps.terms) x = Add(x, Load(sc.terms + jj * R + r));
        if (steps.band) x = KeepVisible(x, Set1(static_cast<float>(j0 + jj)), Load(sc.lo + r), Load(sc.hi + r));
        const Vec prob = Mul(Exp(Sub(x, Load(bm + r))), Load(bl + r));
        Vec dprob = Load(dp), kept = prob;
        if (steps.dropout) {
          const Vec z = Load(sc.zt + jj * R + r);
          kept = Mul(prob, z);
          dprob = Mul(dprob, z);
        }
        const Vec ds = Mul(prob, Sub(dprob, Load(bd + r)));
        if (keep_f32) Store(dp, ds);
        __m512i hi, lo;
        SplitBf16(kept, &hi, &lo);
        StoreLow16(sc.pd + jj * R + r, hi);
        StoreLow16(pd_lo + jj * R + r, lo);
        SplitBf16(ds, &ds_hi[u], &ds_lo[u]);
        StoreLow16(sc.dst + jj * R + r, ds_hi[u]);
        StoreLow16(dst_lo + jj * R + r, ds_lo[u]);
      }
      _mm512_storeu_si512(sc.dsp + (j / 2) * R + r, _mm512_or_si512(ds_hi[0], _mm512_slli_epi32(ds_hi[1], 16)));
      _mm512_storeu_si512(dsp_lo + (j / 2) * R + r, _mm512_or_si512(ds_lo[0], _mm512_slli_epi32(ds_lo[1], 16)));
    }
  }
}

// GradUnit for bfloat16 with AVX512_BF16 (same contract; dq_acc with D columns, used only when !store).
inline void GradUnitBf16(const Problem &p, const GradTensors &g, const GradPlan &plan, int64_t b, int64_t kh,
                         int64_t kb0, int64_t kb1, float *dq_acc, bool store, Bf16Scratch &sc) {
  const int64_t G = p.G, D = p.D, K = kGradKeys, Dp = (D + 1) / 2 * 2, Dv = (D + 15) / 16 * 16;
  const int64_t q_len = p.q_len[b], keys = p.kv_len[b], rows = q_len * G, Mp = (rows + 15) / 16 * 16;
  if (q_len == 0 || keys == 0) {  // no gradient (the outputs were zeroed)
    if (!store) std::fill(dq_acc, dq_acc + rows * D, 0.f);
    return;
  }
  const BFloat16 *query = static_cast<const BFloat16 *>(p.query), *dy = static_cast<const BFloat16 *>(g.dy);
  const BFloat16 *out = static_cast<const BFloat16 *>(g.out);
  const BFloat16 *key = static_cast<const BFloat16 *>(p.kv.key), *value = static_cast<const BFloat16 *>(p.kv.value);
  const float scale = p.scale;
  auto q_at = [&](int64_t r) { return p.q_rows.At(b, kh * G + r % G, p.q_start[b] + r / G); };
  auto row_of = [&](const BFloat16 *base, int64_t r) { return r < rows ? base + q_at(r) : nullptr; };

  // per row: statistics (0 past the last row); the rows packed both ways
  for (int64_t r = 0; r < Mp; ++r) {
    if (r >= rows) {
      sc.m[r] = sc.inv_l[r] = 0.f;
      continue;
    }
    const int64_t at = p.stats.rows.At(b, kh * G + r % G, p.q_start[b] + r / G);
    const float m = p.stats.max[at], l = p.stats.sum[at];
    const bool empty = !(l > 0.f) || !(m > -FLT_MAX) || std::isinf(m);  // no visible key: contributes nothing
    sc.m[r] = empty ? 0.f : m;
    sc.inv_l[r] = empty ? 0.f : 1.f / l;
  }
  // Dsum = dO . O with the instruction and order of dP = dO . v (the same pairs, one row per lane), so that
  // dP - Dsum is exactly 0 where the output equals a value row (a single visible key)
  for (int64_t panel = 0; panel < Mp / 16; ++panel) {
    const BFloat16 *qrows[16], *drows[16], *orows[16];
    for (int i = 0; i < 16; ++i) {
      qrows[i] = row_of(query, panel * 16 + i);
      drows[i] = row_of(dy, panel * 16 + i);
      orows[i] = row_of(out, panel * 16 + i);
    }
    const uint32_t *dt = sc.dt + panel * (Dp / 2) * 16;
    const int64_t n = std::min<int64_t>(16, rows - panel * 16);
    bf16::PackPairsTransposed(qrows, n, D, sc.qt + panel * (Dp / 2) * 16);
    bf16::PackPairsTransposed(drows, n, D, sc.dt + panel * (Dp / 2) * 16);
    bf16::PackPairsTransposed(orows, n, D, sc.ot);
    __m512 dsum = _mm512_setzero_ps();
    for (int64_t t = 0; t < Dp / 2; ++t) dsum = bf16::DotPairs(dsum, bf16::LoadPairs(sc.ot + t * 16), bf16::LoadPairs(dt + t * 16));
    _mm512_storeu_ps(sc.dsum + panel * 16, dsum);
  }
  for (int64_t r = 0; r < Mp; r += 2) {
    PackRowPair(row_of(query, r), row_of(query, r + 1), D, Dv, sc.qr + (r / 2) * Dv);
    PackRowPair(row_of(dy, r), row_of(dy, r + 1), D, Dv, sc.dr + (r / 2) * Dv);
  }
  std::fill(sc.dq, sc.dq + Mp * Dv, 0.f);

  const uint16_t *qt16 = reinterpret_cast<const uint16_t *>(sc.qt), *dt16 = reinterpret_cast<const uint16_t *>(sc.dt);
  const uint16_t *qr16 = reinterpret_cast<const uint16_t *>(sc.qr), *dr16 = reinterpret_cast<const uint16_t *>(sc.dr);
  const uint16_t *kr16 = reinterpret_cast<const uint16_t *>(sc.kr);
  BFloat16 *dk = static_cast<BFloat16 *>(g.dk), *dv = static_cast<BFloat16 *>(g.dv);
  for (int64_t j0 = kb0 * K; j0 < std::min(keys, kb1 * K); j0 += K) {
    const int64_t nk = std::min(K, keys - j0), jl = j0 + nk - 1;
    int64_t i_lo = 0, i_hi = 0;  // the query positions that see a key of the block
    VisibleRows(p, b, j0, jl, &i_lo, &i_hi);
    if (i_lo >= i_hi) continue;  // no row sees these keys: their dK, dV stay 0
    // the key block: rows padded to Dp, key pairs (a zero key after an odd last one)
    for (int64_t t = 0; t < K; t += 2) {
      const BFloat16 *k0 = nullptr, *k1 = nullptr;
      for (int u = 0; u < 2; ++u) {
        uint16_t *kw = sc.kw + (t + u) * Dp, *vw = sc.vw + (t + u) * Dp;
        if (t + u < nk) {
          const int64_t at = p.kv.rows.At(b, kh, p.kv_start[b] + j0 + t + u);
          std::memcpy(kw, key + at, D * sizeof(uint16_t));
          std::memcpy(vw, value + at, D * sizeof(uint16_t));
          if (Dp > D) kw[D] = vw[D] = 0;
          (u == 0 ? k0 : k1) = key + at;
        }
      }
      if (t < nk) PackRowPair(k0, k1, D, Dv, sc.kr + (t / 2) * Dv);
    }
    std::fill(sc.dk, sc.dk + nk * Dv, 0.f);
    std::fill(sc.dv, sc.dv + nk * Dv, 0.f);
    const uint32_t *kw32 = reinterpret_cast<const uint32_t *>(sc.kw), *vw32 = reinterpret_cast<const uint32_t *>(sc.vw);
    for (int64_t r0 = i_lo * G / 16 * 16; r0 < i_hi * G; r0 += kBf16Rows) {
      const int64_t R = std::min(kBf16Rows, Mp - r0), nr = std::min(R, rows - r0);
      const int64_t i0 = r0 / G, il = (r0 + nr - 1) / G;  // the tile's first and last position
      TileSteps steps;
      if (!PlanTile(p, plan, b, kh, r0, nr, R, j0, jl, sc, &steps)) continue;
      // S^T = K Q^T and dP^T = V dO^T (6 keys x 4 row vectors per block)
      const int64_t panel = r0 / 16, nv = R / 16;
      Dot<6, 4, false, false>({kw32, Dp / 2, 1, 0}, nk, qt16 + panel * (Dp / 2) * 32, 32, (Dp / 2) * 32, nv, Dp / 2,
                              sc.st, R);
      Dot<6, 4, false, false>({vw32, Dp / 2, 1, 0}, nk, dt16 + panel * (Dp / 2) * 32, 32, (Dp / 2) * 32, nv, Dp / 2,
                              sc.dpt, R);
      const bool dpse = plan.dpse != nullptr;
      Bf16TileGradients(sc, R, r0, nk, j0, scale, steps, dpse);
      if (dpse) {
        TransposeTile(sc.dpt, R, K, R, sc.rm, K);  // dS row-major (keys past nk unused)
        TileBiasGradient(p, b, kh, r0, nr, j0, nk, sc.rm, plan.dpse);
      }
      // dV += Pd^T dO, dK += dS^T Q (3 keys x 8 column vectors), dQ += dS K (3 rows x 8 column vectors)
      const uint32_t *pd32 = reinterpret_cast<const uint32_t *>(sc.pd), *dst32 = reinterpret_cast<const uint32_t *>(sc.dst);
      Dot<3, 8, true, true>({pd32, R / 2, 1, kLoTile}, nk, dr16 + r0 * Dv, 2 * Dv, 32, Dv / 16, R / 2, sc.dv, Dv);
      Dot<3, 8, true, true>({dst32, R / 2, 1, kLoTile}, nk, qr16 + r0 * Dv, 2 * Dv, 32, Dv / 16, R / 2, sc.dk, Dv);
      Dot<3, 8, true, true>({sc.dsp, 1, R, kLoTile}, nr, kr16, 2 * Dv, 32, Dv / 16, (nk + 1) / 2, sc.dq + r0 * Dv, Dv);
    }
    for (int64_t t = 0; t < nk; ++t) {
      const int64_t at = p.kv.rows.At(b, kh, p.kv_start[b] + j0 + t);
      float *row = sc.dk + t * Dv;
      for (int64_t d = 0; d < D; ++d) row[d] *= scale;
      StoreRow(row, D, dk + at);
      StoreRow(sc.dv + t * Dv, D, dv + at);
    }
  }
  BFloat16 *dq = static_cast<BFloat16 *>(g.dq);
  for (int64_t r = 0; r < rows; ++r) {
    float *row = sc.dq + r * Dv;
    if (!store) {
      std::memcpy(dq_acc + r * D, row, D * sizeof(float));
      continue;
    }
    for (int64_t d = 0; d < D; ++d) row[d] *= scale;
    StoreRow(row, D, dq + q_at(r));
  }
}
#endif  // MSA_BF16_PAIRS && __AVX512BF16__

inline size_t DTypeBytes(DType t) { return t == abi::kFloat32 ? 4 : t == abi::kFloat16 || t == abi::kBfloat16 ? 2 : 1; }

inline int64_t Bf16Floats(int64_t Mp, int64_t Dp, int64_t Dv) {
#if defined(MSA_GRAD_BF16_DOT)
  return Bf16Scratch::Floats(Mp, Dp, Dv);
#else
  (void)Mp, (void)Dp, (void)Dv;
  return 0;
#endif
}

template <class E>
void RunGrad(const Problem &p, const GradTensors &g) {
  const int64_t G = p.G, D = p.D;
  std::memset(g.dq, 0, p.q_numel * sizeof(E));
  std::memset(g.dk, 0, p.kv.numel * sizeof(E));
  std::memset(g.dv, 0, p.kv.numel * sizeof(E));
  if (g.dpse != nullptr) std::memset(g.dpse, 0, g.dpse_numel * DTypeBytes(g.dpse_dtype));

  GradPlan plan;
  plan.block_pos = std::max<int64_t>(1, kGradRows / G);
  plan.R = (plan.block_pos * G + kGradPanel - 1) / kGradPanel * kGradPanel;
  for (int64_t b = 0; b < p.B; ++b) plan.M = std::max(plan.M, p.q_len[b] * G);
  plan.mask = p.mask.data != nullptr && !p.mask.additive;
  plan.terms = plan.mask || p.bias.data != nullptr || p.alibi.enabled();
  std::vector<float> dpse_acc;
  if (g.dpse != nullptr && p.bias.data != nullptr) {
    if (g.dpse_dtype == abi::kFloat32) {
      plan.dpse = static_cast<float *>(g.dpse);
    } else {
      dpse_acc.assign(p.bias.numel, 0.f);
      plan.dpse = dpse_acc.data();
    }
  }
  // A pse broadcast over the batch is summed over it: one item per KV head then takes every batch. Otherwise an
  // item is a (batch, KV head).
  const bool per_head = plan.dpse != nullptr && p.bias.batch == 0 && p.B > 1;
  const int64_t items = per_head ? p.kvN : p.B * p.kvN;
  ThreadPool &pool = ThreadPool::Instance();
  const int threads = pool.threads();
  // When the items cannot keep every thread busy, an item's key blocks are split; each split accumulates its own
  // dQ, summed afterwards. Not for per-head items, nor with a compressed pse's gradient (a row-0 shifted element
  // is read from keys of several splits).
  int64_t splits = 1;
  if (!per_head && items < threads && !(plan.dpse != nullptr && p.bias.compressed_rows > 0)) {
    int64_t blocks = 0;
    for (int64_t b = 0; b < p.B; ++b) blocks = std::max(blocks, (p.kv_len[b] + kGradKeys - 1) / kGradKeys);
    splits = std::max<int64_t>(1, std::min<int64_t>((threads + items - 1) / items, blocks));
  }
  const int64_t units = items * splits;
#if defined(MSA_GRAD_BF16_DOT)
  constexpr bool bf16_dot = std::is_same<E, BFloat16>::value;
#else
  constexpr bool bf16_dot = false;
#endif
  const int64_t Mp = (plan.M + 15) / 16 * 16, Dp = (D + 1) / 2 * 2, Dv = (D + 15) / 16 * 16;
  const int64_t floats = bf16_dot ? Bf16Floats(Mp, Dp, Dv) : GradScratch::Floats(plan.R, plan.M, D);
  std::vector<float> scratch(threads * floats + 16);
  std::vector<const float *> pointers(threads * (kGradKeys + 2 * plan.R));
  std::vector<float> partial_dq(splits > 1 ? units * plan.M * D : 0);  // split s of item i at unit i * splits + s
  float *base = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t(63));
  pool.ParallelFor(units, [&](int64_t w, int slot) {
    const int64_t item = w / splits, s = w % splits, all = int64_t(1) << 40;
#if defined(MSA_GRAD_BF16_DOT)
    if constexpr (bf16_dot) {
      Bf16Scratch sc(base + slot * floats, Mp, Dp, Dv);
      if (per_head) {
        for (int64_t b = 0; b < p.B; ++b) GradUnitBf16(p, g, plan, b, item, 0, all, nullptr, true, sc);
      } else if (splits == 1) {
        GradUnitBf16(p, g, plan, item / p.kvN, item % p.kvN, 0, all, nullptr, true, sc);
      } else {
        int64_t first = 0, last = 0;
        SplitKeyBlocks(p, item / p.kvN, splits, s, &first, &last);
        GradUnitBf16(p, g, plan, item / p.kvN, item % p.kvN, first, last, partial_dq.data() + w * plan.M * D, false,
                     sc);
      }
      return;
    }
#endif
    GradScratch sc(base + slot * floats, plan.R, plan.M, D);
    const float **ptrs = pointers.data() + slot * (kGradKeys + 2 * plan.R);
    if (per_head) {
      for (int64_t b = 0; b < p.B; ++b) GradUnit<E>(p, g, plan, b, item, 0, all, sc.dq, true, sc, ptrs);
    } else if (splits == 1) {
      GradUnit<E>(p, g, plan, item / p.kvN, item % p.kvN, 0, all, sc.dq, true, sc, ptrs);
    } else {
      int64_t first = 0, last = 0;
      SplitKeyBlocks(p, item / p.kvN, splits, s, &first, &last);
      GradUnit<E>(p, g, plan, item / p.kvN, item % p.kvN, first, last, partial_dq.data() + w * plan.M * D, false,
                  sc, ptrs);
    }
  });
  if (splits > 1) {  // every split is done: sum their dQ, scale and store
    pool.ParallelFor(items, [&](int64_t item, int) {
      const int64_t b = item / p.kvN, kh = item % p.kvN, rows = p.q_len[b] * G;
      float *sum = partial_dq.data() + item * splits * plan.M * D;
      for (int64_t s = 1; s < splits; ++s) simd::ScaleAdd(sum, 1.f, sum + s * plan.M * D, 1.f, rows * D);
      E *dq = static_cast<E *>(g.dq);
      for (int64_t r = 0; r < rows; ++r) {
        float *row = sum + r * D;
        for (int64_t d = 0; d < D; ++d) row[d] *= p.scale;
        StoreRow(row, D, dq + p.q_rows.At(b, kh * G + r % G, p.q_start[b] + r / G));
      }
    });
  }
  if (!dpse_acc.empty()) {
    if (g.dpse_dtype == abi::kFloat16) StoreRow(dpse_acc.data(), p.bias.numel, static_cast<Half *>(g.dpse));
    if (g.dpse_dtype == abi::kBfloat16) StoreRow(dpse_acc.data(), p.bias.numel, static_cast<BFloat16 *>(g.dpse));
  }
}

}  // namespace detail

// Runs the backward of a problem the grad reader accepted (query / key / value of one dtype: float16, bfloat16
// or float32).
inline void RunAttentionGrad(const Problem &p, const GradTensors &g) {
  switch (p.q_dtype) {
    case abi::kFloat16: detail::RunGrad<Half>(p, g); break;
    case abi::kBfloat16: detail::RunGrad<BFloat16>(p, g); break;
    case abi::kFloat32: detail::RunGrad<float>(p, g); break;
    default: break;  // rejected by the reader
  }
}

}  // namespace msa
