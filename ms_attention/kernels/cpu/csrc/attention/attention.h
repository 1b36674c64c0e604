// The attention core: runs a validated Problem.
//
// A unit of work is (batch, KV head, block of query positions, split of the key range). It streams its keys
// and values once, in tiles of kKeyTile, for all its query rows together (the G heads of the GQA group times
// the positions of the block): score tile, bias and mask, online softmax, value tile. Under a band (causal
// and sliding-window sparse modes) a unit visits only the key tiles some of its rows can see; tiles inside
// every row's band need no band test, the others get the computed mask. Splits of the key
// range (split-K, flash-decoding) keep every thread busy when batch x heads alone cannot; their partial
// results are merged afterwards. Scratch comes from the calling thread's arena (CallArena), grown if need be
// before the parallel work and reused by the next call; nothing in the parallel work can fail: every index was
// checked by CheckProblem (validate.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attention/kv_access.h"
#include "attention/output_store.h"
#include "attention/problem.h"
#include "attention/score_terms.h"
#include "attention/score_tile.h"
#include "attention/simd.h"
#include "attention/softmax.h"
#include "attention/value_tile.h"
#include "parallel.h"

namespace msa {

constexpr int64_t kKeyTile = 32;        // keys per tile (measured: faster than 64 and 128 for decode)
constexpr int64_t kMaxBlockRows = 64;   // query rows per unit of work (at least G)
constexpr int64_t kMinSplitKeys = 256;  // a key split shorter than this is not worth its merge
constexpr int64_t kPrefetchRows = 16;   // from this many rows a tile takes long enough to prefetch the next one

namespace detail {

constexpr int64_t kUnbounded = int64_t(1) << 40;  // a band edge that never limits (|j - i| is far smaller)

struct Unit {
  int64_t b, kh, p0, np, t0, t1;  // query rows [p0, p0 + np) of the window, keys [t0, t1) of the key sequence
};

// One thread's working memory, carved from a buffer sized by Floats().
struct Scratch {
  float *q;        // rows x D: query rows, scaled (and folded with the key antiquant scale)
  float *qr;       // rows x Dr: rope query rows, scaled
  float *bias;     // rows: score bias per row (the folded key antiquant offset)
  float *qsum;     // rows: sum of the scaled query row (per-token key offsets)
  float *scores;   // rows x kKeyTile
  float *rscores;  // rows x kKeyTile: the rope part of the scores
  float *corr;     // rows: online softmax corrections of the current tile
  float *row;      // max(D, Dr) + 1: a widened key/value row (scalar path), the merged output row
  BFloat16 *qb;    // rows x PairRow(D): the raw bfloat16 query rows, zero-padded (the pair paths)
  static int64_t PairRow(int64_t D) { return (D + 31) / 32 * 32; }
  static int64_t Floats(int64_t rows, int64_t D, int64_t Dr) {
    return rows * D + rows * Dr + 2 * rows + 2 * rows * kKeyTile + rows + std::max(D, Dr) + 1 +
           rows * PairRow(D) / 2 + 16;
  }
  Scratch(float *base, int64_t rows, int64_t D, int64_t Dr)
      : q(base), qr(q + rows * D), bias(qr + rows * Dr), qsum(bias + rows), scores(qsum + rows),
        rscores(scores + rows * kKeyTile), corr(rscores + rows * kKeyTile), row(corr + rows),
        qb(reinterpret_cast<BFloat16 *>(row + std::max(D, Dr) + 1)) {}
};

// Whether keys/values of type E take the bfloat16 pair tiles (vdpbf16ps, the probabilities rounded to
// bfloat16, SPEC §2.4): bfloat16 query and keys, on AVX-512.
template <class E>
inline bool UsesPairs(const Problem &p) {
#if defined(MSA_BF16_PAIRS)
  return std::is_same<E, BFloat16>::value && p.q_dtype == abi::kBfloat16;
#else
  (void)p;
  return false;
#endif
}

template <class T>
inline void AddRow(const T *src, int64_t n, float *dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] += ToFloat(src[j]);
}

// One row of n values, widened to float32.
inline void LoadRowAs(DType dtype, const void *data, int64_t offset, int64_t n, float *dst) {
  switch (dtype) {
    case abi::kFloat16: simd::LoadRow(static_cast<const Half *>(data) + offset, n, dst); break;
    case abi::kBfloat16: simd::LoadRow(static_cast<const BFloat16 *>(data) + offset, n, dst); break;
    case abi::kInt8: simd::LoadRow(static_cast<const int8_t *>(data) + offset, n, dst); break;
    default: simd::LoadRow(static_cast<const float *>(data) + offset, n, dst); break;
  }
}

// The factor applied to Q.K^T before the bias: the softmax scale, times deq_scale1 with an int8 query.
inline float ScoreScale(const Problem &p) { return p.full_quant.enabled ? p.scale * p.full_quant.deq1 : p.scale; }

// Row r of a unit is query row p0 + r / G of its window, head kh * G + r % G.
inline void LoadQueryRows(const Problem &p, const Unit &u, Scratch &sc) {
  const int64_t G = p.G, D = p.D, Dr = p.rope.Dr;
  const float scale = ScoreScale(p);
  for (int64_t r = 0; r < u.np * G; ++r) {
    const int64_t h = u.kh * G + r % G, pos = p.q_start[u.b] + u.p0 + r / G;
    float *q = sc.q + r * D;
    LoadRowAs(p.q_dtype, p.query, p.q_rows.At(u.b, h, pos), D, q);
    if (p.q_dtype == abi::kBfloat16) {  // the pair paths take the raw row
      BFloat16 *qb = sc.qb + r * Scratch::PairRow(D);
      std::memcpy(qb, static_cast<const BFloat16 *>(p.query) + p.q_rows.At(u.b, h, pos), D * sizeof(BFloat16));
      std::fill(qb + D, qb + Scratch::PairRow(D), BFloat16{0});
    }
    for (int64_t d = 0; d < D; ++d) q[d] *= scale;
    sc.bias[r] = p.kv.antiquant.enabled() ? FoldKeyAntiquant(p.kv.antiquant, u.kh, D, q) : 0.f;
    if (p.kv.key_tokens.enabled()) {
      float sum = 0.f;
      for (int64_t d = 0; d < D; ++d) sum += q[d];
      sc.qsum[r] = sum;
    }
    if (p.rope.enabled()) {
      float *qr = sc.qr + r * Dr;
      LoadRowAs(p.q_dtype, p.rope.query, p.rope.q_rows.At(u.b, h, pos), Dr, qr);
      for (int64_t d = 0; d < Dr; ++d) qr[d] *= scale;
    }
  }
}

// Where the mask / bias element of (query row i, key j) of batch b sits, for the head-independent part.
inline int64_t FrameOffset(const Problem &p, int64_t b, int64_t i, int64_t row_stride, int64_t j) {
  return (i + p.frame.q[b]) * row_stride + j + p.frame.k[b];
}

// True when a discard mask hides all n keys from key j for every query row of the unit (every head of its
// group when the mask has one per head).
inline bool TileMasked(const Problem &p, const Unit &u, int64_t j, int64_t n) {
  const int64_t heads = p.mask.head != 0 ? p.G : 1;
  for (int64_t g = 0; g < heads; ++g) {
    const uint8_t *mask = static_cast<const uint8_t *>(p.mask.data) + u.b * p.mask.batch +
                          (p.mask.head != 0 ? (u.kh * p.G + g) * p.mask.head : 0);
    for (int64_t i = u.p0; i < u.p0 + u.np; ++i) {
      const uint8_t *m = mask + FrameOffset(p, u.b, i, p.mask.row, j);
      for (int64_t t = 0; t < n; ++t) {
        if (m[t] == 0) return false;
      }
    }
  }
  return true;
}

// Keys [lo, hi) of the key sequence that some row of the unit may see: the band's union over its rows.
// Keys [0, open_keys) are visible to every row (prefix sparse modes) and widen the range to start at 0.
inline void UnitKeyRange(const Problem &p, const Unit &u, int64_t keys, int64_t *lo, int64_t *hi) {
  *lo = 0;
  *hi = keys;
  if (!p.band.enabled()) return;
  *lo = std::max<int64_t>(0, u.p0 + p.band.lo[u.b]);
  *hi = std::min<int64_t>(keys, u.p0 + u.np - 1 + p.band.hi[u.b] + 1);
  const int64_t open = p.band.open_keys.empty() ? 0 : std::min(keys, p.band.open_keys[u.b]);
  if (open > 0) {
    *lo = 0;
    *hi = std::max(*hi, open);
  }
}

// Whether no row of the unit may see any of keys [j, j + n) (a tile between the open prefix keys and the band).
inline bool TileOutsideBand(const Problem &p, const Unit &u, int64_t j, int64_t n) {
  if (!p.band.enabled()) return false;
  if (!p.band.open_keys.empty() && j < p.band.open_keys[u.b]) return false;
  return j + n - 1 < u.p0 + p.band.lo[u.b] || j > u.p0 + u.np - 1 + p.band.hi[u.b];
}

// Per-token key dequantization of the q.k part of the scores: s = scale_t * (q.k + offset_t * sum(q)).
inline void ApplyKeyTokens(const Problem &p, const Unit &u, int64_t j, int64_t n, Scratch &sc) {
  const TokenScale &ts = p.kv.key_tokens;
  const int64_t base = u.b * ts.batch + ts.origin[u.b] + j - p.prefix.len;
  for (int64_t r = 0; r < u.np * p.G; ++r) {
    float *s = sc.scores + r * kKeyTile;
    for (int64_t t = 0; t < n; ++t) {
      const float offset = ts.offset ? ts.offset[base + t] : 0.f;
      s[t] = ts.scale[base + t] * (s[t] + offset * sc.qsum[r]);
    }
  }
}

// The per-row bias, the score bias (pse, ALiBi), the mask and the band, on the scores of keys [j, j + n).
// in_band: every key of the tile is visible by the band to every row (no per-element band test).
inline void BiasAndMask(const Problem &p, const Unit &u, int64_t j, int64_t n, bool in_band, Scratch &sc) {
  if (in_band && !p.kv.antiquant.enabled() && p.bias.data == nullptr && !p.alibi.enabled() &&
      p.mask.data == nullptr) {
    return;
  }
  const int64_t G = p.G, b = u.b;
  for (int64_t r = 0; r < u.np * G; ++r) {
    float *s = sc.scores + r * kKeyTile;
    const int64_t h = u.kh * G + r % G, i = u.p0 + r / G;
    if (sc.bias[r] != 0.f) {
      for (int64_t t = 0; t < n; ++t) s[t] += sc.bias[r];
    }
    if (p.bias.data != nullptr) AddPseRow(p, b, h, i, j, n, s);
    if (p.alibi.enabled()) AddAlibiRow(p, b, h, i, j, n, s);
    if (p.mask.data != nullptr) {
      const int64_t at = MaskOffset(p, b, h, i, j);
      if (p.mask.additive) {
        AddRow(static_cast<const Half *>(p.mask.data) + at, n, s);
      } else {
        const uint8_t *m = static_cast<const uint8_t *>(p.mask.data) + at;
        for (int64_t t = 0; t < n; ++t) s[t] = m[t] ? kNegInf : s[t];
      }
    }
    if (!in_band) {
      const int64_t first = i + p.band.lo[b] - j, last = i + p.band.hi[b] - j;  // visible t in [first, last]
      const int64_t open = p.band.open_keys.empty() ? 0 : p.band.open_keys[b] - j;  // and t < open
      for (int64_t t = 0; t < n; ++t) {
        if ((t < first || t > last) && t >= open) s[t] = kNegInf;
      }
    }
  }
}

// Asks for rows[0, n) (D elements each) to be brought into L2.
template <class E>
inline void PrefetchRows(const E *const *rows, int64_t n, int64_t D) {
  const int64_t bytes = D * static_cast<int64_t>(sizeof(E));
  for (int64_t j = 0; j < n; ++j) {
    const char *row = reinterpret_cast<const char *>(rows[j]);
    for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(row + x, 0, 2);
  }
}

// The scores of keys [j, j + n) for every row of the unit, biased and masked (-inf where not attended).
template <class E, class R>
inline void TileScores(const Problem &p, const Unit &u, int64_t j, int64_t n, const E *const *k, Scratch &sc) {
  const int64_t rows = u.np * p.G, D = p.D;
#if defined(MSA_BF16_PAIRS)
  if constexpr (std::is_same<E, BFloat16>::value) {
    if (UsesPairs<E>(p)) {
      ScoreTilePairs(sc.qb, Scratch::PairRow(D), rows, k, n, D, ScoreScale(p), sc.scores, kKeyTile);
    } else {
      ScoreTile(sc.q, D, rows, k, n, D, sc.scores, kKeyTile, sc.row);
    }
  } else {
    ScoreTile(sc.q, D, rows, k, n, D, sc.scores, kKeyTile, sc.row);
  }
#else
  ScoreTile(sc.q, D, rows, k, n, D, sc.scores, kKeyTile, sc.row);
#endif
  if (p.kv.key_tokens.enabled()) ApplyKeyTokens(p, u, j, n, sc);
  if (p.rope.enabled()) {
    const int64_t Dr = p.rope.Dr;
    const R *kr[kKeyTile], *unused[kKeyTile];
    KvTileRows(p.rope.key, u.b, u.kh, p.kv_start[u.b] + j - p.prefix.len, n, kr, unused);
    ScoreTile(sc.qr, Dr, rows, kr, n, Dr, sc.rscores, kKeyTile, sc.row);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < n; ++t) sc.scores[r * kKeyTile + t] += sc.rscores[r * kKeyTile + t];
    }
  }
  bool in_band = true;
  if (p.band.enabled()) {
    in_band = (u.p0 + u.np - 1 + p.band.lo[u.b] <= j && j + n - 1 <= u.p0 + p.band.hi[u.b]) ||
              (!p.band.open_keys.empty() && j + n <= p.band.open_keys[u.b]);
  }
  BiasAndMask(p, u, j, n, in_band, sc);
}

// Per-token value dequantization of a tile's probabilities: p_t *= scale_t, and the offsets' share
// sum_t p_t * scale_t * offset_t goes to the accumulator's extra column D (rescaled like the others).
inline void ApplyValueTokens(const Problem &p, const Unit &u, int64_t j, int64_t n, Scratch &sc, float *acc,
                             int64_t lda) {
  const TokenScale &ts = p.kv.value_tokens;
  const int64_t base = u.b * ts.batch + ts.origin[u.b] + j - p.prefix.len;
  for (int64_t r = 0; r < u.np * p.G; ++r) {
    float *s = sc.scores + r * kKeyTile, extra = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      s[t] *= ts.scale[base + t];
      if (ts.offset) extra += s[t] * ts.offset[base + t];
    }
    float &column = acc[r * lda + p.D];
    column = column * sc.corr[r] + extra;
  }
}

// Dropout of a tile's probabilities (exp(s - m), already counted in l): p *= Z / keep_prob, for P.V only.
inline void DropTile(const Problem &p, const Unit &u, int64_t j, int64_t n, Scratch &sc) {
  for (int64_t r = 0; r < u.np * p.G; ++r) {
    ApplyDropoutRow(p.dropout, u.b, u.kh * p.G + r % p.G, u.p0 + r / p.G, j, n, sc.scores + r * kKeyTile);
  }
}

// acc = acc * corr + P.V for the tile's probabilities (sc.scores) and values v.
template <class E>
inline void AccumulateValues(const Problem &p, int64_t rows, Scratch &sc, const E *const *v, int64_t n, float *acc,
                             int64_t lda) {
#if defined(MSA_BF16_PAIRS)
  if constexpr (std::is_same<E, BFloat16>::value) {
    if (UsesPairs<E>(p)) {
      AccumulateTileManyPairs(acc, lda, rows, sc.corr, sc.scores, kKeyTile, v, n, p.D);
      return;
    }
  }
#endif
  AccumulateTile(acc, lda, rows, sc.corr, sc.scores, kKeyTile, v, n, p.D, sc.row);
}

// Online softmax over keys [u.t0, u.t1) of the key sequence: running max m, sum l and unnormalised acc per
// row (lda floats: D, plus the per-token value offsets' column).
// fresh: start the softmax; otherwise continue the (m, l, acc) of the unit's earlier keys. then: the unit the
// caller runs next, whose first keys a phased unit asks for during its last values.
template <class E, class R>
void AttendUnit(const Problem &p, const Unit &u, Scratch &sc, float *m, float *l, float *acc, int64_t lda,
                bool fresh = true, const Unit *then = nullptr) {
  const int64_t rows = u.np * p.G, D = p.D;
  LoadQueryRows(p, u, sc);
  if (fresh) {
    std::fill(m, m + rows, kNegInf);
    std::fill(l, l + rows, 0.f);
    std::fill(acc, acc + rows * lda, 0.f);
  }
  // The hardware prefetcher alone leaves a decode unit (few rows, every K/V byte used once) waiting on memory
  // between its compute phases, contiguous rows or not: one phase ahead, the tile's values are asked for while
  // its scores are computed, and the next tile's keys while its values are accumulated (measured, one thread,
  // B=4 N=40 S=8192 D=128: fp16 51-65 -> 42-49 ms, bf16 68 -> 47-52 ms; prefetching a whole tile ahead, or into
  // L1, was slower; int8 rows, 2 lines, gained nothing). A block of many rows (prefill) packs each tile at
  // once, stalling on its first touch, and rows that do not follow each other in memory (token-major layouts,
  // paged caches) defeat the hardware prefetcher: there the next tile's rows are asked for while this one is
  // computed.
  const bool phased = rows < kPrefetchRows && sizeof(E) >= 2;
  const bool prefetch = !phased && (p.kv.paged || p.kv.rows.seq != D || rows >= kPrefetchRows);
  const bool discard_mask = p.mask.data != nullptr && !p.mask.additive;
  const E *k[kKeyTile], *v[kKeyTile], *next_k[kKeyTile], *next_v[kKeyTile];
  for (int64_t j = u.t0; j < u.t1; j += kKeyTile) {
    const int64_t n = std::min(kKeyTile, u.t1 - j);
    if (prefetch && j + kKeyTile < u.t1) {
      const int64_t next_n = std::min(kKeyTile, u.t1 - j - kKeyTile);
      KeyTileRows(p, u.b, u.kh, j + kKeyTile, next_n, next_k, next_v);
      PrefetchRows(next_k, next_n, D);
      PrefetchRows(next_v, next_n, D);
    }
    if (discard_mask && TileMasked(p, u, j, n)) continue;
    if (TileOutsideBand(p, u, j, n)) continue;
    KeyTileRows(p, u.b, u.kh, j, n, k, v);
    if (phased) PrefetchRows(v, n, D);
    TileScores<E, R>(p, u, j, n, k, sc);
    const bool any = SoftmaxTileRows(sc.scores, kKeyTile, rows, n, m, l, sc.corr);
    if (!any) continue;  // every key of the tile is masked for every row: its values are never needed
    if (p.full_quant.enabled) continue;  // first pass: only m and l; QuantizedValues does the values
    if (p.kv.value_tokens.enabled()) ApplyValueTokens(p, u, j, n, sc, acc, lda);
    if (p.dropout.enabled()) DropTile(p, u, j, n, sc);
    if (phased && j + kKeyTile < u.t1) {
      const int64_t next_n = std::min(kKeyTile, u.t1 - j - kKeyTile);
      KeyTileRows(p, u.b, u.kh, j + kKeyTile, next_n, next_k, next_v);
      PrefetchRows(next_k, next_n, D);
    } else if (phased && then != nullptr) {
      const int64_t next_n = std::min(kKeyTile, then->t1 - then->t0);
      KeyTileRows(p, then->b, then->kh, then->t0, next_n, next_k, next_v);
      PrefetchRows(next_k, next_n, D);
    }
    AccumulateValues(p, rows, sc, v, n, acc, lda);
  }
}

// Full quantization, second pass (after AttendUnit gave each row its final m and l): acc = P8 . V with
// P8 = sat_int8(round(exp(s - m) / l * quant1)), the integers exact in float32.
template <class E, class R>
void QuantizedValues(const Problem &p, const Unit &u, Scratch &sc, const float *m, const float *l, float *acc,
                     int64_t lda) {
  const int64_t rows = u.np * p.G, D = p.D;
  std::fill(acc, acc + rows * lda, 0.f);
  for (int64_t r = 0; r < rows; ++r) sc.corr[r] = 1.f;
  const E *k[kKeyTile], *v[kKeyTile];
  for (int64_t j = u.t0; j < u.t1; j += kKeyTile) {
    const int64_t n = std::min(kKeyTile, u.t1 - j);
    KeyTileRows(p, u.b, u.kh, j, n, k, v);
    TileScores<E, R>(p, u, j, n, k, sc);
    for (int64_t r = 0; r < rows; ++r) {
      float *s = sc.scores + r * kKeyTile;
      for (int64_t t = 0; t < n; ++t) {
        const float prob = m[r] == kNegInf ? 0.f : std::exp(s[t] - m[r]) / l[r];
        s[t] = static_cast<float>(SaturateToInt8(prob * p.full_quant.quant1));
      }
    }
    AccumulateTile(acc, lda, rows, sc.corr, sc.scores, kKeyTile, v, n, D, sc.row);
  }
}

// The finished output row o (D values, plus the per-token value offsets' column) and its lse, from the merged
// (m, l); returns whether the row has output (false: zero output).
inline bool FinishRow(const Problem &p, const Unit &u, int64_t h, bool computed, float m, float l, float *o,
                      float *lse) {
  const int64_t D = p.D;
  if (computed) {
    if (p.kv.value_tokens.enabled()) {
      for (int64_t d = 0; d < D; ++d) o[d] += o[D];
    }
    if (p.kv.antiquant.enabled()) ApplyValueAntiquant(p.kv.antiquant, u.kh, D, o);
    if (p.full_quant.enabled) {  // o holds (P8 . V) / l
      for (int64_t d = 0; d < D; ++d) o[d] *= l * p.full_quant.deq2;
    }
  }
  if (!p.sink.empty()) {  // the sink joins the denominator: l' = l * e^(m - m') + e^(sink - m')
    const float sink = p.sink[h], m_all = std::max(m, sink);
    const float kept = computed ? l * std::exp(m - m_all) : 0.f, l_all = kept + std::exp(sink - m_all);
    if (computed) {
      const float f = kept / l_all;
      for (int64_t d = 0; d < D; ++d) o[d] *= f;
    }
    *lse = m_all + std::log(l_all);
    return computed;
  }
  *lse = computed ? m + std::log(l) : INFINITY;
  return computed;
}

// The working memory of a call (split results and per-thread scratch), floats elements, 64-byte aligned: one
// buffer per calling thread, kept for its next call (no allocation once it has grown). A call's workers use
// it only inside that call, and a thread never runs two calls at once, so no two calls share it. Throws
// std::bad_alloc (before any parallel work) when it cannot grow.
inline float *CallArena(int64_t floats) {
  thread_local std::vector<float> arena;
  if (static_cast<int64_t>(arena.size()) < floats + 16) {
    std::vector<float>().swap(arena);  // free the old one first
    arena.resize(static_cast<size_t>(floats + 16));
  }
  const uintptr_t at = reinterpret_cast<uintptr_t>(arena.data());
  return reinterpret_cast<float *>((at + 63) & ~static_cast<uintptr_t>(63));
}

// Keys per chunk of a decode unit covering every KV head (see Run), 0 where units take one head: a head-major
// paged cache's block when it is a whole number of tiles (its heads' rows then follow each other). Only for
// the phased decode units (AttendUnit) without a shared prefix (its own layout) or full quantization (two
// passes over the keys). Token-major caches (a tile of tokens holding every head's rows) were measured too:
// one AttendUnit call per head and tile cost more than the longer runs of memory gained.
template <class E>
int64_t HeadChunk(const Problem &p, int64_t rows) {
  if (rows >= kPrefetchRows || sizeof(E) < 2 || p.kvN < 2 || p.prefix.len > 0 || p.full_quant.enabled) return 0;
  if (p.kv.paged) {
    const PagedKv &pg = p.kv.pages;
    const bool head_major = pg.slot_stride == p.D && pg.head_stride == pg.block_size * p.D;
    return head_major && pg.block_size % kKeyTile == 0 ? pg.block_size : 0;
  }
  return 0;
}

template <class E, class R>
void Run(const Problem &p) {
  const int64_t G = p.G, D = p.D;
  const int64_t lda = D + (p.kv.value_tokens.enabled() ? 1 : 0);  // accumulator row
  int64_t max_q = 0, max_keys = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    max_q = std::max(max_q, p.q_len[b]);
    max_keys = std::max(max_keys, p.prefix.len + p.kv_len[b]);
  }
  const int64_t block = std::max<int64_t>(1, std::min(max_q, kMaxBlockRows / G));  // query rows per unit
  const int64_t rows = block * G;
  const int64_t blocks = (max_q + block - 1) / block;
  // A head-major paged cache is read by decode units covering every KV head, block by block: a block's heads
  // lie together, so memory is read in runs of kvN blocks' rows instead of one head's block-sized pieces
  // (measured, raw reads of the decode pattern at 2 threads: per-head blocks ~15 % slower than a contiguous
  // cache, all heads of a block as fast).
  // Only while the kvN times fewer units can still give each thread two (splits of the keys included).
  ThreadPool &pool = ThreadPool::Instance();
  const int threads = pool.threads();
  const int64_t chunk = HeadChunk<E>(p, rows);
  const int64_t most_splits = std::max<int64_t>(1, max_keys / kMinSplitKeys);
  const int64_t per_head_units = p.B * p.kvN * blocks * most_splits;
  const bool grouped = chunk > 0 && p.B * blocks * most_splits >= std::min<int64_t>(per_head_units, 2 * threads);
  const int64_t heads = grouped ? p.kvN : 1;  // KV heads per unit
  const int64_t unit_rows = heads * rows;
  const int64_t items = p.B * (p.kvN / heads) * blocks;
  if (items == 0) return;
  // Split the keys only when the items alone cannot keep every thread busy; full quantization needs each
  // row's final softmax before its second pass, so it never splits.
  int64_t splits = std::max<int64_t>(1, (4 * threads + items - 1) / items);
  splits = std::min(splits, std::max<int64_t>(1, max_keys / kMinSplitKeys));
  if (p.full_quant.enabled) splits = 1;
  const int64_t units = items * splits;

  // Without splits a unit finishes its own rows from per-thread buffers; with splits the partial results wait
  // in part_* (split s of item i at unit i * splits + s) for the merge.
  const bool direct = splits == 1;
  const int64_t buffers = direct ? threads : units;
  const int64_t scratch_floats = Scratch::Floats(rows, D, p.rope.Dr);
  float *const arena = CallArena(2 * buffers * unit_rows + buffers * unit_rows * lda + threads * scratch_floats);
  float *const part_m = arena, *const part_l = part_m + buffers * unit_rows;
  float *const part_acc = part_l + buffers * unit_rows;
  float *const scratch = part_acc + buffers * unit_rows * lda;
  // (b, kh, rows) of an item, np <= 0 past the batch's window, and the keys its rows may see. The last query
  // blocks come first: under a causal band they have the most keys, and starting them early balances threads.
  auto item_of = [&](int64_t item) {
    Unit u{};
    u.b = item / (p.kvN / heads * blocks);
    u.kh = item / blocks % (p.kvN / heads) * heads;
    u.p0 = (blocks - 1 - item % blocks) * block;
    u.np = std::min(block, p.q_len[u.b] - u.p0);
    if (u.np > 0) UnitKeyRange(p, u, p.prefix.len + p.kv_len[u.b], &u.t0, &u.t1);
    return u;
  };
  // Merges the splits of a unit's rows (row r of KV head kh + x, split s at m[s * unit_rows + x * rows + r],
  // acc[(s * unit_rows + x * rows + r) * lda]), finishes and stores them.
  auto store_rows = [&](Unit u, const float *m, const float *l, const float *acc, float *o) {
    const int64_t first_head = u.kh;
    for (int64_t x = 0; x < heads; ++x) {
      u.kh = first_head + x;
      for (int64_t r = 0; r < u.np * G; ++r) {
        float m_row = kNegInf, l_row = 0.f, lse = INFINITY;
        const int64_t h = u.kh * G + r % G, at = x * rows + r;
        bool computed = MergeSplits(m + at, l + at, unit_rows, acc + at * lda, unit_rows * lda, splits, lda, o,
                                    &m_row, &l_row);
        computed = FinishRow(p, u, h, computed, m_row, l_row, o, &lse);
        StoreOutputRow(p, u.b, h, p.q_start[u.b] + u.p0 + r / G, o, computed, lse);
        if (p.stats.enabled()) StoreSoftmaxStats(p, u.b, h, p.q_start[u.b] + u.p0 + r / G, computed, m_row, l_row);
      }
    }
  };

  pool.ParallelFor(units, [&](int64_t w, int slot) {
    Unit u = item_of(w / splits);
    const int64_t s = w % splits, len = u.t1 - u.t0, at = direct ? slot : w;
    if (u.np <= 0) return;
    float *m = part_m + at * unit_rows, *l = part_l + at * unit_rows, *acc = part_acc + at * unit_rows * lda;
    Scratch sc(scratch + slot * scratch_floats, rows, D, p.rope.Dr);
    // split boundaries on tile multiples from t0, so only the last tile of a range is partial
    const int64_t part = len <= 0 ? 0 : ((len + splits - 1) / splits + kKeyTile - 1) / kKeyTile * kKeyTile;
    const int64_t t0 = u.t0;
    u.t0 = std::min(u.t1, t0 + s * part);
    u.t1 = std::min(u.t1, u.t0 + part);
    if (u.t0 >= u.t1) {
      std::fill(m, m + unit_rows, kNegInf);  // no visible key in this split
    } else if (heads > 1) {
      auto chunk_unit = [&](int64_t c, int64_t x) {
        Unit uc = u;
        uc.kh = u.kh + x;
        uc.t0 = c;
        uc.t1 = std::min(u.t1, c + chunk);
        return uc;
      };
      for (int64_t c = u.t0; c < u.t1; c += chunk) {
        for (int64_t x = 0; x < heads; ++x) {
          const bool last = x + 1 == heads && c + chunk >= u.t1;
          const Unit then = x + 1 < heads ? chunk_unit(c, x + 1) : chunk_unit(c + chunk, 0);
          AttendUnit<E, R>(p, chunk_unit(c, x), sc, m + x * rows, l + x * rows, acc + x * rows * lda, lda,
                           c == u.t0, last ? nullptr : &then);
        }
      }
    } else {
      AttendUnit<E, R>(p, u, sc, m, l, acc, lda);
      if (p.full_quant.enabled) QuantizedValues<E, R>(p, u, sc, m, l, acc, lda);
    }
    if (direct) store_rows(u, m, l, acc, sc.row);
  });
  if (direct) return;

  // every split is done: merge them, finish and store each row
  pool.ParallelFor(items, [&](int64_t item, int slot) {
    const Unit u = item_of(item);
    if (u.np <= 0) return;
    const int64_t first = item * splits * unit_rows;
    store_rows(u, part_m + first, part_l + first, part_acc + first * lda,
               Scratch(scratch + slot * scratch_floats, rows, D, p.rope.Dr).row);
  });
}

}  // namespace detail

namespace detail {
template <class E>
void RunWithKeys(const Problem &p) {
  if (!p.rope.enabled()) {
    Run<E, E>(p);  // no rope keys: R is never used
  } else if (p.q_dtype == abi::kBfloat16) {
    Run<E, BFloat16>(p);
  } else {
    Run<E, Half>(p);
  }
}
}  // namespace detail

// Runs a problem that CheckProblem accepted.
inline void RunAttention(const Problem &p) {
  switch (p.kv.dtype) {
    case abi::kFloat16: detail::RunWithKeys<Half>(p); break;
    case abi::kBfloat16: detail::RunWithKeys<BFloat16>(p); break;
    case abi::kInt8: detail::RunWithKeys<int8_t>(p); break;
    case abi::kFloat32: detail::Run<float, float>(p); break;  // speed_fusion_attention's float32 (no rope)
    default: break;  // rejected by CheckProblem
  }
}

}  // namespace msa
