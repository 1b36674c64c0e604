// One description of an attention call, shared by every operator of the family.
//
// Rows are query rows: (batch b, query head h, position i). Decode (incre_flash_attention) has Sq = 1;
// a prefill adapter sets Sq > 1, a mask row stride and the lse output. Every pointer, stride and window is
// filled and checked by the adapter's validation (validate.h) before the core runs; the core then indexes
// without further checks. Positions are counted in the *stored* frame of their tensor: a window
// [start, start + len) per batch says which stored positions are valid (left padding, actual lengths).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace msa {

// Element offset of the D contiguous values of (batch b, head h, position s): b*batch + h*head + s*seq.
struct RowStrides {
  int64_t batch = 0, head = 0, seq = 0;
  int64_t At(int64_t b, int64_t h, int64_t s) const { return b * batch + h * head + s * seq; }
};

// The strides of a tensor of `heads` heads, `len` positions and head dim D in one of the dense layouts:
// BSH and BSND are token-major (B, S, N, D), BNSD head-major (B, N, S, D).
inline RowStrides DenseStrides(abi::Layout layout, int64_t heads, int64_t len, int64_t D) {
  if (layout == abi::kBnsd) return {heads * len * D, len * D, D};
  return {len * heads * D, D, heads * D};
}

// Paged key/value: token t of batch b lives in block block_table[b * max_blocks + t / block_size], slot
// t % block_size, at element block * block_stride + head * head_stride + slot * slot_stride. Both cache
// layouts fit: (num_blocks, block_size, kvN*D) and (num_blocks, kvN, block_size, D).
struct PagedKv {
  const int32_t *block_table = nullptr;
  int64_t max_blocks = 0;  // row length of the block table
  int64_t block_size = 0, num_blocks = 0;
  int64_t block_stride = 0, head_stride = 0, slot_stride = 0;
};

// int8 key/value dequantized as (x + offset) * scale, per channel c = kv_head * D + d; a per-tensor value is
// stored broadcast to every channel. Empty vectors: the cache is not quantized.
struct Antiquant {
  std::vector<float> key_scale, key_offset, value_scale, value_offset;  // kvN * D each
  bool enabled() const { return !key_scale.empty(); }
};

struct KvCache {
  const void *key = nullptr, *value = nullptr;  // same shape, same dtype
  DType dtype = kUnknownDType;                  // float16, bfloat16 or int8 (with antiquant)
  int64_t numel = 0;                            // elements of key (and of value)
  int64_t stored_len = 0;                       // positions per batch: S, or max_blocks * block_size when paged
  bool paged = false;
  RowStrides rows;  // dense caches
  PagedKv pages;    // paged caches
  Antiquant antiquant;
};

// Discard mask (bool / int8 / uint8; nonzero = the key is not attended): element (b, i, j) at
// b * batch + i * row + j, with i the stored query position and j the stored key position. row = 0 when one
// mask row serves every query position (decode).
struct Mask {
  const uint8_t *data = nullptr;
  int64_t numel = 0, batch = 0, row = 0;
};

// Additive score bias (pse_shift, added after the scale), of the query dtype: element (b, h, i, j) at
// b * batch + h * head + i * row + j. batch = 0 broadcasts one bias over the batch.
struct ScoreBias {
  const void *data = nullptr;
  DType dtype = kUnknownDType;
  int64_t numel = 0, batch = 0, head = 0, row = 0;
};

// int8 output: y = sat_int8(round_half_even(o * scale + offset)); per channel c = h * D + d, or one value.
struct PostQuant {
  const float *scale = nullptr, *offset = nullptr;  // offset may be null (0)
  int64_t numel = 0;                                // values of scale (and offset): N * D, or 1
  bool per_channel = false;
  bool enabled() const { return scale != nullptr; }
};

struct Problem {
  int64_t B = 0, N = 0, kvN = 0, G = 0, D = 0;  // G = N / kvN query heads share a KV head
  int64_t Sq = 1;                               // stored query positions per batch
  float scale = 1.f;                            // applied to Q.K^T, before the bias
  DType q_dtype = kUnknownDType, out_dtype = kUnknownDType;

  const void *query = nullptr;
  int64_t q_numel = 0;
  RowStrides q_rows;
  void *out = nullptr;  // out_dtype: the query dtype, or int8 with post_quant
  int64_t out_numel = 0;
  RowStrides out_rows;
  float *lse = nullptr;  // optional: m + log(l) per row, element lse_rows.At(b, h, i); +inf for rows not computed
  int64_t lse_numel = 0;
  RowStrides lse_rows;

  KvCache kv;
  // Valid windows per batch, in the stored frames. Output rows outside the query windows are not written:
  // an adapter whose output has such rows zeroes them itself (decode has none).
  std::vector<int64_t> q_start, q_len, kv_start, kv_len;

  Mask mask;
  ScoreBias bias;
  PostQuant post_quant;
};

}  // namespace msa
