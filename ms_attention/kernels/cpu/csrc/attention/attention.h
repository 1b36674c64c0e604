// The attention core: runs a validated Problem.
//
// A unit of work is (batch, KV head, block of query positions, split of the key range). It streams its keys
// and values once, in tiles of kKeyTile, for all its query rows together (the G heads of the GQA group times
// the positions of the block): score tile, bias and mask, online softmax, value tile. Splits of the key
// range (split-K, flash-decoding) keep every thread busy when batch x heads alone cannot; their partial
// results are merged afterwards. Scratch is allocated once per call, before the parallel work, and
// nothing in it can fail: every index was checked by CheckProblem (validate.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/kv_access.h"
#include "attention/output_store.h"
#include "attention/problem.h"
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

struct Unit {
  int64_t b, kh, p0, np, t0, t1;  // query positions [p0, p0 + np) of the window, keys [t0, t1) of the window
};

// One thread's working memory, carved from a buffer sized by Floats().
struct Scratch {
  float *q;       // rows x D: query rows, scaled (and folded with the key antiquant scale)
  float *bias;    // rows: score bias per row (the folded key antiquant offset)
  float *scores;  // rows x kKeyTile
  float *corr;    // rows: online softmax corrections of the current tile
  float *row;     // D: a widened key/value row (scalar path), the merged output row
  static int64_t Floats(int64_t rows, int64_t D) { return rows * D + rows + rows * kKeyTile + rows + D; }
  Scratch(float *base, int64_t rows, int64_t D)
      : q(base), bias(q + rows * D), scores(bias + rows), corr(scores + rows * kKeyTile), row(corr + rows) {}
};

template <class T>
inline void AddRow(const T *src, int64_t n, float *dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] += ToFloat(src[j]);
}

// One query row, widened to float32.
inline void LoadQueryRow(const Problem &p, int64_t offset, float *dst) {
  switch (p.q_dtype) {
    case abi::kFloat16: simd::LoadRow(static_cast<const Half *>(p.query) + offset, p.D, dst); break;
    case abi::kBfloat16: simd::LoadRow(static_cast<const BFloat16 *>(p.query) + offset, p.D, dst); break;
    default: simd::LoadRow(static_cast<const float *>(p.query) + offset, p.D, dst); break;
  }
}

// dst[0, n) += the score bias from element offset (stored in the query dtype).
inline void AddBiasRow(const ScoreBias &bias, int64_t offset, int64_t n, float *dst) {
  switch (bias.dtype) {
    case abi::kFloat16: AddRow(static_cast<const Half *>(bias.data) + offset, n, dst); break;
    case abi::kBfloat16: AddRow(static_cast<const BFloat16 *>(bias.data) + offset, n, dst); break;
    default: AddRow(static_cast<const float *>(bias.data) + offset, n, dst); break;
  }
}

// Row r of a unit is query position p0 + r / G of its window, head kh * G + r % G.
inline void LoadQueryRows(const Problem &p, const Unit &u, Scratch &sc) {
  const int64_t G = p.G, D = p.D;
  for (int64_t r = 0; r < u.np * G; ++r) {
    const int64_t h = u.kh * G + r % G, pos = p.q_start[u.b] + u.p0 + r / G;
    float *q = sc.q + r * D;
    LoadQueryRow(p, p.q_rows.At(u.b, h, pos), q);
    for (int64_t d = 0; d < D; ++d) q[d] *= p.scale;
    sc.bias[r] = p.kv.antiquant.enabled() ? FoldKeyAntiquant(p.kv.antiquant, u.kh, D, q) : 0.f;
  }
}

// True when the mask discards all n keys from stored position kv0 for every query position of the unit.
inline bool TileMasked(const Problem &p, const Unit &u, int64_t kv0, int64_t n) {
  for (int64_t i = 0; i < u.np; ++i) {
    const uint8_t *m = p.mask.data + u.b * p.mask.batch + (p.q_start[u.b] + u.p0 + i) * p.mask.row + kv0;
    for (int64_t j = 0; j < n; ++j) {
      if (m[j] == 0) return false;
    }
  }
  return true;
}

// The per-row bias, the score bias (pse) and the mask, on the scores of keys [kv0, kv0 + n).
inline void BiasAndMask(const Problem &p, const Unit &u, int64_t kv0, int64_t n, Scratch &sc) {
  if (!p.kv.antiquant.enabled() && p.bias.data == nullptr && p.mask.data == nullptr) return;
  const int64_t G = p.G;
  for (int64_t r = 0; r < u.np * G; ++r) {
    float *s = sc.scores + r * kKeyTile;
    const int64_t h = u.kh * G + r % G, pos = p.q_start[u.b] + u.p0 + r / G;
    if (sc.bias[r] != 0.f) {
      for (int64_t j = 0; j < n; ++j) s[j] += sc.bias[r];
    }
    if (p.bias.data != nullptr) {
      AddBiasRow(p.bias, u.b * p.bias.batch + h * p.bias.head + pos * p.bias.row + kv0, n, s);
    }
    if (p.mask.data != nullptr) {
      const uint8_t *m = p.mask.data + u.b * p.mask.batch + pos * p.mask.row + kv0;
      for (int64_t j = 0; j < n; ++j) s[j] = m[j] ? kNegInf : s[j];
    }
  }
}

template <class E>
inline void PrefetchRows(const E *const *k, const E *const *v, int64_t n, int64_t D) {
  const int64_t bytes = D * static_cast<int64_t>(sizeof(E));
  for (int64_t j = 0; j < n; ++j) {
    const char *kr = reinterpret_cast<const char *>(k[j]), *vr = reinterpret_cast<const char *>(v[j]);
    for (int64_t x = 0; x < bytes; x += 64) {
      __builtin_prefetch(kr + x, 0, 2);
      __builtin_prefetch(vr + x, 0, 2);
    }
  }
}

// Online softmax over keys [u.t0, u.t1) of the window: running max m, sum l and unnormalised acc per row.
template <class E>
void AttendUnit(const Problem &p, const Unit &u, Scratch &sc, float *m, float *l, float *acc) {
  const int64_t rows = u.np * p.G, D = p.D;
  LoadQueryRows(p, u, sc);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.f);
  std::fill(acc, acc + rows * D, 0.f);
  // Rows that do not follow each other in memory (token-major layouts, paged caches) defeat the hardware
  // prefetcher, and a block of many rows (prefill) packs each tile at once, stalling on its first touch: ask
  // for the next tile's rows while this one is computed.
  const bool prefetch = p.kv.paged || p.kv.rows.seq != D || rows >= kPrefetchRows;
  const E *k[kKeyTile], *v[kKeyTile], *next_k[kKeyTile], *next_v[kKeyTile];
  for (int64_t t = u.t0; t < u.t1; t += kKeyTile) {
    const int64_t n = std::min(kKeyTile, u.t1 - t), kv0 = p.kv_start[u.b] + t;
    if (prefetch && t + kKeyTile < u.t1) {
      const int64_t next_n = std::min(kKeyTile, u.t1 - t - kKeyTile);
      KvTileRows(p.kv, u.b, u.kh, kv0 + kKeyTile, next_n, next_k, next_v);
      PrefetchRows(next_k, next_v, next_n, D);
    }
    if (p.mask.data != nullptr && TileMasked(p, u, kv0, n)) continue;
    KvTileRows(p.kv, u.b, u.kh, kv0, n, k, v);
    ScoreTile(sc.q, D, rows, k, n, D, sc.scores, kKeyTile, sc.row);
    BiasAndMask(p, u, kv0, n, sc);
    const bool any = SoftmaxTileRows(sc.scores, kKeyTile, rows, n, m, l, sc.corr);
    if (!any) continue;  // every key of the tile is masked for every row: its values are never needed
    AccumulateTile(acc, D, rows, sc.corr, sc.scores, kKeyTile, v, n, D, sc.row);
  }
}

template <class E>
void Run(const Problem &p) {
  const int64_t G = p.G, D = p.D;
  int64_t max_q = 0, max_kv = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    max_q = std::max(max_q, p.q_len[b]);
    max_kv = std::max(max_kv, p.kv_len[b]);
  }
  const int64_t block = std::max<int64_t>(1, std::min(max_q, kMaxBlockRows / G));  // query positions per unit
  const int64_t rows = block * G;
  const int64_t blocks = (max_q + block - 1) / block;
  const int64_t items = p.B * p.kvN * blocks;
  if (items == 0) return;
  ThreadPool &pool = ThreadPool::Instance();
  const int threads = pool.threads();
  // Split the keys only when the items alone cannot keep every thread busy.
  int64_t splits = std::max<int64_t>(1, (4 * threads + items - 1) / items);
  splits = std::min(splits, std::max<int64_t>(1, max_kv / kMinSplitKeys));
  const int64_t units = items * splits;

  std::vector<float> part_m(units * rows), part_l(units * rows), part_acc(units * rows * D);
  const int64_t scratch_floats = Scratch::Floats(rows, D);
  std::vector<float> scratch(threads * scratch_floats);
  auto item_of = [&](int64_t item) {  // (b, kh, positions) of an item; np <= 0 past the batch's window
    Unit u{};
    u.b = item / (p.kvN * blocks);
    u.kh = item / blocks % p.kvN;
    u.p0 = item % blocks * block;
    u.np = std::min(block, p.q_len[u.b] - u.p0);
    return u;
  };

  pool.ParallelFor(units, [&](int64_t w, int slot) {
    Unit u = item_of(w / splits);
    const int64_t len = p.kv_len[u.b], s = w % splits;
    // split boundaries on tile multiples, so only the last tile of a range is partial
    const int64_t chunk = ((len + splits - 1) / splits + kKeyTile - 1) / kKeyTile * kKeyTile;
    u.t0 = std::min(len, s * chunk);
    u.t1 = std::min(len, u.t0 + chunk);
    float *m = part_m.data() + w * rows, *l = part_l.data() + w * rows, *acc = part_acc.data() + w * rows * D;
    if (u.np <= 0 || u.t0 >= u.t1) {
      std::fill(m, m + rows, kNegInf);
      return;
    }
    Scratch sc(scratch.data() + slot * scratch_floats, rows, D);
    AttendUnit<E>(p, u, sc, m, l, acc);
  });

  // every split is done: merge them, finish and store each row
  pool.ParallelFor(items, [&](int64_t item, int slot) {
    const Unit u = item_of(item);
    float *o = Scratch(scratch.data() + slot * scratch_floats, rows, D).row;
    const int64_t first = item * splits * rows;  // row r of split s: first + s * rows + r
    for (int64_t r = 0; r < u.np * G; ++r) {
      float m = kNegInf, l = 0.f;
      const bool computed = MergeSplits(part_m.data() + first + r, part_l.data() + first + r, rows,
                                        part_acc.data() + (first + r) * D, rows * D, splits, D, o, &m, &l);
      if (computed && p.kv.antiquant.enabled()) ApplyValueAntiquant(p.kv.antiquant, u.kh, D, o);
      StoreOutputRow(p, u.b, u.kh * G + r % G, p.q_start[u.b] + u.p0 + r / G, o, computed, m, l);
    }
  });
}

}  // namespace detail

// Runs a problem that CheckProblem accepted.
inline void RunAttention(const Problem &p) {
  switch (p.kv.dtype) {
    case abi::kFloat16: detail::Run<Half>(p); break;
    case abi::kBfloat16: detail::Run<BFloat16>(p); break;
    case abi::kInt8: detail::Run<int8_t>(p); break;
    default: break;  // rejected by CheckProblem
  }
}

}  // namespace msa
