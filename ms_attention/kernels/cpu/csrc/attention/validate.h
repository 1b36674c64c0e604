// Validation shared by the attention operators. Each validator reads one input (or inputs that belong
// together), rejects it with a MindSpore-style message naming the argument, the value and what is allowed
// (Fail throws), and returns its part of the Problem. CheckProblem then verifies, whatever the adapter, that
// every index the core will form lies inside its buffer, so a kernel can never read or write outside one.
//
// Everything here runs before the parallel region: the only place a kernel may throw.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "attention/numeric.h"
#include "attention/problem.h"
#include "common.h"

namespace msa {

inline const char *LayoutName(int layout) {
  return layout >= 0 && layout < abi::kNumLayouts ? abi::kLayoutNames[layout] : "an unsupported layout";
}

// ---- the AOT call ------------------------------------------------------------------------------------

// The AOT parameter arrays as Arg views: the expected count, non-negative shapes, data for non-empty tensors.
inline void ReadArgs(const char *prim, int expected, int nparam, void **params, int *ndims, int64_t **shapes,
                     const char **dtypes, Arg *args) {
  if (params == nullptr || ndims == nullptr || shapes == nullptr || dtypes == nullptr) {
    Fail(prim, "the kernel got null parameter arrays.");
  }
  if (nparam != expected) Fail(prim, "the kernel needs %d parameters, but got %d.", expected, nparam);
  for (int i = 0; i < nparam; ++i) {
    Arg &a = args[i];
    a = Arg{params[i], ndims[i], shapes[i], ParseDType(dtypes[i])};
    if (a.ndim < 0 || (a.ndim > 0 && a.shape == nullptr)) Fail(prim, "the kernel parameter %d is malformed.", i);
    for (int d = 0; d < a.ndim; ++d) {
      if (a.shape[d] < 0) Fail(prim, "the kernel parameter %d has a negative dimension.", i);
    }
    if (a.numel() > 0 && a.data == nullptr) Fail(prim, "the kernel parameter %d has no data.", i);
  }
}

// The float64 attribute vector (kernel_abi.h): `count` values, the attributes then one presence flag per
// tensor input (from `presence_offset`); marks args[i] absent where its flag is 0. Inputs listed in `generated`
// (seed / offset, which the functional always makes) are always given, whatever their flag.
inline const double *ReadAttrs(const char *prim, const Arg &a, int count, int presence_offset, Arg *args,
                               std::initializer_list<int> generated = {}) {
  if (a.dtype != abi::kFloat64 || a.numel() != count) {
    Fail(prim, "the attribute vector must hold %d float64 values, but got %lld of %s.", count,
         (long long)a.numel(), DTypeName(a.dtype));
  }
  const double *v = static_cast<const double *>(a.data);
  for (int i = 0; i < count - presence_offset; ++i) {
    const double flag = v[presence_offset + i];
    if (flag != 0.0 && flag != 1.0) Fail(prim, "the presence flag of input %d must be 0 or 1, but got %g.", i, flag);
    if (std::find(generated.begin(), generated.end(), i) != generated.end()) continue;
    args[i].given = flag == 1.0;
    if (!args[i].given && !(args[i].ndim == 1 && args[i].shape[0] == 0)) {
      Fail(prim, "the absent input %d must be an empty placeholder, but got shape %s.", i,
           args[i].ShapeString().c_str());
    }
  }
  return v;
}

// An integer attribute (it travels as a float64).
inline int64_t IntAttr(const char *prim, const double *attrs, int index, const char *name) {
  const double x = attrs[index];
  if (!(std::fabs(x) < 9.0e15) || x != std::trunc(x)) Fail(prim, "the '%s' must be an integer, but got %g.", name, x);
  return static_cast<int64_t>(x);
}

// pre_tokens / next_tokens: any int64 (MindSpore networks pass INT64_MAX for "no limit"), which the float64
// vector carries only approximately above 2^53. Every magnitude beyond 2^53 removes the band's limit on that side
// just as well (sequences are far shorter), so such values saturate there instead of failing IntAttr.
inline int64_t TokenCountAttr(const char *prim, const double *attrs, int index, const char *name) {
  constexpr double kLimit = 9007199254740992.0;  // 2^53
  const double x = attrs[index];
  if (!std::isfinite(x) || x != std::trunc(x)) Fail(prim, "the '%s' must be an integer, but got %g.", name, x);
  return static_cast<int64_t>(std::max(-kLimit, std::min(kLimit, x)));
}

inline void CheckDType(const char *prim, const char *name, const Arg &a, std::initializer_list<DType> allowed) {
  for (DType t : allowed) {
    if (a.dtype == t) return;
  }
  std::string names;
  for (DType t : allowed) names += std::string(names.empty() ? "" : ", ") + DTypeName(t);
  Fail(prim, "the '%s' must be one of [%s], but got %s.", name, names.c_str(), DTypeName(a.dtype));
}

// a must have the dtype of another input (named `of`)
inline void CheckDTypeIs(const char *prim, const char *name, const Arg &a, DType expected, const char *of) {
  if (a.dtype != expected) {
    Fail(prim, "the '%s' must have the %s dtype %s, but got %s.", name, of, DTypeName(expected), DTypeName(a.dtype));
  }
}

inline void CheckSameShape(const char *prim, const char *name_a, const Arg &a, const char *name_b, const Arg &b) {
  bool same = a.ndim == b.ndim;
  for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
  if (!same) {
    Fail(prim, "the shape of '%s' %s must equal the shape of '%s' %s.", name_b, b.ShapeString().c_str(), name_a,
         a.ShapeString().c_str());
  }
}

// The tensor has exactly this shape.
inline void CheckShape(const char *prim, const char *name, const Arg &a, const std::vector<int64_t> &shape) {
  bool same = a.ndim == static_cast<int>(shape.size());
  for (int d = 0; same && d < a.ndim; ++d) same = a.dim(d) == shape[d];
  if (!same) {
    std::string want = "(";
    for (size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
    Fail(prim, "the '%s' must have shape %s%s, but got %s.", name, want.c_str(), shape.size() == 1 ? ",)" : ")",
         a.ShapeString().c_str());
  }
}

// One element of a float16 / bfloat16 / float32 tensor.
inline float ReadFloat(const Arg &a, int64_t i) {
  switch (a.dtype) {
    case abi::kFloat16: return ToFloat(static_cast<const Half *>(a.data)[i]);
    case abi::kBfloat16: return ToFloat(static_cast<const BFloat16 *>(a.data)[i]);
    default: return static_cast<const float *>(a.data)[i];
  }
}

// One element of an int32 / int64 tensor.
inline int64_t ReadInt(const Arg &a, int64_t i) {
  return a.dtype == abi::kInt32 ? static_cast<const int32_t *>(a.data)[i] : static_cast<const int64_t *>(a.data)[i];
}

// ---- geometry ----------------------------------------------------------------------------------------

// B, S, D and row strides of a dense (B, S, H) / (B, N, S, D) / (B, S, N, D) tensor with `heads` heads.
struct DenseGeometry {
  int64_t B = 0, S = 0, D = 0;
  RowStrides rows;
};

inline DenseGeometry ReadDense(const char *prim, const char *name, const Arg &a, int layout, int64_t heads) {
  if (heads <= 0) Fail(prim, "internal error: %lld heads.", (long long)heads);
  DenseGeometry g;
  bool ok = false;
  if (layout == abi::kBsh) {
    ok = a.ndim == 3 && a.dim(2) % heads == 0;
    if (ok) g = {a.dim(0), a.dim(1), a.dim(2) / heads, {}};
  } else if (layout == abi::kBnsd) {
    ok = a.ndim == 4 && a.dim(1) == heads;
    if (ok) g = {a.dim(0), a.dim(2), a.dim(3), {}};
  } else if (layout == abi::kBsnd) {
    ok = a.ndim == 4 && a.dim(2) == heads;
    if (ok) g = {a.dim(0), a.dim(1), a.dim(3), {}};
  } else {
    Fail(prim, "the 'input_layout' %s (enum %d) is not supported here.", LayoutName(layout), layout);
  }
  if (!ok) {
    const char *form = layout == abi::kBsh    ? "(B, S, H) with H divisible by"
                       : layout == abi::kBnsd ? "(B, N, S, D) with N ="
                                              : "(B, S, N, D) with N =";
    Fail(prim, "the '%s' must be %s %lld in layout %s, but got shape %s.", name, form, (long long)heads,
         LayoutName(layout), a.ShapeString().c_str());
  }
  g.rows = DenseStrides(static_cast<abi::Layout>(layout), heads, g.S, g.D);
  return g;
}

// A paged cache: (num_blocks, block_size, kvN * D) or (num_blocks, kvN, block_size, D).
inline PagedKv ReadPagedCache(const char *prim, const char *name, const Arg &a, int64_t kvN, int64_t D,
                              int64_t block_size) {
  PagedKv pg;
  pg.block_size = block_size;
  if (a.ndim == 3 && a.dim(1) == block_size && a.dim(2) == kvN * D) {
    pg.block_stride = block_size * kvN * D;
    pg.slot_stride = kvN * D;
    pg.head_stride = D;
  } else if (a.ndim == 4 && a.dim(1) == kvN && a.dim(2) == block_size && a.dim(3) == D) {
    pg.block_stride = kvN * block_size * D;
    pg.head_stride = block_size * D;
    pg.slot_stride = D;
  } else {
    Fail(prim, "the paged '%s' must be (num_blocks, %lld, %lld) or (num_blocks, %lld, %lld, %lld), but got %s.", name,
         (long long)block_size, (long long)(kvN * D), (long long)kvN, (long long)block_size, (long long)D,
         a.ShapeString().c_str());
  }
  pg.num_blocks = a.dim(0);
  return pg;
}

// The block table's shape: int32 (B, max_blocks_per_seq). Its entries are checked by CheckBlockTable.
inline void ReadBlockTable(const char *prim, const char *name, const Arg &a, int64_t B, PagedKv *pg) {
  CheckDType(prim, name, a, {abi::kInt32});
  if (a.ndim != 2 || a.dim(0) != B || a.dim(1) <= 0) {
    Fail(prim, "the '%s' must be (B, max_blocks_per_seq) = (%lld, >0), but got %s.", name, (long long)B,
         a.ShapeString().c_str());
  }
  pg->block_table = static_cast<const int32_t *>(a.data);
  pg->max_blocks = a.dim(1);
}

// ---- sequence lengths --------------------------------------------------------------------------------

// Per-batch lengths from an int32 / int64 vector of 1 (every batch) or B values, each in [0, max_len].
inline std::vector<int64_t> ReadSeqLengths(const char *prim, const char *name, const Arg &a, int64_t B,
                                           int64_t max_len) {
  CheckDType(prim, name, a, {abi::kInt32, abi::kInt64});
  if (a.ndim != 1 || (a.dim(0) != 1 && a.dim(0) != B)) {
    Fail(prim, "the '%s' must hold 1 or B = %lld values, but got shape %s.", name, (long long)B,
         a.ShapeString().c_str());
  }
  std::vector<int64_t> len(B);
  for (int64_t b = 0; b < B; ++b) {
    len[b] = ReadInt(a, a.dim(0) == 1 ? 0 : b);
    if (len[b] < 0 || len[b] > max_len) {
      Fail(prim, "each '%s' must be in [0, %lld], but got %lld for batch %lld.", name, (long long)max_len,
           (long long)len[b], (long long)b);
    }
  }
  return len;
}

// Left padding: batch b's window is [S - pad - len, S - pad); a negative pad counts as 0, and a
// window that would begin before the stored sequence is empty (that batch's output is 0).
inline void ApplyLeftPadding(const char *prim, const char *name, const Arg &pad, int64_t S, std::vector<int64_t> *start,
                             std::vector<int64_t> *len) {
  CheckDType(prim, name, pad, {abi::kInt32, abi::kInt64});
  if (pad.numel() != 1) Fail(prim, "the '%s' must hold one value, but got shape %s.", name, pad.ShapeString().c_str());
  const int64_t padding = std::max<int64_t>(0, ReadInt(pad, 0));
  for (size_t b = 0; b < len->size(); ++b) {
    const int64_t first = S - padding - (*len)[b];
    (*start)[b] = std::max<int64_t>(0, first);
    if (first < 0) (*len)[b] = 0;
  }
}

// Every block that holds one of the first `end[b]` stored positions of batch b must lie in [0, num_blocks);
// entries past them are not read (they may be -1).
inline void CheckBlockTable(const char *prim, const char *name, const PagedKv &pg, const std::vector<int64_t> &end) {
  for (size_t b = 0; b < end.size(); ++b) {
    const int64_t used = (end[b] + pg.block_size - 1) / pg.block_size;
    if (used > pg.max_blocks) {
      Fail(prim, "the '%s' has %lld blocks per sequence, but batch %zu needs %lld.", name, (long long)pg.max_blocks, b,
           (long long)used);
    }
    for (int64_t i = 0; i < used; ++i) {
      const int64_t block = pg.block_table[b * pg.max_blocks + i];
      if (block < 0 || block >= pg.num_blocks) {
        Fail(prim, "the '%s' entry %lld of batch %zu (slot %lld) is out of range [0, %lld).", name, (long long)block, b,
             (long long)i, (long long)pg.num_blocks);
      }
    }
  }
}

// One past the last stored key position any batch reads: how far a mask or bias row must reach.
inline int64_t KvExtent(const Problem &p) {
  int64_t extent = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    if (p.kv_len[b] > 0) extent = std::max(extent, p.kv_start[b] + p.kv_len[b]);
  }
  return extent;
}

inline void CheckCoversKeys(const char *prim, const char *name, int64_t covered, const Problem &p) {
  const int64_t needed = KvExtent(p);
  if (covered < needed) {
    Fail(prim, "the last axis of '%s' (%lld) must cover the %lld key positions that are read.", name,
         (long long)covered, (long long)needed);
  }
}

// ---- optional inputs ---------------------------------------------------------------------------------

// pse_shift (B or 1, N, Sq, S') in the query dtype; added to the scores after the scale.
inline ScoreBias ReadScoreBias(const char *prim, const char *name, const Arg &a, int64_t B, int64_t N, int64_t Sq,
                               DType q_dtype) {
  CheckDTypeIs(prim, name, a, q_dtype, "query");
  if (a.ndim != 4 || (a.dim(0) != 1 && a.dim(0) != B) || a.dim(1) != N || a.dim(2) != Sq) {
    Fail(prim, "the '%s' must be (%lld or 1, %lld, %lld, S), but got %s.", name, (long long)B, (long long)N,
         (long long)Sq, a.ShapeString().c_str());
  }
  ScoreBias bias;
  bias.data = a.data;
  bias.dtype = a.dtype;
  bias.numel = a.numel();
  bias.row = a.dim(3);
  bias.head = Sq * bias.row;
  bias.batch = a.dim(0) == 1 ? 0 : N * bias.head;
  return bias;
}

// Combined antiquant scale / offset of int8 key and value (row 0 key, row 1 value), in the query dtype (or
// float32):
// per tensor (2,) or per channel with 2 * kvN * D values ((2, kvN, 1, D), (2, kvN, D), (2, kvN * D)).
inline Antiquant ReadAntiquant(const char *prim, const Arg &scale, const Arg &offset, DType q_dtype, int64_t kvN,
                               int64_t D) {
  const int64_t width = kvN * D;
  auto read = [&](const Arg &a, const char *name, std::vector<float> *key, std::vector<float> *value) {
    CheckDType(prim, name, a, {q_dtype, abi::kFloat32});
    const int64_t n = a.numel();
    if (n != 2 && n != 2 * width) {
      Fail(prim, "the '%s' must hold 2 (per tensor) or %lld (per channel) values, but got shape %s.", name,
           (long long)(2 * width), a.ShapeString().c_str());
    }
    key->resize(width);
    value->resize(width);
    for (int64_t c = 0; c < width; ++c) {
      (*key)[c] = ReadFloat(a, n == 2 ? 0 : c);
      (*value)[c] = ReadFloat(a, n == 2 ? 1 : width + c);
    }
  };
  Antiquant aq;
  read(scale, "antiquant_scale", &aq.key_scale, &aq.value_scale);
  if (offset.present()) {
    read(offset, "antiquant_offset", &aq.key_offset, &aq.value_offset);
  } else {
    aq.key_offset.assign(width, 0.f);
    aq.value_offset.assign(width, 0.f);
  }
  return aq;
}

// The scale / offset of an int8 output (quant_scale2 / quant_offset2): float32 (or bfloat16 when allowed), one
// value or one per channel (N * D).
inline PostQuant ReadPostQuant(const char *prim, const char *scale_name, const char *offset_name, const Arg &scale,
                               const Arg &offset, int64_t N, int64_t D, bool allow_bf16) {
  const int64_t n = scale.numel();
  auto check_dtype = [&](const char *name, const Arg &a) {
    if (allow_bf16) {
      CheckDType(prim, name, a, {abi::kFloat32, abi::kBfloat16});
    } else {
      CheckDType(prim, name, a, {abi::kFloat32});
    }
  };
  check_dtype(scale_name, scale);
  if (n != 1 && n != N * D) {
    Fail(prim, "the '%s' must hold 1 or N * D = %lld values, but got shape %s.", scale_name, (long long)(N * D),
         scale.ShapeString().c_str());
  }
  PostQuant pq;
  pq.per_channel = n != 1;
  for (int64_t i = 0; i < n; ++i) pq.scale.push_back(ReadFloat(scale, i));
  if (offset.present()) {
    check_dtype(offset_name, offset);
    if (offset.numel() != n) {
      Fail(prim, "the '%s' must have as many values as '%s' (%lld), but got shape %s.", offset_name, scale_name,
           (long long)n, offset.ShapeString().c_str());
    }
    for (int64_t i = 0; i < n; ++i) pq.offset.push_back(ReadFloat(offset, i));
  }
  return pq;
}

// ---- the whole problem -------------------------------------------------------------------------------

// The largest element offset + 1 a paged cache of head dim `width` can reach through any valid block entry.
inline int64_t PagedExtent(const PagedKv &pg, int64_t kvN, int64_t width) {
  if (pg.num_blocks <= 0) return 0;
  return (pg.num_blocks - 1) * pg.block_stride + (kvN - 1) * pg.head_stride + (pg.block_size - 1) * pg.slot_stride +
         width;
}

// The contract between adapters and the core: supported dtypes, consistent sizes, windows inside the stored
// extents, and every element the core will touch inside its buffer. The adapter's validators give the
// user-facing messages first; what fails here is an adapter bug, reported instead of a wild read.
inline void CheckProblem(const char *prim, const Problem &p) {
  auto internal = [prim](const char *what, long long at, long long size) {
    Fail(prim, "internal error: the %s would be accessed at element %lld of %lld.", what, at, size);
  };
  if (p.B <= 0 || p.N <= 0 || p.kvN <= 0 || p.G <= 0 || p.D <= 0 || p.N != p.kvN * p.G || p.Sq < 0) {
    Fail(prim, "internal error: inconsistent sizes B %lld, N %lld, kvN %lld, G %lld, D %lld.", (long long)p.B,
         (long long)p.N, (long long)p.kvN, (long long)p.G, (long long)p.D);
  }
  const bool fq = p.full_quant.enabled;
  const bool f32 = p.q_dtype == abi::kFloat32;  // speed_fusion_attention: float32 query, key and value, no rope
  const bool q_ok = fq ? p.q_dtype == abi::kInt8
                       : (p.q_dtype == abi::kFloat16 || p.q_dtype == abi::kBfloat16 || (f32 && !p.rope.enabled()));
  const bool kv_ok = fq ? p.kv.dtype == abi::kInt8 && !p.kv.antiquant.enabled()
                        : p.kv.dtype == p.q_dtype || (!f32 && p.kv.dtype == abi::kInt8 && p.kv.antiquant.enabled());
  const DType plain_out = fq ? abi::kFloat16 : p.q_dtype;
  const bool out_ok = p.post_quant.enabled() ? p.out_dtype == abi::kInt8 : p.out_dtype == plain_out;
  const DType bias_dtype = fq ? abi::kFloat16 : p.q_dtype;
  if (!q_ok || !kv_ok || !out_ok || (p.bias.data != nullptr && p.bias.dtype != bias_dtype)) {
    Fail(prim, "internal error: unsupported dtypes query %s, key/value %s, output %s.", DTypeName(p.q_dtype),
         DTypeName(p.kv.dtype), DTypeName(p.out_dtype));
  }
  const size_t B = static_cast<size_t>(p.B), width = static_cast<size_t>(p.kvN * p.D);
  if (p.q_start.size() != B || p.q_len.size() != B || p.kv_start.size() != B || p.kv_len.size() != B) {
    Fail(prim, "internal error: the per-batch windows are not sized B.");
  }
  const bool framed = p.mask.data != nullptr || p.bias.data != nullptr;
  if (framed && (p.frame.q.size() != B || p.frame.k.size() != B)) Fail(prim, "internal error: no mask frame.");
  if (p.band.enabled() && (p.band.lo.size() != B || p.band.hi.size() != B ||
                            (!p.band.open_keys.empty() && p.band.open_keys.size() != B))) {
    Fail(prim, "internal error: band.");
  }
  if (!p.band.enabled() && !p.band.open_keys.empty()) Fail(prim, "internal error: open keys without a band.");
  if (p.alibi.enabled() && p.alibi.slopes.size() != B * static_cast<size_t>(p.N)) {
    Fail(prim, "internal error: the ALiBi slopes are not sized B * N.");
  }
  const Dropout &drop = p.dropout;
  if (drop.enabled()) {
    if (!(drop.keep_prob > 0.0) || (drop.bits == nullptr && drop.row_origin.size() != B) ||
        (drop.bits != nullptr && (drop.base.size() != B || drop.head.size() != B || drop.row.size() != B))) {
      Fail(prim, "internal error: an inconsistent dropout.");
    }
  }
  const SoftmaxStats &stats = p.stats;
  if (stats.enabled() && (stats.sum == nullptr || stats.rows.batch < 0 || stats.rows.head < 0 || stats.rows.seq < 0)) {
    Fail(prim, "internal error: softmax stats.");
  }
  if (p.bias.compressed_rows > 0) {  // window-relative rows and columns: no frame
    bool ok = p.bias.cols <= p.bias.row;
    for (size_t b = 0; ok && b < p.frame.q.size(); ++b) ok = p.frame.q[b] == 0 && p.frame.k[b] == 0;
    if (!ok) Fail(prim, "internal error: a compressed pse.");
  }
  if (!p.sink.empty() && p.sink.size() != static_cast<size_t>(p.N)) Fail(prim, "internal error: sink size.");
  const Antiquant &aq = p.kv.antiquant;
  if (aq.enabled() && (aq.key_scale.size() != width || aq.key_offset.size() != width ||
                       aq.value_scale.size() != width || aq.value_offset.size() != width)) {
    Fail(prim, "internal error: the antiquant parameters are not sized kvN * D.");
  }
  const SharedPrefix &prefix = p.prefix;
  const Rope &rope = p.rope;
  if (prefix.len < 0 || (prefix.len > 0 && (prefix.key == nullptr || prefix.value == nullptr ||
                                            rope.enabled() || p.kv.key_tokens.enabled() ||
                                            p.kv.value_tokens.enabled()))) {
    Fail(prim, "internal error: an inconsistent shared prefix.");
  }
  if (prefix.len > 0 && prefix.rows.At(0, p.kvN - 1, prefix.len - 1) + p.D > prefix.numel) {
    internal("shared prefix", prefix.rows.At(0, p.kvN - 1, prefix.len - 1) + p.D, prefix.numel);
  }
  for (const TokenScale *ts : {&p.kv.key_tokens, &p.kv.value_tokens}) {
    if (ts->enabled() && (ts->origin.size() != B || ts->batch < 0)) Fail(prim, "internal error: token scales.");
  }
  for (const RowStrides *s : {&p.q_rows, &p.out_rows, &p.lse_rows, &p.kv.rows, &p.rope.q_rows, &p.rope.key.rows,
                              &p.prefix.rows}) {
    if (s->batch < 0 || s->head < 0 || s->seq < 0) Fail(prim, "internal error: a negative stride.");
  }
  const PagedKv &pg = p.kv.pages;
  if (p.kv.paged) {
    if (pg.block_table == nullptr || pg.block_size <= 0 || pg.block_stride < 0 || pg.head_stride < 0 ||
        pg.slot_stride < 0 || p.kv.stored_len > pg.max_blocks * pg.block_size) {
      Fail(prim, "internal error: an inconsistent paged cache.");
    }
    const int64_t last = PagedExtent(pg, p.kvN, p.D);
    if (last > p.kv.numel) internal("paged 'key'/'value'", last, p.kv.numel);
    if (rope.enabled()) {
      const PagedKv &rp = rope.key.pages;
      if (!rope.key.paged || rp.block_table != pg.block_table || rp.block_size != pg.block_size ||
          rp.num_blocks != pg.num_blocks || rp.max_blocks != pg.max_blocks ||
          PagedExtent(rp, p.kvN, rope.Dr) > rope.key.numel) {
        Fail(prim, "internal error: an inconsistent paged key_rope.");
      }
    }
  } else if (rope.enabled() && rope.key.paged) {
    Fail(prim, "internal error: a paged key_rope with a dense key.");
  }
  std::vector<int64_t> kv_end(B);
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t qs = p.q_start[b], ql = p.q_len[b], ks = p.kv_start[b], kl = p.kv_len[b];
    if (qs < 0 || ql < 0 || qs + ql > p.Sq || ks < 0 || kl < 0 || ks + kl > p.kv.stored_len) {
      Fail(prim, "internal error: the windows of batch %lld lie outside the stored sequences.", (long long)b);
    }
    kv_end[b] = kl > 0 ? ks + kl : 0;
    if (ql == 0) continue;
    const int64_t qi = qs + ql - 1;  // last query position; strides are non-negative, so the last index is the largest
    const int64_t q_last = p.q_rows.At(b, p.N - 1, qi) + p.D, out_last = p.out_rows.At(b, p.N - 1, qi) + p.D;
    if (q_last > p.q_numel) internal("'query'", q_last, p.q_numel);
    if (out_last > p.out_numel) internal("output", out_last, p.out_numel);
    if (p.lse != nullptr && p.lse_rows.At(b, p.N - 1, qi) >= p.lse_numel) {
      internal("lse output", p.lse_rows.At(b, p.N - 1, qi), p.lse_numel);
    }
    if (rope.enabled() && rope.q_rows.At(b, p.N - 1, qi) + rope.Dr > rope.q_numel) {
      internal("'query_rope'", rope.q_rows.At(b, p.N - 1, qi) + rope.Dr, rope.q_numel);
    }
    const int64_t keys = prefix.len + kl;
    if (keys == 0) continue;
    if (kl > 0) {
      const int64_t kj = ks + kl - 1;  // last key position of the window
      if (!p.kv.paged && p.kv.rows.At(b, p.kvN - 1, kj) + p.D > p.kv.numel) {
        internal("'key'/'value'", p.kv.rows.At(b, p.kvN - 1, kj) + p.D, p.kv.numel);
      }
      if (rope.enabled() && !rope.key.paged && rope.key.rows.At(b, p.kvN - 1, kj) + rope.Dr > rope.key.numel) {
        internal("'key_rope'", rope.key.rows.At(b, p.kvN - 1, kj) + rope.Dr, rope.key.numel);
      }
      for (const TokenScale *ts : {&p.kv.key_tokens, &p.kv.value_tokens}) {
        if (!ts->enabled()) continue;
        const int64_t at = b * ts->batch + ts->origin[b] + kl - 1;
        if (ts->origin[b] < 0 || at >= ts->numel) internal("per-token antiquant scale", at, ts->numel);
      }
    }
    if (framed && (p.frame.q[b] < 0 || p.frame.k[b] < 0)) Fail(prim, "internal error: a negative mask frame.");
    const int64_t mi = ql - 1, mj = keys - 1;  // last window-relative row and key
    if (p.mask.data != nullptr) {
      const int64_t at = b * p.mask.batch + (p.N - 1) * p.mask.head + (mi + p.frame.q[b]) * p.mask.row + mj +
                         p.frame.k[b];
      if (at >= p.mask.numel || p.mask.batch < 0 || p.mask.row < 0 || p.mask.head < 0 ||
          (p.mask.head != 0 && p.mask.additive)) {
        internal("'attn_mask'", at, p.mask.numel);
      }
    }
    if (p.bias.data != nullptr) {
      // a compressed pse's rows are [0, compressed_rows), its row-0 shift reads stop at cols (BiasOffset)
      const int64_t last_row = p.bias.compressed_rows > 0 ? p.bias.compressed_rows - 1 : mi + p.frame.q[b];
      const int64_t at = b * p.bias.batch + (p.N - 1) * p.bias.head + last_row * p.bias.row + mj + p.frame.k[b];
      if (at >= p.bias.numel || p.bias.batch < 0 || p.bias.head < 0 || p.bias.row < 0) {
        internal("'pse'", at, p.bias.numel);
      }
    }
    if (drop.enabled() && drop.bits != nullptr) {
      const int64_t last = drop.base[b] + (p.N - 1) * drop.head[b] + mi * drop.row[b] + mj;
      if (drop.base[b] < 0 || drop.head[b] < 0 || drop.row[b] < 0 || (last >> 3) >= drop.bytes) {
        internal("'drop_mask'", last >> 3, drop.bytes);
      }
    }
    if (stats.enabled() && stats.rows.At(b, p.N - 1, qi) + kStatsWidth > stats.numel) {
      internal("softmax_max / softmax_sum", stats.rows.At(b, p.N - 1, qi) + kStatsWidth, stats.numel);
    }
  }
  if (p.kv.paged) CheckBlockTable(prim, "block_table", pg, kv_end);
  const PostQuant &pq = p.post_quant;
  const size_t pq_values = pq.per_channel ? static_cast<size_t>(p.N * p.D) : 1;
  if (pq.enabled() && (pq.scale.size() != pq_values || (!pq.offset.empty() && pq.offset.size() != pq_values))) {
    Fail(prim, "internal error: the post-quantization holds %zu values.", pq.scale.size());
  }
}

}  // namespace msa
