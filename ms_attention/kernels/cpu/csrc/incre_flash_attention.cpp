// incre_flash_attention on CPU: flash-decoding with an online softmax (SPEC.md §2, §4-6).
//
// One work item is (batch, KV head, split of the key range). It streams its keys and values once, in tiles,
// for all G query heads of the GQA group together, widening fp16/bf16/int8 to float32 in registers and
// accumulating in float32. Splits of one (batch, KV head) are merged with their softmax statistics, so a
// single long sequence still uses every core. Every shape and run-time value is checked before any memory is
// touched: a bad input returns an error, never a crash.
//
// AOT parameters (MindSpore Custom "aot" ABI): the 15 inputs of mindspore.ops.IncreFlashAttention in order,
// then a float64 attribute vector [num_heads, layout enum, scale_value, num_key_value_heads, block_size,
// inner_precise], then the output. Absent optional inputs are shape-(0,) tensors.
#include <omp.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"

namespace msa {
namespace {

enum Param {
  kQuery, kKey, kValue, kMask, kSeqLens, kPse, kDequantScale1, kQuantScale1, kDequantScale2, kQuantScale2,
  kQuantOffset2, kAntiquantScale, kAntiquantOffset, kBlockTable, kKvPadding, kAttrs, kOut, kNumParams
};
constexpr int kLayoutBSH = 0, kLayoutBNSD = 1, kLayoutBSND = 3;
constexpr int64_t kTile = 32;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
#define PRIM "For 'IncreFlashAttention', "

struct Problem {
  int64_t B = 0, N = 0, kvN = 0, G = 0, D = 0;
  int layout = 0;
  float scale = 1.f;
  DType q_type = DType::kOther, kv_type = DType::kOther, out_type = DType::kOther;
  // key/value addressing
  bool paged = false, head_major = false;   // head_major: (.., kvN, S|block_size, D)
  int64_t S = 0;                            // stored length (non-paged)
  int64_t block_size = 0, num_blocks = 0, max_blocks = 0;
  const int32_t *block_table = nullptr;
  // per batch valid window, in the stored frame
  std::vector<int64_t> start, len;
  // optional inputs
  const uint8_t *mask = nullptr;
  int64_t mask_s = 0;
  const uint16_t *pse = nullptr;
  int64_t pse_b = 0, pse_s = 0;
  bool antiquant = false;
  std::vector<float> k_scale, k_offset, v_scale, v_offset;  // kvN*D each
  bool post_quant = false;
  std::vector<float> out_scale, out_offset;                 // N*D each
};

int64_t KvIndex(const Problem &p, int64_t b, int64_t h, int64_t t) {
  if (p.paged) {
    int64_t block = p.block_table[b * p.max_blocks + t / p.block_size], slot = t % p.block_size;
    return p.head_major ? ((block * p.kvN + h) * p.block_size + slot) * p.D
                        : ((block * p.block_size + slot) * p.kvN + h) * p.D;
  }
  t += p.start[b];  // left padding: the valid window starts inside the stored sequence
  return p.head_major ? ((b * p.kvN + h) * p.S + t) * p.D : ((b * p.S + t) * p.kvN + h) * p.D;
}

void LoadRow(const Problem &p, const void *base, int64_t index, const float *scale, const float *offset,
             float *dst) {
  switch (p.kv_type) {
    case DType::kF16:
      HalfRowToFloat(static_cast<const uint16_t *>(base) + index, dst, p.D);
      break;
    case DType::kBF16:
      BF16RowToFloat(static_cast<const uint16_t *>(base) + index, dst, p.D);
      break;
    default: {  // int8 with antiquant: (x + offset) * scale
      const int8_t *src = static_cast<const int8_t *>(base) + index;
#pragma omp simd
      for (int64_t i = 0; i < p.D; ++i) dst[i] = (static_cast<float>(src[i]) + offset[i]) * scale[i];
    }
  }
}

void LoadQueryRow(const Problem &p, const void *q, int64_t index, float *dst) {
  if (p.q_type == DType::kF16) {
    HalfRowToFloat(static_cast<const uint16_t *>(q) + index, dst, p.D);
  } else {
    BF16RowToFloat(static_cast<const uint16_t *>(q) + index, dst, p.D);
  }
}

float LoadScalar(DType type, const uint16_t *ptr) { return type == DType::kF16 ? HalfToFloat(*ptr) : BF16ToFloat(*ptr); }

float Dot(const float *a, const float *b, int64_t n) {
  int64_t d = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; d + 16 <= n; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

// acc = acc * correction + sum_i p[i] * v[i, :], with each 16-wide slice of acc held in a register for the
// whole tile (one load and one store per slice instead of one per key).
void AccumulateTile(float *acc, float correction, const float *p, const float *v, int64_t T, int64_t D) {
  int64_t d = 0;
#if defined(__AVX512F__)
  const __m512 corr = _mm512_set1_ps(correction);
  for (; d + 16 <= D; d += 16) {
    __m512 a = _mm512_mul_ps(_mm512_loadu_ps(acc + d), corr);
    for (int64_t i = 0; i < T; ++i) a = _mm512_fmadd_ps(_mm512_set1_ps(p[i]), _mm512_loadu_ps(v + i * D + d), a);
    _mm512_storeu_ps(acc + d, a);
  }
#endif
  for (; d < D; ++d) {
    float a = acc[d] * correction;
    for (int64_t i = 0; i < T; ++i) a += p[i] * v[i * D + d];
    acc[d] = a;
  }
}

// Partial attention of one (batch, KV head) over keys [t0, t1): running max m, sum l, unnormalised acc.
void AttendRange(const Problem &p, const void *q, const void *k, const void *v, int64_t b, int64_t kh,
                 int64_t t0, int64_t t1, float *m, float *l, float *acc) {
  const int64_t G = p.G, D = p.D;
  std::vector<float> qf(G * D), kbuf(kTile * D), vbuf(kTile * D), scores(G * kTile);
  for (int64_t g = 0; g < G; ++g) {
    LoadQueryRow(p, q, (b * p.N + kh * G + g) * D, qf.data() + g * D);
  }
  const float *ks = p.antiquant ? p.k_scale.data() + kh * D : nullptr;
  const float *ko = p.antiquant ? p.k_offset.data() + kh * D : nullptr;
  const float *vs = p.antiquant ? p.v_scale.data() + kh * D : nullptr;
  const float *vo = p.antiquant ? p.v_offset.data() + kh * D : nullptr;
  for (int64_t g = 0; g < G; ++g) { m[g] = kNegInf; l[g] = 0.f; }
  std::fill(acc, acc + G * D, 0.f);

  for (int64_t tt = t0; tt < t1; tt += kTile) {
    const int64_t T = std::min(kTile, t1 - tt);
    for (int64_t i = 0; i < T; ++i) LoadRow(p, k, KvIndex(p, b, kh, tt + i), ks, ko, kbuf.data() + i * D);
    for (int64_t g = 0; g < G; ++g) {
      const float *qg = qf.data() + g * D;
      for (int64_t i = 0; i < T; ++i) scores[g * kTile + i] = Dot(qg, kbuf.data() + i * D, D) * p.scale;
    }
    // pse_shift (after the scale) and the mask, both indexed in the stored frame
    const int64_t pos0 = p.start[b] + tt;
    if (p.pse != nullptr) {
      const int64_t pb = p.pse_b == 1 ? 0 : b;
      for (int64_t g = 0; g < G; ++g) {
        const uint16_t *row = p.pse + (pb * p.N + kh * G + g) * p.pse_s + pos0;
        for (int64_t i = 0; i < T; ++i) scores[g * kTile + i] += LoadScalar(p.q_type, row + i);
      }
    }
    if (p.mask != nullptr) {
      const uint8_t *row = p.mask + b * p.mask_s + pos0;
      for (int64_t i = 0; i < T; ++i) {
        if (row[i] != 0) {
          for (int64_t g = 0; g < G; ++g) scores[g * kTile + i] = kNegInf;
        }
      }
    }
    bool any = false;
    for (int64_t g = 0; g < G && !any; ++g) {
      for (int64_t i = 0; i < T; ++i) any |= scores[g * kTile + i] != kNegInf;
    }
    if (!any) continue;  // the whole tile is masked: its values are never needed
    for (int64_t i = 0; i < T; ++i) LoadRow(p, v, KvIndex(p, b, kh, tt + i), vs, vo, vbuf.data() + i * D);
    for (int64_t g = 0; g < G; ++g) {
      float *sg = scores.data() + g * kTile;
      float tile_max = kNegInf;
      for (int64_t i = 0; i < T; ++i) tile_max = std::max(tile_max, sg[i]);
      if (tile_max == kNegInf) continue;
      const float m_new = std::max(m[g], tile_max);
      const float correction = std::exp(m[g] - m_new);  // exp(-inf) = 0 on the first tile
      float tile_sum = 0.f;
      for (int64_t i = 0; i < T; ++i) {
        sg[i] = std::exp(sg[i] - m_new);                 // masked: exp(-inf) = 0
        tile_sum += sg[i];
      }
      l[g] = l[g] * correction + tile_sum;
      AccumulateTile(acc + g * D, correction, sg, vbuf.data(), T, D);
      m[g] = m_new;
    }
  }
}

void StoreOutput(const Problem &p, void *out, int64_t b, int64_t h, const float *o, bool computed) {
  const int64_t base = (b * p.N + h) * p.D;
  if (p.post_quant) {
    int8_t *dst = static_cast<int8_t *>(out) + base;
    for (int64_t d = 0; d < p.D; ++d) {
      if (!computed) { dst[d] = 0; continue; }
      const int64_t c = p.out_scale.size() == 1 ? 0 : h * p.D + d;
      float y = std::nearbyint(o[d] * p.out_scale[c] + p.out_offset[c]);  // default mode: half to even
      dst[d] = static_cast<int8_t>(std::min(127.f, std::max(-128.f, y)));
    }
    return;
  }
  uint16_t *dst = static_cast<uint16_t *>(out) + base;
  for (int64_t d = 0; d < p.D; ++d) {
    const float x = computed ? o[d] : 0.f;
    dst[d] = p.out_type == DType::kF16 ? FloatToHalf(x) : FloatToBF16(x);
  }
}

int Run(const Problem &p, const void *q, const void *k, const void *v, void *out) {
  const int64_t items = p.B * p.kvN;
  int64_t max_len = 0;
  for (int64_t b = 0; b < p.B; ++b) max_len = std::max(max_len, p.len[b]);
  const int threads = omp_get_max_threads();
  // Split the keys only when (batch, KV head) pairs alone cannot keep every thread busy.
  int64_t splits = std::max<int64_t>(1, (4 * threads + items - 1) / items);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, max_len / 256));
  const int64_t G = p.G, D = p.D;
  std::vector<float> part_m(items * splits * G), part_l(items * splits * G), part_acc(items * splits * G * D);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t w = 0; w < items * splits; ++w) {
    const int64_t item = w / splits, s = w % splits, b = item / p.kvN, kh = item % p.kvN;
    const int64_t chunk = (p.len[b] + splits - 1) / splits;
    const int64_t t0 = std::min(p.len[b], s * chunk), t1 = std::min(p.len[b], t0 + chunk);
    float *m = part_m.data() + w * G, *l = part_l.data() + w * G, *acc = part_acc.data() + w * G * D;
    if (t0 >= t1) {
      for (int64_t g = 0; g < G; ++g) { m[g] = kNegInf; l[g] = 0.f; }
      continue;
    }
    AttendRange(p, q, k, v, b, kh, t0, t1, m, l, acc);
  }

#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / p.kvN, kh = item % p.kvN;
    std::vector<float> o(D);
    for (int64_t g = 0; g < G; ++g) {
      float m_all = kNegInf;
      for (int64_t s = 0; s < splits; ++s) m_all = std::max(m_all, part_m[(item * splits + s) * G + g]);
      float l_all = 0.f;
      std::fill(o.begin(), o.end(), 0.f);
      if (m_all != kNegInf) {
        for (int64_t s = 0; s < splits; ++s) {
          const int64_t w = item * splits + s;
          if (part_l[w * G + g] == 0.f) continue;
          const float f = std::exp(part_m[w * G + g] - m_all);
          l_all += part_l[w * G + g] * f;
          const float *a = part_acc.data() + (w * G + g) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += a[d] * f;
        }
      }
      const bool computed = l_all > 0.f;
      if (computed) {
        const float inv = 1.f / l_all;
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
      }
      StoreOutput(p, out, b, kh * G + g, o.data(), computed);
    }
  }
  return 0;
}

// ---- argument checks: everything the kernel relies on to stay inside its buffers -------------------------
int64_t ReadInt(const Arg &a, int64_t i) {
  return a.dtype == DType::kI32 ? static_cast<const int32_t *>(a.data)[i] : static_cast<const int64_t *>(a.data)[i];
}

int LoadFloatVector(const Arg &a, DType q_type, int64_t row, int64_t width, std::vector<float> *dst) {
  // antiquant tensors: (2,) per tensor or 2*width per channel; row 0 key, row 1 value
  dst->assign(width, 0.f);
  const int64_t n = a.numel();
  const uint16_t *src = static_cast<const uint16_t *>(a.data);
  if (n == 2) {
    std::fill(dst->begin(), dst->end(), LoadScalar(q_type, src + row));
  } else if (n == 2 * width) {
    for (int64_t i = 0; i < width; ++i) (*dst)[i] = LoadScalar(q_type, src + row * width + i);
  } else {
    return Fail(PRIM "the 'antiquant_scale'/'antiquant_offset' must hold 2 or %lld elements, but got %lld.",
                static_cast<long long>(2 * width), static_cast<long long>(n));
  }
  return 0;
}

int Prepare(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, Problem *pp,
            Arg *args) {
  Problem &p = *pp;
  if (nparam != kNumParams) return Fail(PRIM "the kernel needs %d parameters, but got %d.", kNumParams, nparam);
  for (int i = 0; i < nparam; ++i) {
    args[i] = Arg{params[i], ndims[i], shapes[i], ParseDType(dtypes[i])};
    if (args[i].ndim < 0 || (args[i].ndim > 0 && args[i].shape == nullptr)) return Fail(PRIM "malformed parameter %d.", i);
    for (int d = 0; d < args[i].ndim; ++d) {
      if (args[i].shape[d] < 0) return Fail(PRIM "parameter %d has a negative dimension.", i);
    }
    if (args[i].numel() > 0 && args[i].data == nullptr) return Fail(PRIM "parameter %d has no data.", i);
  }
  const Arg &attrs = args[kAttrs];
  if (attrs.dtype != DType::kF64 || attrs.numel() < 6) return Fail(PRIM "the attribute vector is malformed.");
  const double *at = static_cast<const double *>(attrs.data);
  p.N = static_cast<int64_t>(at[0]);
  p.layout = static_cast<int>(at[1]);
  p.scale = static_cast<float>(at[2]);
  p.kvN = static_cast<int64_t>(at[3]);
  p.block_size = static_cast<int64_t>(at[4]);
  if (p.N <= 0 || p.kvN <= 0 || p.N % p.kvN != 0) return Fail(PRIM "bad num_heads %lld / num_key_value_heads %lld.", (long long)p.N, (long long)p.kvN);
  p.G = p.N / p.kvN;

  const Arg &q = args[kQuery], &k = args[kKey], &v = args[kValue], &out = args[kOut];
  p.q_type = q.dtype;
  if (p.q_type != DType::kF16 && p.q_type != DType::kBF16) return Fail(PRIM "the 'query' must be float16 or bfloat16, but got %s.", dtypes[kQuery]);
  if (p.layout == kLayoutBSH) {
    if (q.ndim != 3 || q.dim(1) != 1 || q.dim(2) % p.N != 0) return Fail(PRIM "bad BSH query shape.");
    p.B = q.dim(0); p.D = q.dim(2) / p.N;
  } else if (p.layout == kLayoutBNSD) {
    if (q.ndim != 4 || q.dim(1) != p.N || q.dim(2) != 1) return Fail(PRIM "bad BNSD query shape.");
    p.B = q.dim(0); p.D = q.dim(3);
  } else if (p.layout == kLayoutBSND) {
    if (q.ndim != 4 || q.dim(1) != 1 || q.dim(2) != p.N) return Fail(PRIM "bad BSND query shape.");
    p.B = q.dim(0); p.D = q.dim(3);
  } else {
    return Fail(PRIM "unsupported input_layout enum %d.", p.layout);
  }
  if (p.B <= 0 || p.D <= 0) return Fail(PRIM "the 'query' is empty.");

  p.kv_type = k.dtype;
  if (v.dtype != k.dtype || v.ndim != k.ndim) return Fail(PRIM "the 'key' and 'value' differ in dtype or rank.");
  for (int d = 0; d < k.ndim; ++d) {
    if (k.shape[d] != v.shape[d]) return Fail(PRIM "the shapes of 'key' and 'value' differ.");
  }
  if (p.kv_type != DType::kI8 && p.kv_type != p.q_type) return Fail(PRIM "the 'key'/'value' dtype %s does not match the query.", dtypes[kKey]);

  const Arg &bt = args[kBlockTable], &seq = args[kSeqLens];
  p.paged = bt.present();
  if (seq.present() && ((seq.dtype != DType::kI32 && seq.dtype != DType::kI64) || seq.ndim != 1 ||
                        (seq.dim(0) != 1 && seq.dim(0) != p.B))) {
    return Fail(PRIM "the 'actual_seq_lengths' must be an int32/int64 vector of size 1 or B (%lld).", (long long)p.B);
  }
  int64_t max_len;
  if (p.paged) {
    if (bt.dtype != DType::kI32 || bt.ndim != 2 || bt.dim(0) != p.B || bt.dim(1) <= 0) return Fail(PRIM "the 'block_table' must be int32 of shape (B, max_blocks_per_seq).");
    if (!seq.present()) return Fail(PRIM "the 'actual_seq_lengths' is required with page attention.");
    if (p.block_size <= 0) return Fail(PRIM "the 'block_size' must be positive with page attention.");
    p.block_table = static_cast<const int32_t *>(bt.data);
    p.max_blocks = bt.dim(1);
    if (k.ndim == 3) {
      if (k.dim(1) != p.block_size || k.dim(2) != p.kvN * p.D) return Fail(PRIM "the paged 'key' must be (num_blocks, block_size, kvH).");
      p.head_major = false;
    } else if (k.ndim == 4) {
      if (k.dim(1) != p.kvN || k.dim(2) != p.block_size || k.dim(3) != p.D) return Fail(PRIM "the paged 'key' must be (num_blocks, kvN, block_size, D).");
      p.head_major = true;
    } else {
      return Fail(PRIM "the paged 'key' must be 3-D or 4-D.");
    }
    p.num_blocks = k.dim(0);
    max_len = p.max_blocks * p.block_size;
  } else {
    if (p.layout == kLayoutBSH) {
      if (k.ndim != 3 || k.dim(0) != p.B || k.dim(2) != p.kvN * p.D) return Fail(PRIM "bad BSH key shape.");
      p.S = k.dim(1);
    } else if (p.layout == kLayoutBNSD) {
      if (k.ndim != 4 || k.dim(0) != p.B || k.dim(1) != p.kvN || k.dim(3) != p.D) return Fail(PRIM "bad BNSD key shape.");
      p.S = k.dim(2); p.head_major = true;
    } else {
      if (k.ndim != 4 || k.dim(0) != p.B || k.dim(2) != p.kvN || k.dim(3) != p.D) return Fail(PRIM "bad BSND key shape.");
      p.S = k.dim(1);
    }
    max_len = p.S;
  }

  // per batch windows
  p.start.assign(p.B, 0);
  p.len.assign(p.B, p.paged ? 0 : p.S);
  if (seq.present()) {
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t n = ReadInt(seq, seq.dim(0) == 1 ? 0 : b);
      if (n < 0 || n > max_len) {
        return Fail(PRIM "each 'actual_seq_lengths' must be in [0, %lld], but got %lld for batch %lld.",
                    (long long)max_len, (long long)n, (long long)b);
      }
      p.len[b] = n;
    }
  }
  const Arg &pad = args[kKvPadding];
  if (pad.present() && seq.present()) {
    if (p.paged) return Fail(PRIM "the 'kv_padding_size' is not supported with page attention.");
    if ((pad.dtype != DType::kI32 && pad.dtype != DType::kI64) || pad.numel() != 1) return Fail(PRIM "the 'kv_padding_size' must be one int64.");
    const int64_t padding = std::max<int64_t>(0, ReadInt(pad, 0));
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t start = p.S - padding - p.len[b];
      if (start < 0) {  // the window begins before the cache: this batch is all zeros
        p.start[b] = 0; p.len[b] = 0;
      } else {
        p.start[b] = start;
      }
    }
  }
  if (p.paged) {
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t used = (p.len[b] + p.block_size - 1) / p.block_size;
      for (int64_t i = 0; i < used; ++i) {
        const int32_t blk = p.block_table[b * p.max_blocks + i];
        if (blk < 0 || blk >= p.num_blocks) {
          return Fail(PRIM "the 'block_table' entry %d of batch %lld (slot %lld) is out of range [0, %lld).",
                      blk, (long long)b, (long long)i, (long long)p.num_blocks);
        }
      }
    }
  }
  int64_t last_needed = 0;  // one past the last stored position any batch reads
  for (int64_t b = 0; b < p.B; ++b) last_needed = std::max(last_needed, p.start[b] + p.len[b]);

  const Arg &mask = args[kMask];
  if (mask.present()) {
    if (mask.dtype != DType::kBool && mask.dtype != DType::kI8 && mask.dtype != DType::kU8) return Fail(PRIM "the 'attn_mask' must be bool, int8 or uint8.");
    if (mask.ndim < 2 || mask.dim(0) != p.B || mask.numel() != p.B * mask.dim(-1)) return Fail(PRIM "the 'attn_mask' must be (B, S), (B, 1, S) or (B, 1, 1, S).");
    p.mask = static_cast<const uint8_t *>(mask.data);
    p.mask_s = mask.dim(-1);
    if (last_needed > p.mask_s) return Fail(PRIM "the 'attn_mask' covers %lld positions, but %lld are read.", (long long)p.mask_s, (long long)last_needed);
  }
  const Arg &pse = args[kPse];
  if (pse.present()) {
    if (pse.dtype != p.q_type || pse.ndim != 4 || (pse.dim(0) != 1 && pse.dim(0) != p.B) || pse.dim(1) != p.N || pse.dim(2) != 1) {
      return Fail(PRIM "the 'pse_shift' must be (1|B, N, 1, S) of the query dtype.");
    }
    p.pse = static_cast<const uint16_t *>(pse.data);
    p.pse_b = pse.dim(0);
    p.pse_s = pse.dim(3);
    if (last_needed > p.pse_s) return Fail(PRIM "the 'pse_shift' covers %lld positions, but %lld are read.", (long long)p.pse_s, (long long)last_needed);
  }
  const Arg &as = args[kAntiquantScale], &ao = args[kAntiquantOffset];
  if (p.kv_type == DType::kI8) {
    if (!as.present() || as.dtype != p.q_type) return Fail(PRIM "int8 'key'/'value' need an 'antiquant_scale' of the query dtype.");
    if (ao.present() && (ao.dtype != p.q_type || ao.numel() != as.numel())) return Fail(PRIM "the 'antiquant_offset' must match 'antiquant_scale'.");
    p.antiquant = true;
    const int64_t width = p.kvN * p.D;
    if (LoadFloatVector(as, p.q_type, 0, width, &p.k_scale) || LoadFloatVector(as, p.q_type, 1, width, &p.v_scale)) return 1;
    if (ao.present()) {
      if (LoadFloatVector(ao, p.q_type, 0, width, &p.k_offset) || LoadFloatVector(ao, p.q_type, 1, width, &p.v_offset)) return 1;
    } else {
      p.k_offset.assign(width, 0.f);
      p.v_offset.assign(width, 0.f);
    }
  }
  const Arg &qs2 = args[kQuantScale2], &qo2 = args[kQuantOffset2];
  p.out_type = out.dtype;
  if (qs2.present()) {
    const int64_t n = qs2.numel();
    if (qs2.dtype != DType::kF32 || (n != 1 && n != p.N * p.D)) return Fail(PRIM "the 'quant_scale2' must be float32 with 1 or N*D elements.");
    if (qo2.present() && (qo2.dtype != DType::kF32 || qo2.numel() != n)) return Fail(PRIM "the 'quant_offset2' must match 'quant_scale2'.");
    p.post_quant = true;
    const float *sc = static_cast<const float *>(qs2.data);
    p.out_scale.assign(sc, sc + n);
    if (qo2.present()) {
      const float *of = static_cast<const float *>(qo2.data);
      p.out_offset.assign(of, of + n);
    } else {
      p.out_offset.assign(n, 0.f);
    }
    if (out.dtype != DType::kI8) return Fail(PRIM "the output must be int8 with 'quant_scale2'.");
  } else if (out.dtype != p.q_type) {
    return Fail(PRIM "the output dtype must be the query dtype.");
  }
  if (out.numel() != p.B * p.N * p.D) return Fail(PRIM "the output has %lld elements, expected %lld.", (long long)out.numel(), (long long)(p.B * p.N * p.D));
  return 0;
}

}  // namespace
}  // namespace msa

extern "C" int IncreFlashAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  if (params == nullptr || ndims == nullptr || shapes == nullptr || dtypes == nullptr) return msa::Fail(PRIM "null parameter arrays.");
  msa::Problem problem;
  msa::Arg args[msa::kNumParams];
  if (msa::Prepare(nparam, params, ndims, shapes, dtypes, &problem, args) != 0) return 1;
  return msa::Run(problem, args[msa::kQuery].data, args[msa::kKey].data, args[msa::kValue].data, args[msa::kOut].data);
}
