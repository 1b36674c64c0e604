// Reading keys and values: where the row of stored position t lives in a dense or paged cache, and how an
// int8 cache's dequantization is folded into the query and the output instead of into every element.
#pragma once

#include <algorithm>
#include <cstdint>

#include "attention/problem.h"

namespace msa {

// Row pointers of the keys and values at stored positions [t, t + n) of (batch b, KV head h). Dense
// caches step by the position stride, paged ones walk the block table (no division per key). Left
// padding is already in t: callers pass kv_start[b] + position.
template <class T>
inline void KvTileRows(const KvCache &kv, int64_t b, int64_t h, int64_t t, int64_t n, const T **k,
                       const T **v) {
  const T *key = static_cast<const T *>(kv.key), *value = static_cast<const T *>(kv.value);
  if (!kv.paged) {
    int64_t offset = kv.rows.At(b, h, t);
    for (int64_t i = 0; i < n; ++i, offset += kv.rows.seq) {
      k[i] = key + offset;
      v[i] = value + offset;
    }
    return;
  }
  const PagedKv &pg = kv.pages;
  const int32_t *table = pg.block_table + b * pg.max_blocks;
  int64_t block = t / pg.block_size, slot = t % pg.block_size;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t offset = table[block] * pg.block_stride + h * pg.head_stride + slot * pg.slot_stride;
    k[i] = key + offset;
    v[i] = value + offset;
    if (++slot == pg.block_size) {
      slot = 0;
      ++block;
    }
  }
}

// Row pointers of keys [j, j + n) of batch b's key sequence: the shared prefix's keys first, then the kv window.
template <class T>
inline void KeyTileRows(const Problem &p, int64_t b, int64_t h, int64_t j, int64_t n, const T **k, const T **v) {
  const SharedPrefix &prefix = p.prefix;
  int64_t i = 0;
  if (j < prefix.len) {
    const T *key = static_cast<const T *>(prefix.key), *value = static_cast<const T *>(prefix.value);
    int64_t offset = prefix.rows.At(0, h, j);
    for (; i < n && j + i < prefix.len; ++i, offset += prefix.rows.seq) {
      k[i] = key + offset;
      v[i] = value + offset;
    }
  }
  if (i < n) KvTileRows(p.kv, b, h, p.kv_start[b] + j + i - prefix.len, n - i, k + i, v + i);
}

// Key dequantization folded into a float query row: q.((k + o) * s) = (q * s).k + (q * s).o, so the row is
// multiplied by the key scale once and the returned (q * s).o is added to each of its scores; the int8 keys
// are then used as they are.
inline float FoldKeyAntiquant(const Antiquant &aq, int64_t kv_head, int64_t D, float *q) {
  const float *scale = aq.key_scale.data() + kv_head * D, *offset = aq.key_offset.data() + kv_head * D;
  float bias = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    q[d] *= scale[d];
    bias += q[d] * offset[d];
  }
  return bias;
}

// Value dequantization of a normalised output row: sum_j p_j * (v_j + o) * s / l = s * (acc / l + o).
inline void ApplyValueAntiquant(const Antiquant &aq, int64_t kv_head, int64_t D, float *o) {
  const float *scale = aq.value_scale.data() + kv_head * D, *offset = aq.value_offset.data() + kv_head * D;
  for (int64_t d = 0; d < D; ++d) o[d] = (o[d] + offset[d]) * scale[d];
}

}  // namespace msa
