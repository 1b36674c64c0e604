// Selected-block (sparse) attention on the attention core's tiles: sparse_flash_attention's compute.
//
// A unit of work is one query row, one KV head and a chunk of that head's G query heads. It walks the row's
// selection (sparse_indices until the first -1, each index a block of sparse_block_size tokens, clipped to the
// row's visible length), gathers the pointers of kTile selected key / value / key_rope rows at a time, and runs the
// core's score tile (score_tile.h), online softmax (softmax.h) and value tile (value_tile.h) on them. Only the
// selected rows are ever read: the cost grows with the number of selected tokens, not with the stored length.
//
// Everything here runs after validation (sparse_flash_attention.cpp): every index, length and block table entry
// it uses has been checked, and it cannot fail.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <vector>

#include "attention/numeric.h"
#include "attention/score_tile.h"
#include "attention/simd.h"
#include "attention/softmax.h"
#include "attention/tile_pack.h"
#include "attention/value_tile.h"
#include "parallel.h"

namespace msa {

struct SparseProblem {
  // element type of query / key / value / rope and of the output
  bool bf16 = false;
  int64_t B = 0, N1 = 0, N2 = 1, G = 1, D = 512, Dr = 0;  // Dr = 0: no rope
  bool q_tnd = false;
  int64_t S1 = 0, T1 = 0;   // BSND query length, TND total query rows
  int64_t K = 0;            // sparse_size, entries per (row, kv head) in sparse_indices
  int64_t sparse_block_size = 1;
  bool causal = false;      // sparse_mode 3
  float scale = 1.f;
  // per batch: valid query rows, first query row (TND), kv length, first kv row (TND kv)
  std::vector<int64_t> q_len, q_start, kv_len, kv_start;
  // kv rows: kind 0 = (B, S2) dense, 1 = TND, 2 = paged
  int kv_kind = 0;
  int64_t S2 = 0, block_size = 0, max_blocks = 0;
  const int32_t *block_table = nullptr;
  const void *query = nullptr, *query_rope = nullptr, *key = nullptr, *value = nullptr, *key_rope = nullptr;
  const int32_t *indices = nullptr;
  void *out = nullptr;
  float *softmax_max = nullptr, *softmax_sum = nullptr;  // null when not returned

  int64_t Rows() const { return q_tnd ? T1 : B * S1; }
  // the kv storage row (before the head axis) of token t of batch b
  int64_t KvRow(int64_t b, int64_t t) const {
    if (kv_kind == 2) return static_cast<int64_t>(block_table[b * max_blocks + t / block_size]) * block_size + t % block_size;
    if (kv_kind == 1) return kv_start[b] + t;
    return b * S2 + t;
  }
};

// softmax_max / softmax_sum of a row that sees no key (flash_attention_score's convention); its output is 0
constexpr float kEmptyRowMax = -FLT_MAX, kEmptyRowSum = FLT_MAX;
constexpr int64_t kSparseHeadChunk = 16;  // head chunks are multiples of 16 (16 rows take the core's packed tiles)
#if defined(MSA_SIMD)
constexpr int64_t kSparseTile = detail::kPackKeys;
#else
constexpr int64_t kSparseTile = 32;
#endif

namespace detail {

struct SparseScratch {
  std::vector<float> q, qr, acc, s, sr, m, l, corr, row;
};

inline SparseScratch &ThreadSparseScratch() {
  thread_local SparseScratch scratch;
  return scratch;
}

template <class E>
inline void StoreSparseRow(E *dst, const float *o, int64_t D, bool computed);
template <>
inline void StoreSparseRow<Half>(Half *dst, const float *o, int64_t D, bool computed) {
  for (int64_t d = 0; d < D; ++d) dst[d].bits = computed ? FloatToHalf(o[d]) : 0;
}
template <>
inline void StoreSparseRow<BFloat16>(BFloat16 *dst, const float *o, int64_t D, bool computed) {
  for (int64_t d = 0; d < D; ++d) dst[d].bits = computed ? FloatToBF16(o[d]) : 0;
}

// (batch, position inside the batch) of query row `row`, or false when the row is past its batch's valid rows
inline bool SparseRowBatch(const SparseProblem &p, int64_t row, int64_t *b, int64_t *s) {
  if (!p.q_tnd) {
    *b = row / p.S1;
    *s = row % p.S1;
    return *s < p.q_len[*b];
  }
  for (int64_t i = 0; i < p.B; ++i) {  // rows past the last batch cannot occur: the lengths sum to T1
    if (row < p.q_start[i] + p.q_len[i]) {
      *b = i;
      *s = row - p.q_start[i];
      return row >= p.q_start[i];
    }
  }
  return false;
}

template <class E>
void SparseUnit(const SparseProblem &p, int64_t row, int64_t h2, int64_t h0, int64_t rows) {
  const int64_t D = p.D, Dr = p.Dr;
  const int64_t head0 = h2 * p.G + h0;  // first query head of the chunk
  E *out = static_cast<E *>(p.out) + (row * p.N1 + head0) * D;
  auto stats_at = [&](int64_t r) {
    const int64_t g = h0 + r;
    if (p.q_tnd) return (h2 * p.T1 + row) * p.G + g;
    return ((row / p.S1 * p.N2 + h2) * p.S1 + row % p.S1) * p.G + g;
  };
  int64_t b = 0, s = 0;
  int64_t visible = 0;
  if (SparseRowBatch(p, row, &b, &s)) {
    visible = p.kv_len[b];
    if (p.causal) visible = std::min(visible, p.kv_len[b] - p.q_len[b] + s + 1);
  }
  SparseScratch &w = ThreadSparseScratch();
  w.q.resize(rows * D);
  w.qr.resize(rows * std::max<int64_t>(Dr, 1));
  w.acc.assign(rows * D, 0.f);
  w.s.resize(rows * kSparseTile);
  w.sr.resize(rows * kSparseTile);
  w.m.assign(rows, kNegInf);
  w.l.assign(rows, 0.f);
  w.corr.resize(rows);
  w.row.resize(std::max<int64_t>(D, 1));
  const E *q = static_cast<const E *>(p.query) + (row * p.N1 + head0) * D;
  for (int64_t r = 0; r < rows; ++r) {
    simd::LoadRow(q + r * D, D, w.q.data() + r * D);
    for (int64_t d = 0; d < D; ++d) w.q[r * D + d] *= p.scale;
  }
  if (Dr > 0) {
    const E *qr = static_cast<const E *>(p.query_rope) + (row * p.N1 + head0) * Dr;
    for (int64_t r = 0; r < rows; ++r) {
      simd::LoadRow(qr + r * Dr, Dr, w.qr.data() + r * Dr);
      for (int64_t d = 0; d < Dr; ++d) w.qr[r * Dr + d] *= p.scale;
    }
  }
  const E *kptr[kSparseTile], *vptr[kSparseTile], *krptr[kSparseTile];
  const E *key = static_cast<const E *>(p.key), *value = static_cast<const E *>(p.value);
  const E *key_rope = static_cast<const E *>(p.key_rope);
  int64_t n = 0;
  bool any = false;
  auto flush = [&]() {
    if (n == 0) return;
    ScoreTile<E>(w.q.data(), D, rows, kptr, n, D, w.s.data(), kSparseTile, w.row.data());
    if (Dr > 0) {
      ScoreTile<E>(w.qr.data(), Dr, rows, krptr, n, Dr, w.sr.data(), kSparseTile, w.row.data());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) w.s[r * kSparseTile + j] += w.sr[r * kSparseTile + j];
      }
    }
    any |= SoftmaxTileRows(w.s.data(), kSparseTile, rows, n, w.m.data(), w.l.data(), w.corr.data());
    AccumulateTile<E>(w.acc.data(), D, rows, w.corr.data(), w.s.data(), kSparseTile, vptr, n, D, w.row.data());
    n = 0;
  };
  const int32_t *sel = visible > 0 ? p.indices + (row * p.N2 + h2) * p.K : nullptr;
  for (int64_t i = 0; sel != nullptr && i < p.K && sel[i] != -1; ++i) {
    const int64_t first = static_cast<int64_t>(sel[i]) * p.sparse_block_size;
    const int64_t last = std::min(first + p.sparse_block_size, visible);
    for (int64_t t = first; t < last; ++t) {
      const int64_t kv_row = p.KvRow(b, t) * p.N2 + h2;
      kptr[n] = key + kv_row * D;
      vptr[n] = value + kv_row * D;
      if (Dr > 0) krptr[n] = key_rope + kv_row * Dr;
      if (++n == kSparseTile) flush();
    }
  }
  flush();
  for (int64_t r = 0; r < rows; ++r) {
    const bool computed = any && w.l[r] > 0.f;
    if (computed) {
      const float inv = 1.f / w.l[r];
      for (int64_t d = 0; d < D; ++d) w.acc[r * D + d] *= inv;
    }
    StoreSparseRow<E>(out + r * D, w.acc.data() + r * D, D, computed);
    if (p.softmax_max != nullptr) {
      p.softmax_max[stats_at(r)] = computed ? w.m[r] : kEmptyRowMax;
      p.softmax_sum[stats_at(r)] = computed ? w.l[r] : kEmptyRowSum;
    }
  }
}

}  // namespace detail

// Query heads per unit: all G heads of a KV head when there are enough (row, kv head) units for the threads (a
// gathered key tile then serves every head), else the fewest chunks of a multiple of kSparseHeadChunk heads that
// give each thread a unit (decode of one sequence: 128 heads on one row).
inline int64_t SparseHeadsPerUnit(const SparseProblem &p, int64_t threads) {
  const int64_t units = std::max<int64_t>(1, p.Rows() * p.N2);
  const int64_t chunks = std::max<int64_t>(1, (threads + units - 1) / units);
  const int64_t heads = (p.G + chunks - 1) / chunks;
  return std::min(p.G, (heads + kSparseHeadChunk - 1) / kSparseHeadChunk * kSparseHeadChunk);
}

// Runs every (query row, kv head, head chunk) unit on the thread pool.
inline void RunSparse(const SparseProblem &p) {
  ThreadPool &pool = ThreadPool::Instance();
  const int64_t per_unit = SparseHeadsPerUnit(p, pool.threads());
  const int64_t chunks = (p.G + per_unit - 1) / per_unit;
  const int64_t units = p.Rows() * p.N2 * chunks;
  pool.ParallelFor(units, [&](int64_t u, int) {
    const int64_t chunk = u % chunks, h2 = u / chunks % p.N2, row = u / chunks / p.N2;
    const int64_t h0 = chunk * per_unit, rows = std::min(per_unit, p.G - h0);
    if (p.bf16) {
      detail::SparseUnit<BFloat16>(p, row, h2, h0, rows);
    } else {
      detail::SparseUnit<Half>(p, row, h2, h0, rows);
    }
  });
}

}  // namespace msa
