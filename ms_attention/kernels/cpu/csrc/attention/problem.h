// One description of an attention call, shared by every operator of the family.
//
// Rows are query rows: (batch b, query head h, position i). Decode (incre_flash_attention) has Sq = 1;
// a prefill sets Sq > 1, a band, a mask row stride and the lse output. Every pointer, stride and window is
// filled and checked by the adapter's validation (validate.h, inputs.h) before the core runs; the core then
// indexes without further checks. Query and key/value positions are counted in the *stored* frame of their
// tensor: a window [start, start + len) per batch says which stored positions are valid (left padding, actual
// lengths, the token range of a TND batch). The keys of batch b are, in order, the shared prefix (prefix.len
// keys, the same for every batch) and then its kv window: key j of the batch (0 <= j < prefix.len + kv_len[b])
// is what masks, biases and the band index.
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

// SBH (S, B, N*D): sequence-major, the batches of a position side by side.
inline RowStrides SbhStrides(int64_t B, int64_t heads, int64_t D) { return {heads * D, D, B * heads * D}; }

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

// Per-token dequantization of an int8 key or value (antiquant mode 1): key t of the kv window of batch b
// (t counted from the window start, 0 <= t < kv_len[b]) is (x + offset) * scale with scale at
// data[b * batch + origin[b] + t]. origin: the window start where the tensor is in the stored frame.
struct TokenScale {
  const float *scale = nullptr, *offset = nullptr;  // offset may be null (0)
  int64_t numel = 0, batch = 0;
  std::vector<int64_t> origin;
  bool enabled() const { return scale != nullptr; }
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
  TokenScale key_tokens, value_tokens;  // per-token antiquant (then the matching Antiquant channel is 1 / 0)
};

// Mask (bool / int8 / uint8 discard, nonzero = the key is not attended; or float16 added to the score):
// the element for query row i and key j of batch b (both window-relative), head h, is at
// b * batch + h * head + (i + frame.q[b]) * row + (j + frame.k[b]). row = 0 when one mask row serves every
// query position (decode); head = 0 when one mask serves every head (head > 0: a discard mask only).
struct Frame {
  std::vector<int64_t> q, k;  // per batch: where row 0 and key 0 of the window sit in the tensor
};
struct Mask {
  const void *data = nullptr;
  bool additive = false;  // float16 values added to the score (PFA), else a uint8-sized discard flag
  int64_t numel = 0, batch = 0, row = 0, head = 0;
};

// Additive score bias (pse_shift / pse / real_shift), of the query dtype, added to the scaled score times
// `factor`: element (b, h, i, j) at b * batch + h * head + (i + frame.q[b]) * row + (j + frame.k[b]). batch = 0
// broadcasts one bias over the batch. factor = scale puts the bias before the scale (FAS, SFA pse_type 1:
// S = scale * (q.k + pse)); 1 adds it after (PFA / FIA, pse_type 0).
// compressed_rows > 0 (1024, the compressed ALiBi rows of sparse modes 2/3): row i of batch b reads pse row
// r = i + compressed_rows - q_len[b]; r < 0 reads row 0 at column j - r (Toeplitz shift), which is 0 when
// j - r >= cols. score_terms.h (BiasOffset) is the one place this mapping is computed.
struct ScoreBias {
  const void *data = nullptr;
  DType dtype = kUnknownDType;
  int64_t numel = 0, batch = 0, head = 0, row = 0;
  float factor = 1.f;
  int64_t compressed_rows = 0, cols = 0;  // cols: the pse's last axis (read only with compressed rows)
};

// ALiBi computed from slopes (SFA pse_type 2 / 3), added after the scale: bias(b, h, i, j) =
// -slope * |j - i + shift| (type 2) or -slope * sqrt(|j - i + shift|) (type 3), shift = kv_start_idx -
// q_start_idx, (i, j) window-relative. slopes: B * N values, slope of (b, h) at b * N + h ((N,) inputs are
// broadcast by the reader). Empty: none.
struct Alibi {
  std::vector<float> slopes;
  bool sqrt = false;
  int64_t shift = 0;
  bool enabled() const { return !slopes.empty(); }
};

// Dropout of the probabilities in the P.V product (training): P_ij * Z_ij / keep_prob, Z the keep bit; the
// softmax sum l does not include Z. The keep bit of (b, h, i, j), (i, j) window-relative, is either
// - explicit (bits != nullptr): bit k & 7 (LSB first) of byte bits[k >> 3], k = base[b] + h * head[b] +
//   i * row[b] + j (FAS drop_mask, (B, N, S1, S2 / 8) or TND's flat packing), or
// - generated from the counter hash of the contract (score_terms.h DropKeep): stream = mix64(seed * golden +
//   offset), row_id = h * rows + row_origin[b] + i, keep = (u >> 40) < threshold.
// keep_prob == 1 (disabled): Z = 1 everywhere, nothing is read.
struct Dropout {
  double keep_prob = 1.0;
  float inv_keep = 1.f;    // 1 / keep_prob, the factor of a kept probability
  uint64_t threshold = 0;  // floor(keep_prob * 2^24)
  const uint8_t *bits = nullptr;
  int64_t bytes = 0;  // size of the explicit mask
  std::vector<int64_t> base, head, row;
  uint64_t stream = 0;
  int64_t rows = 0;                 // R: B * S1, or T1 in TND
  std::vector<int64_t> row_origin;  // per batch: b * S1, or the batch's first token in TND
  bool enabled() const { return keep_prob < 1.0; }
};

// softmax_max / softmax_sum of a training forward: float32, the row's value repeated kStatsWidth times from
// element rows.At(b, h, i) (i the stored query position). Rows with no visible key get max = -FLT_MAX and
// sum = FLT_MAX. Null: not returned.
constexpr int64_t kStatsWidth = 8;
struct SoftmaxStats {
  float *max = nullptr, *sum = nullptr;
  int64_t numel = 0;  // of each
  RowStrides rows;
  bool enabled() const { return max != nullptr; }
};

// The band of keys a query row may see (sparse modes, pre/next tokens), computed, never stored: row i of batch
// b sees keys j with lo[b] <= j - i <= hi[b] (both inclusive), and, when open_keys is given (prefix sparse modes
// 5/6), also every key j < open_keys[b] whatever the band. Empty vectors: every key.
struct Band {
  std::vector<int64_t> lo, hi;
  std::vector<int64_t> open_keys;  // empty, or B values
  bool enabled() const { return !lo.empty(); }
};

// Shared prefix: keys 0..len-1 of every batch, of kv.dtype, at prefix rows.At(0, kv_head, j).
struct SharedPrefix {
  const void *key = nullptr, *value = nullptr;
  int64_t len = 0, numel = 0;
  RowStrides rows;
};

// Rotary part of MLA: score += q_rope . k_rope (before the scale), query_rope rows of Dr values in the
// query's layout, key_rope in the key cache's geometry (its rows / pages with Dr values).
struct Rope {
  int64_t Dr = 0;
  const void *query = nullptr;
  int64_t q_numel = 0;
  RowStrides q_rows;
  KvCache key;  // key only (value unused), dtype the query dtype
  bool enabled() const { return Dr > 0; }
};

// int8 query, key and value (full quantization): S = (Q.K^T) * deq1 * scale; P = softmax(S) normalised,
// P8 = sat_int8(round(P * quant1)); O = (P8 . V) * deq2.
struct FullQuant {
  bool enabled = false;
  float deq1 = 1.f, quant1 = 1.f, deq2 = 1.f;
};

// int8 output: y = sat_int8(round_half_even(o * scale + offset)); per channel c = h * D + d, or one value.
struct PostQuant {
  std::vector<float> scale, offset;  // N * D values, or 1; offset empty: 0
  bool per_channel = false;
  bool enabled() const { return !scale.empty(); }
};

struct Problem {
  int64_t B = 0, N = 0, kvN = 0, G = 0, D = 0;  // G = N / kvN query heads share a KV head
  int64_t Sq = 1;                               // stored query positions per batch
  float scale = 1.f;                            // applied to Q.K^T, before the bias
  DType q_dtype = kUnknownDType, out_dtype = kUnknownDType;

  const void *query = nullptr;
  int64_t q_numel = 0;
  RowStrides q_rows;
  void *out = nullptr;  // out_dtype: the query dtype (float16 under full quant), or int8 with post_quant
  int64_t out_numel = 0;
  RowStrides out_rows;
  float *lse = nullptr;  // optional: m + log(l) per row, element lse_rows.At(b, h, i); +inf for rows not computed
  int64_t lse_numel = 0;
  RowStrides lse_rows;

  KvCache kv;
  // Valid windows per batch, in the stored frames. Output rows outside the query windows are not written:
  // an adapter whose output has such rows zeroes them itself (decode has none).
  std::vector<int64_t> q_start, q_len, kv_start, kv_len;

  Frame frame;  // where window-relative (i, j) sit in the mask and the bias (sized B when either is given)
  Mask mask;
  ScoreBias bias;
  Alibi alibi;
  Band band;
  Dropout dropout;
  SoftmaxStats stats;
  SharedPrefix prefix;
  Rope rope;
  std::vector<float> sink;  // learnable sink per query head (empty: none)
  FullQuant full_quant;
  PostQuant post_quant;
};

}  // namespace msa
