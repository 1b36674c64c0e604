// Reading and validating the inputs of the training attention operators -- flash_attention_score,
// speed_fusion_attention and the internal flash_attention_score_grad -- into one Problem (contract:
// /work/notes/issue7_contract.md). Each adapter fills a TrainingArgs from its AOT parameters and calls
// BuildTrainingProblem, which checks every input the kernel receives on its real shapes and values (what the
// Python side cannot see under dynamic shapes or Tensor-valued lengths) and fails with a RuntimeError naming the
// argument and the value. The caller then sets its outputs (ReadForwardOutputs for the forward) and runs
// CheckProblem, which proves every index the core forms lies inside its buffer.
//
// Positions are window-relative: row i and key j of batch b's windows (the whole stored sequences outside TND,
// the token ranges of the cumulative lengths in TND). Masks, pse and the dropout mask are indexed by (i, j).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "attention/fused_inputs.h"
#include "attention/problem.h"
#include "attention/score_terms.h"
#include "attention/validate.h"
#include "common.h"

namespace msa {

// The argument names an operator uses in its messages.
struct TrainingNames {
  const char *pse = "pse", *mask = "atten_mask", *scale = "scale";
};

// The inputs and normalised attributes of a FAS / SFA / FAS-grad call. Absent optional inputs stay AbsentArg().
struct TrainingArgs {
  const char *prim = "";
  TrainingNames names;
  bool allow_float32 = false;  // speed_fusion_attention and the grad take float32 query / key / value
  Arg query = AbsentArg(), key = AbsentArg(), value = AbsentArg(), pse = AbsentArg(), drop_mask = AbsentArg();
  Arg mask = AbsentArg(), prefix = AbsentArg(), seq_q = AbsentArg(), seq_kv = AbsentArg();
  Arg q_start_idx = AbsentArg(), kv_start_idx = AbsentArg(), seed = AbsentArg(), offset = AbsentArg();
  int64_t head_num = 0, pre_tokens = 0, next_tokens = 0, sparse_mode = 0, pse_type = 1;
  int layout = 0;
  double keep_prob = 1.0;
  float scale = 1.f;
};

namespace training {

constexpr int64_t kMaxHeadDim = 512;          // FAS documents D <= 512
constexpr int64_t kCompressedPseRows = 1024;  // the compressed ALiBi rows of sparse modes 2 / 3
constexpr int64_t kNoLimit = int64_t(1) << 40;
constexpr int64_t kExactAlibiDistance = int64_t(1) << 24;  // float32 holds every integer up to it

struct Context {
  const TrainingArgs &a;
  const char *prim;
  bool tnd = false;
  int64_t S2 = 0;  // stored key positions: S2, or T2 in TND
};

// A query / key / value tensor in its layout. TND leaves B = 0 (the cumulative lengths give it).
struct Geometry {
  int64_t B = 0, S = 0, N = 0, D = 0;
  RowStrides rows;
};

inline bool TensorLayout(int layout) {
  return layout == abi::kBsh || layout == abi::kSbh || layout == abi::kBnsd || layout == abi::kBsnd ||
         layout == abi::kTnd;
}

inline const char *LayoutForm(int layout) {
  switch (layout) {
    case abi::kBsh: return "(B, S, H)";
    case abi::kSbh: return "(S, B, H)";
    case abi::kBnsd: return "(B, N, S, D)";
    case abi::kBsnd: return "(B, S, N, D)";
    default: return "(T, N, D)";
  }
}

// heads > 0 (the query): the head count is given and D follows; heads == 0 (key / value): D is given and the
// head count follows.
inline Geometry ReadGeometry(const Context &c, const char *name, const Arg &a, int64_t heads, int64_t D) {
  const int L = c.a.layout;
  Geometry g;
  const bool hidden = L == abi::kBsh || L == abi::kSbh;
  const int rank = hidden || L == abi::kTnd ? 3 : 4;
  if (a.ndim != rank) {
    Fail(c.prim, "the '%s' must be %s in layout %s, but got shape %s.", name, LayoutForm(L), LayoutName(L),
         a.ShapeString().c_str());
  }
  int64_t n = 0, d = 0;
  if (hidden) {
    g.B = L == abi::kBsh ? a.dim(0) : a.dim(1);
    g.S = L == abi::kBsh ? a.dim(1) : a.dim(0);
    const int64_t H = a.dim(2);
    if (heads > 0) {
      if (H <= 0 || H % heads != 0) {
        Fail(c.prim, "the hidden size of '%s' (%lld) must be a positive multiple of 'head_num' %lld, but got shape "
             "%s.", name, (long long)H, (long long)heads, a.ShapeString().c_str());
      }
      n = heads;
      d = H / heads;
    } else {
      if (H <= 0 || H % D != 0) {
        Fail(c.prim, "the hidden size of '%s' (%lld) must be a positive multiple of the head dim D = %lld of "
             "'query', but got shape %s.", name, (long long)H, (long long)D, a.ShapeString().c_str());
      }
      n = H / D;
      d = D;
    }
  } else {
    if (L == abi::kTnd) {
      g.S = a.dim(0);
      n = a.dim(1);
      d = a.dim(2);
    } else {
      g.B = a.dim(0);
      n = L == abi::kBnsd ? a.dim(1) : a.dim(2);
      g.S = L == abi::kBnsd ? a.dim(2) : a.dim(1);
      d = a.dim(3);
    }
    if (heads > 0 && n != heads) {
      Fail(c.prim, "the head axis of '%s' must equal 'head_num' %lld in layout %s, but got shape %s.", name,
           (long long)heads, LayoutName(L), a.ShapeString().c_str());
    }
    if (heads == 0 && (d != D || n <= 0)) {
      Fail(c.prim, "the '%s' must have the head dim D = %lld of 'query' and at least one head, but got shape %s.",
           name, (long long)D, a.ShapeString().c_str());
    }
  }
  g.N = n;
  g.D = d;
  if (L == abi::kTnd) {
    g.rows = {0, d, n * d};
  } else if (L == abi::kSbh) {
    g.rows = SbhStrides(g.B, n, d);
  } else {
    g.rows = DenseStrides(L == abi::kBnsd ? abi::kBnsd : abi::kBsnd, n, g.S, d);
  }
  return g;
}

inline void ReadAttributes(Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  if (a.head_num <= 0) Fail(c.prim, "the 'head_num' is not greater than 0, but got %lld.", (long long)a.head_num);
  if (!TensorLayout(a.layout)) {
    Fail(c.prim, "the 'input_layout' must be one of BSH, SBH, BNSD, BSND, TND, but got %s (enum %d).",
         LayoutName(a.layout), a.layout);
  }
  if (a.sparse_mode < 0 || a.sparse_mode > 8) {
    Fail(c.prim, "the 'sparse_mode' must be in [0, 8], but got %lld.", (long long)a.sparse_mode);
  }
  if (!(a.keep_prob > 0.0 && a.keep_prob <= 1.0)) {
    Fail(c.prim, "the 'keep_prob' must be in (0, 1], but got %g.", a.keep_prob);
  }
  if (a.pse_type < 0 || a.pse_type > 3) Fail(c.prim, "the 'pse_type' must be in [0, 3], but got %lld.", (long long)a.pse_type);
  if (!std::isfinite(a.scale)) Fail(c.prim, "the '%s' must be finite, but got %g.", a.names.scale, a.scale);
  c.tnd = a.layout == abi::kTnd;
  p->N = a.head_num;
  p->scale = a.scale;
}

// query, key, value: dtypes, layouts, head counts (GQA) and head dim.
inline void ReadQueryKeyValue(Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  if (a.allow_float32) {
    CheckDType(c.prim, "query", a.query, {abi::kFloat16, abi::kBfloat16, abi::kFloat32});
  } else {
    CheckDType(c.prim, "query", a.query, {abi::kFloat16, abi::kBfloat16});
  }
  CheckDTypeIs(c.prim, "key", a.key, a.query.dtype, "query");
  CheckDTypeIs(c.prim, "value", a.value, a.query.dtype, "query");
  const Geometry q = ReadGeometry(c, "query", a.query, p->N, 0);
  if (q.D <= 0 || q.D > kMaxHeadDim) {
    Fail(c.prim, "the head dim D must be in [1, %lld], but got D=%lld (query shape %s).", (long long)kMaxHeadDim,
         (long long)q.D, a.query.ShapeString().c_str());
  }
  const Geometry k = ReadGeometry(c, "key", a.key, 0, q.D);
  CheckSameShape(c.prim, "key", a.key, "value", a.value);
  if (p->N % k.N != 0) {
    Fail(c.prim, "the 'head_num' %lld must be a multiple of the key/value head count N2 = %lld (key shape %s).",
         (long long)p->N, (long long)k.N, a.key.ShapeString().c_str());
  }
  if (!c.tnd) {
    if (q.B <= 0 || q.S <= 0) {
      Fail(c.prim, "the 'query' must have a positive batch and sequence length, but got shape %s.",
           a.query.ShapeString().c_str());
    }
    if (k.B != q.B || k.S <= 0) {
      Fail(c.prim, "the 'key' must have the batch size %lld of 'query' and a positive sequence length, but got "
           "shape %s.", (long long)q.B, a.key.ShapeString().c_str());
    }
  }
  p->B = q.B;
  p->Sq = q.S;
  p->D = q.D;
  p->kvN = k.N;
  p->G = p->N / k.N;
  p->q_dtype = a.query.dtype;
  p->query = a.query.data;
  p->q_numel = a.query.numel();
  p->q_rows = q.rows;
  KvCache &kv = p->kv;
  kv.key = a.key.data;
  kv.value = a.value.data;
  kv.dtype = a.key.dtype;
  kv.numel = a.key.numel();
  kv.rows = k.rows;
  kv.stored_len = k.S;
  c.S2 = k.S;
}

// The per-batch windows: the stored sequences, or the cumulative lengths of TND (kv_b = 0 is rejected).
inline void ReadWindows(const Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  if (!c.tnd) {
    if (a.seq_q.present()) Fail(c.prim, "the 'actual_seq_qlen' must be None in layout %s.", LayoutName(a.layout));
    if (a.seq_kv.present()) Fail(c.prim, "the 'actual_seq_kvlen' must be None in layout %s.", LayoutName(a.layout));
    p->q_start.assign(p->B, 0);
    p->q_len.assign(p->B, p->Sq);
    p->kv_start.assign(p->B, 0);
    p->kv_len.assign(p->B, c.S2);
    return;
  }
  if (!a.seq_q.present()) Fail(c.prim, "the 'actual_seq_qlen' is required in layout TND.");
  if (!a.seq_kv.present()) Fail(c.prim, "the 'actual_seq_kvlen' is required in layout TND.");
  ReadCumulative(c.prim, "actual_seq_qlen", a.seq_q, p->Sq, &p->q_start, &p->q_len);
  ReadCumulative(c.prim, "actual_seq_kvlen", a.seq_kv, c.S2, &p->kv_start, &p->kv_len);
  if (p->kv_len.size() != p->q_len.size()) {
    Fail(c.prim, "the 'actual_seq_kvlen' must hold as many values as 'actual_seq_qlen' (%zu) in layout TND, but "
         "got %zu.", p->q_len.size(), p->kv_len.size());
  }
  p->B = static_cast<int64_t>(p->q_len.size());
  for (int64_t b = 0; b < p->B; ++b) {
    if (p->kv_len[b] == 0) {
      Fail(c.prim, "the 'actual_seq_kvlen' must not hold an empty sequence, but batch %lld has length 0.",
           (long long)b);
    }
  }
}

inline int64_t LongestQuery(const Problem &p) {
  int64_t n = 0;
  for (int64_t b = 0; b < p.B; ++b) n = std::max(n, p.q_len[b]);
  return n;
}
inline int64_t LongestKeys(const Problem &p) {
  int64_t n = 0;
  for (int64_t b = 0; b < p.B; ++b) n = std::max(n, p.kv_len[b]);
  return n;
}

// The mode batch b follows: 7 and 8 use mode 3 / 2, with band mode 4 for one batch (the last one with query rows
// / the first one with keys).
inline int64_t BatchMode(const Problem &p, int64_t mode, int64_t b) {
  if (mode == 7) {
    int64_t last = -1;
    for (int64_t x = 0; x < p.B; ++x) {
      if (p.q_len[x] > 0) last = x;
    }
    return b == last ? 4 : 3;
  }
  if (mode == 8) {
    int64_t first = -1;
    for (int64_t x = p.B - 1; x >= 0; --x) {
      if (p.kv_len[x] > 0) first = x;
    }
    return b == first ? 4 : 2;
  }
  return mode;
}

// A user mask takes part in modes 0, 1 and 5 only; in the others its contents never change the result.
inline bool MaskUsed(const TrainingArgs &a) {
  return a.mask.present() && (a.sparse_mode == 0 || a.sparse_mode == 1 || a.sparse_mode == 5);
}

// prefix (modes 5 / 6): B values, 0 <= prefix[b] <= kv_b. Ignored in the other modes.
inline std::vector<int64_t> ReadPrefix(const Context &c, const Problem &p) {
  const TrainingArgs &a = c.a;
  const Arg &x = a.prefix;
  if (!x.present()) Fail(c.prim, "the 'prefix' is required with sparse_mode %lld.", (long long)a.sparse_mode);
  CheckDType(c.prim, "prefix", x, {abi::kInt64, abi::kInt32});
  if (x.ndim != 1 || x.dim(0) != p.B) {
    Fail(c.prim, "the 'prefix' must hold B = %lld values, but got shape %s.", (long long)p.B,
         x.ShapeString().c_str());
  }
  std::vector<int64_t> prefix(p.B);
  for (int64_t b = 0; b < p.B; ++b) {
    prefix[b] = ReadInt(x, b);
    if (prefix[b] < 0 || prefix[b] > p.kv_len[b]) {
      Fail(c.prim, "each 'prefix' value must be in [0, %lld] (the key length of its batch), but got %lld for batch "
           "%lld.", (long long)p.kv_len[b], (long long)prefix[b], (long long)b);
    }
  }
  return prefix;
}

// The band of each batch (sparse modes 0-8, pre/next tokens), on window-relative positions, d = kv_b - q_b.
inline void ReadBand(const Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  const int64_t mode = a.sparse_mode;
  if (mode == 1 || (mode == 0 && !MaskUsed(a))) return;
  std::vector<int64_t> prefix;
  if (mode == 5 || mode == 6) prefix = ReadPrefix(c, *p);
  Band &band = p->band;
  for (int64_t b = 0; b < p->B; ++b) {
    const int64_t d = p->kv_len[b] - p->q_len[b];
    int64_t lo = -kNoLimit, hi = kNoLimit;
    switch (BatchMode(*p, mode, b)) {
      case 0:
        lo = -a.pre_tokens;
        hi = a.next_tokens;
        break;
      case 2: hi = 0; break;
      case 3:
      case 5:
      case 6: hi = d; break;
      default:  // 4
        lo = d - a.pre_tokens;
        hi = d + a.next_tokens;
        break;
    }
    band.lo.push_back(lo);
    band.hi.push_back(hi);
  }
  if (!prefix.empty()) band.open_keys = prefix;
}

// The user mask (bool / uint8, 1 = discard). Used by modes 0, 1, 5: (B|1, N1|1, S1, S2) or (S1, S2); TND
// (B|1, N1|1, Smax_q, Smax_kv) or (Smax_q, Smax_kv) covering the longest windows. Other modes: not read.
inline void ReadMask(const Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  const Arg &m = a.mask;
  const char *name = a.names.mask;
  if (!m.present()) return;
  CheckDType(c.prim, name, m, {abi::kBool, abi::kUint8});
  if (!MaskUsed(a)) return;
  const int64_t rows = c.tnd ? LongestQuery(*p) : p->Sq, cols = c.tnd ? LongestKeys(*p) : c.S2;
  bool ok = m.ndim == 2 || (m.ndim == 4 && (m.dim(0) == 1 || m.dim(0) == p->B) && (m.dim(1) == 1 || m.dim(1) == p->N));
  ok = ok && (c.tnd ? m.dim(-2) >= rows && m.dim(-1) >= cols : m.dim(-2) == rows && m.dim(-1) == cols);
  if (!ok) {
    Fail(c.prim, "the '%s' shape must be (B, N1, S1, S2), (B, 1, S1, S2) or (S1, S2) with B = %lld, N1 = %lld, "
         "S1 %s %lld, S2 %s %lld, but got %s.", name, (long long)p->B, (long long)p->N, c.tnd ? ">=" : "=",
         (long long)rows, c.tnd ? ">=" : "=", (long long)cols, m.ShapeString().c_str());
  }
  Mask &mask = p->mask;
  mask.data = m.data;
  mask.numel = m.numel();
  mask.row = m.dim(-1);
  const int64_t plane = m.dim(-2) * m.dim(-1);
  mask.head = m.ndim == 4 && m.dim(1) > 1 ? plane : 0;
  mask.batch = m.ndim == 4 && m.dim(0) > 1 ? m.dim(1) * plane : 0;
}

// One int64 (or int32) value of a tensor of one element (shape () or (1,)).
inline int64_t ReadScalarTensor(const Context &c, const char *name, const Arg &x) {
  CheckDType(c.prim, name, x, {abi::kInt64, abi::kInt32});
  if (x.numel() != 1) Fail(c.prim, "the '%s' must hold one value, but got shape %s.", name, x.ShapeString().c_str());
  return ReadInt(x, 0);
}

// pse_type 0 / 1: the pse tensor (query dtype), full or compressed ALiBi rows. 2 / 3: float32 slopes.
inline void ReadPse(const Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  const Arg &x = a.pse;
  const char *name = a.names.pse;
  if (!x.present()) return;
  if (a.pse_type >= 2) {
    CheckDType(c.prim, name, x, {abi::kFloat32});
    const bool per_batch = x.ndim == 2 && x.dim(0) == p->B && x.dim(1) == p->N;
    if (!per_batch && !(x.ndim == 1 && x.dim(0) == p->N)) {
      Fail(c.prim, "the '%s' of pse_type %lld holds the ALiBi slopes, (B, N1) = (%lld, %lld) or (N1,), but got %s.",
           name, (long long)a.pse_type, (long long)p->B, (long long)p->N, x.ShapeString().c_str());
    }
    Alibi &alibi = p->alibi;
    const float *slopes = static_cast<const float *>(x.data);
    for (int64_t b = 0; b < p->B; ++b) {
      for (int64_t h = 0; h < p->N; ++h) alibi.slopes.push_back(slopes[per_batch ? b * p->N + h : h]);
    }
    alibi.sqrt = a.pse_type == 3;
    const int64_t q0 = a.q_start_idx.present() ? ReadScalarTensor(c, "q_start_idx", a.q_start_idx) : 0;
    const int64_t k0 = a.kv_start_idx.present() ? ReadScalarTensor(c, "kv_start_idx", a.kv_start_idx) : 0;
    // The scores hold -slope * |j - i + shift| in float32: beyond 2^24 consecutive distances round to the same
    // value and the ALiBi slope is silently lost, so such offsets are refused rather than computed wrongly.
    const int64_t longest = c.tnd ? LongestQuery(*p) + LongestKeys(*p) : p->Sq + c.S2;
    if (std::llabs(q0) > kExactAlibiDistance || std::llabs(k0) > kExactAlibiDistance ||
        std::llabs(k0 - q0) + longest > kExactAlibiDistance) {
      Fail(c.prim, "the ALiBi distances |j - i + kv_start_idx - q_start_idx| must stay below 2^24 (exact in "
           "float32), but got 'q_start_idx' %lld and 'kv_start_idx' %lld with sequence lengths up to %lld.",
           (long long)q0, (long long)k0, (long long)longest);
    }
    alibi.shift = k0 - q0;
    return;
  }
  CheckDTypeIs(c.prim, name, x, p->q_dtype, "query");
  const int64_t longest_q = c.tnd ? LongestQuery(*p) : p->Sq, longest_kv = c.tnd ? LongestKeys(*p) : c.S2;
  const bool compressed = (a.sparse_mode == 2 || a.sparse_mode == 3) && x.ndim == 4 &&
                          x.dim(2) == kCompressedPseRows && longest_q != kCompressedPseRows;
  bool ok = x.ndim == 4 && (x.dim(0) == 1 || x.dim(0) == p->B) && x.dim(1) == p->N;
  if (compressed) {
    ok = ok && (c.tnd ? x.dim(3) >= longest_kv : x.dim(3) == c.S2);
  } else {
    ok = ok && (c.tnd ? x.dim(2) >= longest_q && x.dim(3) >= longest_kv : x.dim(2) == p->Sq && x.dim(3) == c.S2);
  }
  if (!ok) {
    Fail(c.prim, "the '%s' must be (B, N1, S1, S2) or (1, N1, S1, S2) with B = %lld, N1 = %lld, S1 %s %lld, S2 %s "
         "%lld (or (B|1, N1, 1024, S2) with sparse_mode 2 / 3), but got %s.", name, (long long)p->B, (long long)p->N,
         c.tnd ? ">=" : "=", (long long)longest_q, c.tnd ? ">=" : "=", (long long)longest_kv,
         x.ShapeString().c_str());
  }
  ScoreBias &bias = p->bias;
  bias.data = x.data;
  bias.dtype = x.dtype;
  bias.numel = x.numel();
  bias.row = x.dim(3);
  bias.head = x.dim(2) * bias.row;
  bias.batch = x.dim(0) > 1 ? p->N * bias.head : 0;
  bias.factor = a.pse_type == 1 ? p->scale : 1.f;
  if (compressed) {
    bias.compressed_rows = kCompressedPseRows;
    bias.cols = x.dim(3);
  }
}

// keep_prob, the explicit drop_mask or the generator's seed / offset.
inline void ReadDropout(const Context &c, Problem *p) {
  const TrainingArgs &a = c.a;
  const Arg &m = a.drop_mask;
  if (a.seed.present()) ReadScalarTensor(c, "seed", a.seed);
  if (a.offset.present()) ReadScalarTensor(c, "offset", a.offset);
  if (a.keep_prob >= 1.0) {
    if (m.present()) Fail(c.prim, "the 'drop_mask' must be None when keep_prob is 1.0.");
    return;
  }
  Dropout &d = p->dropout;
  d.keep_prob = a.keep_prob;
  d.inv_keep = static_cast<float>(1.0 / a.keep_prob);
  d.threshold = DropoutThreshold(a.keep_prob);
  if (m.present()) {
    CheckDType(c.prim, "drop_mask", m, {abi::kUint8});
    int64_t bits = 0;  // N1 * sum_b q_b * kv_b
    for (int64_t b = 0; b < p->B; ++b) {
      d.base.push_back(bits);
      d.head.push_back(p->q_len[b] * p->kv_len[b]);
      d.row.push_back(p->kv_len[b]);
      bits += p->N * p->q_len[b] * p->kv_len[b];
    }
    if (c.tnd) {
      const int64_t bytes = (bits + 7) / 8;
      if (m.ndim != 1 || m.dim(0) != bytes) {
        Fail(c.prim, "the 'drop_mask' must be the bit-packed (N1 * sum(q_b * kv_b) / 8,) = (%lld,) in layout TND, "
             "but got %s.", (long long)bytes, m.ShapeString().c_str());
      }
    } else {
      if (c.S2 % 8 != 0) {
        Fail(c.prim, "the 'drop_mask' needs the key length S2 to be a multiple of 8, but got S2=%lld.",
             (long long)c.S2);
      }
      const bool ok = m.ndim == 4 && m.dim(0) == p->B && m.dim(1) == p->N && m.dim(2) == p->Sq &&
                      m.dim(3) == c.S2 / 8;
      if (!ok) {
        Fail(c.prim, "the 'drop_mask' must be the bit-packed (B, N1, S1, S2 / 8) = (%lld, %lld, %lld, %lld), but got "
             "%s.", (long long)p->B, (long long)p->N, (long long)p->Sq, (long long)(c.S2 / 8),
             m.ShapeString().c_str());
      }
    }
    d.bits = static_cast<const uint8_t *>(m.data);
    d.bytes = m.numel();
    return;
  }
  if (!a.seed.present() || !a.offset.present()) {
    Fail(c.prim, "the generated dropout needs the 'seed' and 'offset' inputs.");
  }
  d.stream = DropoutStream(ReadInt(a.seed, 0), ReadInt(a.offset, 0));
  d.rows = c.tnd ? p->Sq : p->B * p->Sq;
  for (int64_t b = 0; b < p->B; ++b) d.row_origin.push_back(c.tnd ? p->q_start[b] : b * p->Sq);
}

// softmax_max / softmax_sum: float32 (B, N1, S1, 8), or (T1, N1, 8) in TND.
inline std::vector<int64_t> StatsShape(const Context &c, const Problem &p) {
  if (c.tnd) return {p.Sq, p.N, kStatsWidth};
  return {p.B, p.N, p.Sq, kStatsWidth};
}
inline RowStrides StatsRows(const Context &c, const Problem &p) {
  if (c.tnd) return {0, kStatsWidth, p.N * kStatsWidth};
  return {p.N * p.Sq * kStatsWidth, p.Sq * kStatsWidth, kStatsWidth};
}

}  // namespace training

// Every input of a FAS / SFA / FAS-grad call, validated, as the core's Problem (outputs not yet set: the caller
// sets them and then runs CheckProblem).
inline Problem BuildTrainingProblem(const TrainingArgs &a) {
  training::Context c{a, a.prim};
  Problem p;
  training::ReadAttributes(c, &p);
  training::ReadQueryKeyValue(c, &p);
  training::ReadWindows(c, &p);
  training::ReadBand(c, &p);
  p.frame.q.assign(p.B, 0);
  p.frame.k.assign(p.B, 0);
  training::ReadMask(c, &p);
  training::ReadPse(c, &p);
  training::ReadDropout(c, &p);
  return p;
}

// A tensor that must have the query's shape and `dtype` (attention_out, dy, attention_in).
inline void CheckQueryShaped(const TrainingArgs &a, const char *name, const Arg &x, DType dtype) {
  CheckDTypeIs(a.prim, name, x, dtype, "query");
  CheckSameShape(a.prim, "query", a.query, name, x);
}

// softmax_max / softmax_sum: float32 of StatsShape; returns the strides of a row's kStatsWidth values.
inline RowStrides CheckSoftmaxStats(const TrainingArgs &a, const Problem &p, const char *name, const Arg &x) {
  training::Context c{a, a.prim, a.layout == abi::kTnd};
  CheckDType(a.prim, name, x, {abi::kFloat32});
  CheckShape(c.prim, name, x, training::StatsShape(c, p));
  return training::StatsRows(c, p);
}

// The forward's outputs: attention_out (the query's shape and dtype), softmax_max / softmax_sum.
inline void ReadForwardOutputs(const TrainingArgs &a, const Arg &out, const Arg &max, const Arg &sum, Problem *p) {
  CheckQueryShaped(a, "attention_out", out, p->q_dtype);
  p->out = out.data;
  p->out_dtype = out.dtype;
  p->out_numel = out.numel();
  p->out_rows = p->q_rows;
  p->stats.rows = CheckSoftmaxStats(a, *p, "softmax_max", max);
  CheckSoftmaxStats(a, *p, "softmax_sum", sum);
  p->stats.max = static_cast<float *>(max.data);
  p->stats.sum = static_cast<float *>(sum.data);
  p->stats.numel = max.numel();
}

// softmax_out: MindSpore's placeholder, (1,) in the query dtype.
inline void CheckSoftmaxOut(const TrainingArgs &a, const Arg &x) {
  training::Context c{a, a.prim};
  CheckDTypeIs(a.prim, "softmax_out", x, a.query.dtype, "query");
  CheckShape(c.prim, "softmax_out", x, {1});
}

// Writes the placeholder's 0 (of a checked softmax_out).
inline void ClearSoftmaxOut(const Arg &x) {
  std::memset(x.data, 0, x.dtype == abi::kFloat32 ? 4 : 2);
}

}  // namespace msa
