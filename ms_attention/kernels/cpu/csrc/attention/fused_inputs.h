// Reading and validating the inputs of prompt_flash_attention, fused_infer_attention_score and
// fused_infer_attention_score_v2 into one Problem. The three operators differ only in which inputs they have,
// what they call them and a few rules (PFA's additive float16 mask, v2's sink and rope); each adapter fills a
// FusedArgs from its AOT parameters and calls BuildFusedProblem.
//
// Two branches, as on the NPU: a query of one position (not TND, no rope) takes the incremental (decode) branch,
// where sparse_mode and pre/next tokens are ignored and the decode mask shapes are accepted; everything else is
// a prefill with a computed band per batch (sparse modes 0-4). Every check here repeats, on the real shapes and
// values, what the Python side checks when it knows them, so Graph mode with dynamic shapes or Tensor lengths
// gets the same errors (as RuntimeError).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "attention/output_store.h"
#include "attention/problem.h"
#include "attention/validate.h"
#include "common.h"

namespace msa {

// An optional input the operator does not have (or did not get).
inline Arg AbsentArg() {
  Arg a;
  a.given = false;
  return a;
}

// The argument names an operator uses in its messages.
struct FusedNames {
  const char *mask = "attn_mask", *deq1 = "dequant_scale1", *quant1 = "quant_scale1", *deq2 = "dequant_scale2";
  const char *scale2 = "quant_scale2", *offset2 = "quant_offset2";
  const char *key_scale = "key_antiquant_scale", *key_offset = "key_antiquant_offset";
  const char *value_scale = "value_antiquant_scale", *value_offset = "value_antiquant_offset";
  const char *key_mode = "key_antiquant_mode", *value_mode = "value_antiquant_mode";
  const char *num_heads = "num_heads";
  const char *seq_q = "actual_seq_lengths", *seq_kv = "actual_seq_lengths_kv";
};

struct FusedArgs {
  const char *prim = "";
  FusedNames names;
  bool pfa = false;  // float16 additive mask, (B, 1, 2048, 2048) compressed mask, no BNSD_BSND
  Arg query = AbsentArg(), key = AbsentArg(), value = AbsentArg(), query_rope = AbsentArg(), key_rope = AbsentArg();
  Arg pse = AbsentArg(), mask = AbsentArg(), seq_q = AbsentArg(), seq_kv = AbsentArg(), block_table = AbsentArg();
  Arg q_pad = AbsentArg(), kv_pad = AbsentArg();
  Arg antiquant_scale = AbsentArg(), antiquant_offset = AbsentArg();
  Arg key_scale = AbsentArg(), key_offset = AbsentArg(), value_scale = AbsentArg(), value_offset = AbsentArg();
  Arg deq1 = AbsentArg(), quant1 = AbsentArg(), deq2 = AbsentArg(), scale2 = AbsentArg(), offset2 = AbsentArg();
  Arg sink = AbsentArg(), key_prefix = AbsentArg(), value_prefix = AbsentArg(), prefix_len = AbsentArg();
  Arg out = AbsentArg(), lse = AbsentArg();
  // normalised attributes
  int64_t num_heads = 0, kv_heads = 0, pre_tokens = 0, next_tokens = 0, sparse_mode = 0, block_size = 0;
  int64_t antiquant_mode = 0, key_mode = 0, value_mode = 0;
  int layout = 0;
  float scale = 1.f;
  bool lse_flag = false;
};

// Cumulative lengths (TND): non-decreasing, non-negative, the last equal to the total; returns per-batch
// starts and lengths. Shared by every reader of a TND call (fused and training attention).
inline void ReadCumulative(const char *prim, const char *name, const Arg &a, int64_t total,
                           std::vector<int64_t> *start, std::vector<int64_t> *len) {
  CheckDType(prim, name, a, {abi::kInt32, abi::kInt64});
  if (a.ndim != 1 || a.dim(0) < 1) {
    Fail(prim, "the '%s' must be a 1-D sequence of cumulative lengths in layout TND, but got shape %s.", name,
         a.ShapeString().c_str());
  }
  int64_t prev = 0;
  for (int64_t b = 0; b < a.dim(0); ++b) {
    const int64_t x = ReadInt(a, b);
    if (x < prev) {
      Fail(prim, "the '%s' must be non-decreasing cumulative lengths in layout TND, but got %lld after %lld "
           "(batch %lld).", name, (long long)x, (long long)prev, (long long)b);
    }
    start->push_back(prev);
    len->push_back(x - prev);
    prev = x;
  }
  if (prev != total) {
    Fail(prim, "the last value of '%s' must equal the number of tokens T = %lld in layout TND, but got %lld.", name,
         (long long)total, (long long)prev);
  }
}

namespace fused {

constexpr int64_t kCompressedMask = 2048;  // side of the compressed mask of sparse modes 2-4

// The per-call facts the readers share.
struct Context {
  const FusedArgs &a;
  const char *prim;
  bool tnd = false, decode = false, padded = false;
  int kv_layout = 0;   // the dense key/value layout (BNSD_BSND keys are BNSD)
  int64_t T_kv = 0;    // TND: stored kv tokens
};

inline void Require(const Context &c, bool ok, const char *fmt, const char *name) {
  if (!ok) Fail(c.prim, fmt, name);
}

// Shape (T, heads, D) of a TND tensor.
inline void ReadTnd(const Context &c, const char *name, const Arg &a, int64_t heads, int64_t *T, int64_t *D) {
  if (a.ndim != 3 || a.dim(1) != heads) {
    Fail(c.prim, "the '%s' must be (T, N, D) with N = %lld in layout TND, but got shape %s.", name, (long long)heads,
         a.ShapeString().c_str());
  }
  *T = a.dim(0);
  *D = a.dim(2);
}

inline RowStrides TndStrides(int64_t heads, int64_t D) { return {0, D, heads * D}; }


inline void ReadAttributes(Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  if (a.num_heads <= 0 || a.kv_heads <= 0 || a.num_heads % a.kv_heads != 0) {
    Fail(c.prim, "the '%s' must be a positive multiple of 'num_key_value_heads', but got %lld and %lld.",
         a.names.num_heads, (long long)a.num_heads, (long long)a.kv_heads);
  }
  const int L = a.layout;
  const bool ok = L == abi::kBsh || L == abi::kBnsd || L == abi::kBsnd || L == abi::kTnd ||
                  (!a.pfa && L == abi::kBnsdBsnd);
  if (!ok) Fail(c.prim, "the 'input_layout' %s (enum %d) is not supported.", LayoutName(L), L);
  if (a.sparse_mode < 0 || a.sparse_mode > 4) {
    Fail(c.prim, "the 'sparse_mode' must be in [0, 4], but got %lld.", (long long)a.sparse_mode);
  }
  c.tnd = L == abi::kTnd;
  c.kv_layout = L == abi::kBnsdBsnd ? abi::kBnsd : L;
  p->N = a.num_heads;
  p->kvN = a.kv_heads;
  p->G = a.num_heads / a.kv_heads;
  p->scale = a.scale;
}

// query (and query_rope): float16 / bfloat16, or int8 with full quantization.
inline void ReadQuery(Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const Arg &q = a.query;
  CheckDType(c.prim, "query", q, {abi::kFloat16, abi::kBfloat16, abi::kInt8});
  if (c.tnd) {
    int64_t T = 0;
    ReadTnd(c, "query", q, p->N, &T, &p->D);
    p->Sq = T;
    p->q_rows = TndStrides(p->N, p->D);
  } else {
    const DenseGeometry g = ReadDense(c.prim, "query", q, c.kv_layout, p->N);
    p->B = g.B;
    p->Sq = g.S;
    p->D = g.D;
    p->q_rows = g.rows;
  }
  if (!c.tnd && p->B <= 0) Fail(c.prim, "the 'query' must have a non-empty batch, but got shape %s.",
                                q.ShapeString().c_str());
  if (p->D <= 0) Fail(c.prim, "the head dim D of 'query' must be positive, but got shape %s.", q.ShapeString().c_str());
  p->q_dtype = q.dtype;
  p->query = q.data;
  p->q_numel = q.numel();
  if (a.query_rope.present() != a.key_rope.present()) {
    Fail(c.prim, "the 'query_rope' and 'key_rope' must be given together.");
  }
  if (a.query_rope.present()) {
    const Arg &qr = a.query_rope;
    CheckDTypeIs(c.prim, "query_rope", qr, q.dtype, "query");
    Rope &rope = p->rope;
    bool same_positions = false;
    if (c.tnd) {
      int64_t T = 0;
      ReadTnd(c, "query_rope", qr, p->N, &T, &rope.Dr);
      same_positions = T == p->Sq;
      rope.q_rows = TndStrides(p->N, rope.Dr);
    } else {
      const DenseGeometry g = ReadDense(c.prim, "query_rope", qr, c.kv_layout, p->N);
      same_positions = g.B == p->B && g.S == p->Sq;
      rope.Dr = g.D;
      rope.q_rows = g.rows;
    }
    if (!same_positions || rope.Dr <= 0) {
      Fail(c.prim, "the 'query_rope' %s must have the batch and sequence of 'query' %s and a positive head dim.",
           qr.ShapeString().c_str(), q.ShapeString().c_str());
    }
    rope.query = qr.data;
    rope.q_numel = qr.numel();
  }
  // prompt_flash_attention has no incremental branch: a query of one position is a prefill there
  c.decode = !a.pfa && !c.tnd && p->Sq == 1 && !p->rope.enabled();
  if (c.decode && q.dtype == abi::kInt8) {
    Fail(c.prim, "the 'query' of one position (the incremental branch) must be float16 or bfloat16, but got int8.");
  }
}

// key / value: dense in the query's layout, or a paged cache with its block table.
inline void ReadKeyValue(Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const Arg &k = a.key, &v = a.value;
  const bool int8_query = p->q_dtype == abi::kInt8;
  if (int8_query) {
    CheckDType(c.prim, "key", k, {abi::kInt8});
  } else {
    CheckDType(c.prim, "key", k, {p->q_dtype, abi::kInt8});
  }
  CheckDTypeIs(c.prim, "value", v, k.dtype, "key");
  CheckSameShape(c.prim, "key", k, "value", v);
  KvCache &kv = p->kv;
  kv.key = k.data;
  kv.value = v.data;
  kv.dtype = k.dtype;
  kv.numel = k.numel();
  Rope &rope = p->rope;
  if (rope.enabled()) {
    CheckDTypeIs(c.prim, "key_rope", a.key_rope, p->q_dtype, "query");
    rope.key.key = rope.key.value = a.key_rope.data;
    rope.key.dtype = p->q_dtype;
    rope.key.numel = a.key_rope.numel();
  }
  if (a.block_table.present()) {
    if (a.block_size <= 0) {
      Fail(c.prim, "the 'block_size' must be positive with page attention, but got %lld.", (long long)a.block_size);
    }
    if (k.ndim == 4 && c.kv_layout != abi::kBnsd) {
      Fail(c.prim, "the paged cache layout (num_blocks, N, block_size, D) needs input_layout BNSD or BNSD_BSND, "
           "but got %s.", LayoutName(a.layout));
    }
    kv.paged = true;
    kv.pages = ReadPagedCache(c.prim, "key", k, p->kvN, p->D, a.block_size);
    if (c.tnd) p->B = 0;  // from actual_seq_lengths; the table is checked there
    if (!c.tnd) ReadBlockTable(c.prim, "block_table", a.block_table, p->B, &kv.pages);
    if (k.numel() > INT32_MAX) Fail(c.prim, "the paged 'key' must have at most 2^31 - 1 elements.");
    if (rope.enabled()) {
      rope.key.paged = true;
      rope.key.pages = ReadPagedCache(c.prim, "key_rope", a.key_rope, p->kvN, rope.Dr, a.block_size);
      if (a.key_rope.ndim != k.ndim || a.key_rope.dim(0) != k.dim(0)) {
        Fail(c.prim, "the paged 'key_rope' %s must have the block layout and block count of 'key' %s.",
             a.key_rope.ShapeString().c_str(), k.ShapeString().c_str());
      }
    }
    return;
  }
  if (c.tnd) {
    int64_t D = 0;
    ReadTnd(c, "key", k, p->kvN, &c.T_kv, &D);
    if (D != p->D) {
      Fail(c.prim, "the 'key' must have the head dim %lld of the 'query', but got shape %s.", (long long)p->D,
           k.ShapeString().c_str());
    }
    kv.rows = TndStrides(p->kvN, p->D);
    kv.stored_len = c.T_kv;
    if (rope.enabled()) {
      int64_t T = 0, Dr = 0;
      ReadTnd(c, "key_rope", a.key_rope, p->kvN, &T, &Dr);
      if (T != c.T_kv || Dr != rope.Dr) {
        Fail(c.prim, "the 'key_rope' must be (%lld, %lld, %lld), but got %s.", (long long)c.T_kv, (long long)p->kvN,
             (long long)rope.Dr, a.key_rope.ShapeString().c_str());
      }
      rope.key.rows = TndStrides(p->kvN, rope.Dr);
      rope.key.stored_len = T;
    }
    return;
  }
  const DenseGeometry g = ReadDense(c.prim, "key", k, c.kv_layout, p->kvN);
  if (g.B != p->B || g.D != p->D) {
    Fail(c.prim, "the 'key' must have the batch size %lld and head dim %lld of the 'query', but got shape %s.",
         (long long)p->B, (long long)p->D, k.ShapeString().c_str());
  }
  kv.rows = g.rows;
  kv.stored_len = g.S;
  if (rope.enabled()) {
    const DenseGeometry r = ReadDense(c.prim, "key_rope", a.key_rope, c.kv_layout, p->kvN);
    if (r.B != p->B || r.S != g.S || r.D != rope.Dr) {
      Fail(c.prim, "the 'key_rope' must have the batch and sequence of 'key' and the head dim %lld of "
           "'query_rope', but got shape %s.", (long long)rope.Dr, a.key_rope.ShapeString().c_str());
    }
    rope.key.rows = r.rows;
    rope.key.stored_len = r.S;
  }
}

// actual_seq_lengths / actual_seq_lengths_kv, left padding, the shared prefix.
inline void ReadWindows(Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const FusedNames &nm = a.names;
  KvCache &kv = p->kv;
  if (c.tnd) {
    if (!a.seq_q.present()) Fail(c.prim, "the '%s' is required in layout TND.", nm.seq_q);
    ReadCumulative(c.prim, nm.seq_q, a.seq_q, p->Sq, &p->q_start, &p->q_len);
    p->B = static_cast<int64_t>(p->q_len.size());
    if (!a.seq_kv.present()) Fail(c.prim, "the '%s' is required in layout TND.", nm.seq_kv);
    if (kv.paged) {
      ReadBlockTable(c.prim, "block_table", a.block_table, p->B, &kv.pages);
      kv.stored_len = kv.pages.max_blocks * a.block_size;
      p->kv_len = ReadSeqLengths(c.prim, nm.seq_kv, a.seq_kv, p->B, kv.stored_len);
      p->kv_start.assign(p->B, 0);
    } else {
      ReadCumulative(c.prim, nm.seq_kv, a.seq_kv, c.T_kv, &p->kv_start, &p->kv_len);
      if (static_cast<int64_t>(p->kv_len.size()) != p->B) {
        Fail(c.prim, "the '%s' must hold B = %lld values (as '%s') in layout TND, but got %zu.", nm.seq_kv,
             (long long)p->B, nm.seq_q, p->kv_len.size());
      }
    }
    if (a.q_pad.present() || a.kv_pad.present()) {
      Fail(c.prim, "the 'query_padding_size' and 'kv_padding_size' are not supported in layout TND.");
    }
  } else {
    if (kv.paged) kv.stored_len = kv.pages.max_blocks * a.block_size;
    p->q_start.assign(p->B, 0);
    p->q_len = a.seq_q.present() ? ReadSeqLengths(c.prim, nm.seq_q, a.seq_q, p->B, p->Sq)
                                 : std::vector<int64_t>(p->B, p->Sq);
    if (c.decode) p->q_len.assign(p->B, 1);  // the decode branch always computes its one position
    p->kv_start.assign(p->B, 0);
    if (a.seq_kv.present()) {
      p->kv_len = ReadSeqLengths(c.prim, nm.seq_kv, a.seq_kv, p->B, kv.stored_len);
    } else if (kv.paged) {
      Fail(c.prim, "the '%s' is required with page attention ('block_table' given).", nm.seq_kv);
    } else {
      p->kv_len.assign(p->B, kv.stored_len);
    }
    if (a.q_pad.present() && a.seq_q.present() && !c.decode) {
      ApplyLeftPadding(c.prim, "query_padding_size", a.q_pad, p->Sq, &p->q_start, &p->q_len);
      c.padded = true;
    }
    if (a.kv_pad.present() && a.seq_kv.present()) {
      if (kv.paged) Fail(c.prim, "the 'kv_padding_size' is not supported with page attention.");
      ApplyLeftPadding(c.prim, "kv_padding_size", a.kv_pad, kv.stored_len, &p->kv_start, &p->kv_len);
      c.padded = true;
    }
  }
  if (p->rope.key.paged) {  // key_rope shares the key's block table
    p->rope.key.pages.block_table = kv.pages.block_table;
    p->rope.key.pages.max_blocks = kv.pages.max_blocks;
    p->rope.key.stored_len = kv.stored_len;
  }
  if (a.key_prefix.present() != a.value_prefix.present()) {
    Fail(c.prim, "the 'key_shared_prefix' and 'value_shared_prefix' must be given together.");
  }
  if (!a.key_prefix.present()) return;
  if (kv.paged || c.tnd || (a.kv_pad.present() && a.seq_kv.present()) || p->rope.enabled()) {
    Fail(c.prim, "the shared prefix is not supported with page attention, layout TND, kv left padding or rope.");
  }
  const Arg &kp = a.key_prefix, &vp = a.value_prefix;
  CheckDTypeIs(c.prim, "key_shared_prefix", kp, kv.dtype, "key");
  CheckDTypeIs(c.prim, "value_shared_prefix", vp, kv.dtype, "key");
  CheckSameShape(c.prim, "key_shared_prefix", kp, "value_shared_prefix", vp);
  const DenseGeometry g = ReadDense(c.prim, "key_shared_prefix", kp, c.kv_layout, p->kvN);
  if (g.B != 1 || g.D != p->D) {
    Fail(c.prim, "the 'key_shared_prefix' must have batch 1 and the head dim %lld of 'key', but got shape %s.",
         (long long)p->D, kp.ShapeString().c_str());
  }
  SharedPrefix &prefix = p->prefix;
  prefix.key = kp.data;
  prefix.value = vp.data;
  prefix.numel = kp.numel();
  prefix.rows = g.rows;
  prefix.len = g.S;
  if (a.prefix_len.present()) {
    CheckDType(c.prim, "actual_shared_prefix_len", a.prefix_len, {abi::kInt32, abi::kInt64});
    if (a.prefix_len.numel() != 1) {
      Fail(c.prim, "the 'actual_shared_prefix_len' must hold one value, but got shape %s.",
           a.prefix_len.ShapeString().c_str());
    }
    const int64_t len = ReadInt(a.prefix_len, 0);
    if (len < 0 || len > g.S) {
      Fail(c.prim, "the 'actual_shared_prefix_len' must be in [0, %lld], but got %lld.", (long long)g.S,
           (long long)len);
    }
    prefix.len = len;
  }
}

// The computed band of sparse modes 0-4 (per batch, on window-relative positions, d = keys - q_b).
inline void ReadBand(const Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  if (c.decode) return;
  const int64_t inf = int64_t(1) << 40;
  const int64_t mode = a.sparse_mode;
  if (mode == 1 || (mode == 0 && (!a.mask.present() || c.padded))) return;
  Band &band = p->band;
  for (int64_t b = 0; b < p->B; ++b) {
    const int64_t d = p->prefix.len + p->kv_len[b] - p->q_len[b];
    int64_t lo = -inf, hi = inf;
    if (mode == 0) {
      lo = -a.pre_tokens;
      hi = a.next_tokens;
    } else if (mode == 2) {
      hi = 0;
    } else if (mode == 3) {
      hi = d;
    } else {
      lo = d - a.pre_tokens;
      hi = d + a.next_tokens;
    }
    band.lo.push_back(lo);
    band.hi.push_back(hi);
  }
}

// The longest key sequence (prefix included) and query window.
inline int64_t MaxKeys(const Problem &p) {
  int64_t n = 0;
  for (int64_t b = 0; b < p.B; ++b) n = std::max(n, p.prefix.len + p.kv_len[b]);
  return n;
}
inline int64_t MaxQueries(const Problem &p) {
  int64_t n = 0;
  for (int64_t b = 0; b < p.B; ++b) n = std::max(n, p.q_len[b]);
  return n;
}

// How many mask / pse rows and columns the indexing needs: dense layouts cover the stored lengths (the key
// axis covers prefix + stored kv), TND and paged caches the longest window.
inline void NeededExtent(const Context &c, const Problem &p, int64_t *rows, int64_t *cols) {
  *rows = c.tnd ? MaxQueries(p) : p.Sq;
  *cols = (c.tnd || p.kv.paged) ? MaxKeys(p) : p.prefix.len + p.kv.stored_len;
}

// The decode branch indexes masks and pse by stored key position (the longest window with page attention or a
// shared prefix, where there is no kv left padding).
inline int64_t DecodeKeyExtent(const Problem &p) {
  return p.kv.paged || p.prefix.len > 0 ? MaxKeys(p) : KvExtent(p);
}

// Where window-relative (i, j) sit in the mask / pse: their tensors are in the stored frame of query and key,
// which differs from the window only under left padding. A TND batch's mask / pse is indexed by (i, j).
inline void SetFrame(const Context &c, Problem *p) {
  p->frame.q = c.tnd ? std::vector<int64_t>(p->B, 0) : p->q_start;
  p->frame.k = c.tnd ? std::vector<int64_t>(p->B, 0) : p->kv_start;
}

// The user mask. Decode: one row per batch, (B|1, S), (B|1, 1, S) or (B|1, 1, 1, S); with sparse modes 2-4 a
// compressed mask is also accepted and ignored (decode ignores the sparse mode the mask stands for). Sparse
// modes 2-4: the compressed mask, whose contents do not matter (not read). Modes 0/1: (Sq, S), (1, Sq, S), (B, Sq, S),
// (B, 1, Sq, S) or (1, 1, Sq, S), whose last axes may be larger than needed (the top-left corner is used).
inline void ReadMask(const Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const Arg &m = a.mask;
  const char *name = a.names.mask;
  if (!m.present()) return;
  if (a.pfa) {
    CheckDType(c.prim, name, m, {abi::kBool, abi::kInt8, abi::kUint8, abi::kFloat16});
  } else {
    CheckDType(c.prim, name, m, {abi::kBool, abi::kInt8, abi::kUint8});
  }
  const int64_t B = p->B;
  const bool per_batch = m.ndim > 2 && m.dim(0) == B && B > 1;
  int64_t rows = 0, cols = 0;
  NeededExtent(c, *p, &rows, &cols);
  Mask &mask = p->mask;
  const bool compressed_shape = (m.ndim == 2 || (m.ndim == 3 && m.dim(0) == 1) ||
                                 (m.ndim == 4 && m.dim(1) == 1 && (m.dim(0) == 1 || (a.pfa && m.dim(0) == B)))) &&
                                m.dim(-1) == kCompressedMask && m.dim(-2) == kCompressedMask;
  if (c.decode && a.sparse_mode >= 2 && compressed_shape) return;  // a causal/band network's compressed mask
  if (c.decode) {
    bool ok = m.ndim >= 2 && m.ndim <= 4 && (m.dim(0) == B || m.dim(0) == 1);
    for (int d = 1; ok && d < m.ndim - 1; ++d) ok = m.dim(d) == 1;
    if (!ok) {
      Fail(c.prim, "the '%s' must be (B, S), (B, 1, S) or (B, 1, 1, S) with B = %lld for a query of one position, "
           "but got %s.", name, (long long)B, m.ShapeString().c_str());
    }
    mask.row = 0;
    mask.batch = m.dim(0) == B && B > 1 ? m.dim(-1) : 0;
    cols = DecodeKeyExtent(*p);
  } else if (a.sparse_mode >= 2) {
    if (!compressed_shape) {
      Fail(c.prim, "the '%s' shape is not valid: sparse_mode %lld takes the compressed (2048, 2048), (1, 2048, 2048) "
           "or (1, 1, 2048, 2048) mask, but got %s.", name, (long long)a.sparse_mode, m.ShapeString().c_str());
    }
    return;
  } else {
    const bool ok = m.ndim == 2 || (m.ndim == 3 && (m.dim(0) == 1 || m.dim(0) == B)) ||
                    (m.ndim == 4 && m.dim(1) == 1 && (m.dim(0) == 1 || m.dim(0) == B));
    if (!ok) {
      Fail(c.prim, "the '%s' shape is not valid: it must be (Sq, S), (1, Sq, S), (B, Sq, S), (B, 1, Sq, S) or "
           "(1, 1, Sq, S) with B = %lld, but got %s.", name, (long long)B, m.ShapeString().c_str());
    }
    if (m.dim(-2) < rows) {
      Fail(c.prim, "the '%s' shape is not valid: its query axis (%lld) must cover the %lld query positions.", name,
           (long long)m.dim(-2), (long long)rows);
    }
    mask.row = m.dim(-1);
    mask.batch = per_batch ? m.dim(-2) * m.dim(-1) : 0;
  }
  if (m.dim(-1) < cols) {
    Fail(c.prim, "the '%s' shape is not valid: its last axis (%lld) must cover the %lld key positions.", name,
         (long long)m.dim(-1), (long long)cols);
  }
  mask.data = m.data;
  mask.additive = m.dtype == abi::kFloat16;
  mask.numel = m.numel();
}

// pse_shift (B|1, N, Sq', S') in the query dtype (float16 with an int8 query).
inline void ReadPse(const Context &c, Problem *p) {
  const Arg &a = c.a.pse;
  if (!a.present()) return;
  if (c.tnd) Fail(c.prim, "the 'pse_shift' is not supported in layout TND.");
  const DType dtype = p->q_dtype == abi::kInt8 ? abi::kFloat16 : p->q_dtype;
  CheckDTypeIs(c.prim, "pse_shift", a, dtype, "query");
  int64_t rows = 0, cols = 0;
  NeededExtent(c, *p, &rows, &cols);
  if (c.decode) cols = DecodeKeyExtent(*p);
  if (c.decode && p->D % 16 != 0) {
    Fail(c.prim, "the 'pse_shift' needs the head dim D to be a multiple of 16, but got D=%lld.", (long long)p->D);
  }
  if (a.ndim != 4 || (a.dim(0) != 1 && a.dim(0) != p->B) || a.dim(1) != p->N || a.dim(2) < rows ||
      a.dim(3) < cols) {
    Fail(c.prim, "the 'pse_shift' must be (%lld or 1, %lld, >= %lld, >= %lld), but got %s.", (long long)p->B,
         (long long)p->N, (long long)rows, (long long)cols, a.ShapeString().c_str());
  }
  ScoreBias &bias = p->bias;
  bias.data = a.data;
  bias.dtype = a.dtype;
  bias.numel = a.numel();
  bias.row = a.dim(3);
  bias.head = a.dim(2) * bias.row;
  bias.batch = a.dim(0) == 1 ? 0 : p->N * bias.head;
}

// A per-token scale or offset: float32 (B, S'), or the combined (2, B, S') whose plane `side` (0 key, 1 value)
// is used, covering every kv window (TND and paged: by the token's place in its window).
inline TokenScale ReadTokens(const Context &c, const Problem &p, const char *name, const Arg &scale,
                             const char *offset_name, const Arg &offset, bool combined, int64_t side) {
  TokenScale ts;
  auto check = [&](const char *n, const Arg &x) {
    CheckDType(c.prim, n, x, {abi::kFloat32});
    if (x.ndim != (combined ? 3 : 2) || x.dim(-2) != p.B || (combined && x.dim(0) != 2)) {
      Fail(c.prim, "the per-token '%s' must be %s float32 with B = %lld, but got %s.", n,
           combined ? "(2, B, S)" : "(B, S)", (long long)p.B, x.ShapeString().c_str());
    }
  };
  check(name, scale);
  const int64_t S = scale.dim(-1), plane = p.B * S;
  ts.scale = static_cast<const float *>(scale.data) + side * plane;
  ts.numel = plane;
  ts.batch = S;
  if (offset.present()) {
    check(offset_name, offset);
    CheckSameShape(c.prim, name, scale, offset_name, offset);
    ts.offset = static_cast<const float *>(offset.data) + side * plane;
  }
  const bool stored = !c.tnd && !p.kv.paged;
  ts.origin = stored ? p.kv_start : std::vector<int64_t>(p.B, 0);
  for (int64_t b = 0; b < p.B; ++b) {
    if (ts.origin[b] + p.kv_len[b] > S) {
      Fail(c.prim, "the per-token '%s' has %lld tokens per batch, but batch %lld needs %lld.", name, (long long)S,
           (long long)b, (long long)(ts.origin[b] + p.kv_len[b]));
    }
  }
  return ts;
}

// Per channel (kvN * D values) or per tensor (one value) scale / offset, the query dtype or float32.
inline std::vector<float> ReadChannels(const Context &c, const Problem &p, const char *name, const Arg &x) {
  CheckDType(c.prim, name, x, {p.q_dtype, abi::kFloat32});
  const int64_t width = p.kvN * p.D, n = x.numel();
  if (n != 1 && n != width) {
    Fail(c.prim, "the '%s' must hold 1 (per tensor) or kvN * D = %lld (per channel) values, but got shape %s.", name,
         (long long)width, x.ShapeString().c_str());
  }
  std::vector<float> v(width);
  for (int64_t i = 0; i < width; ++i) v[i] = ReadFloat(x, n == 1 ? 0 : i);
  return v;
}

inline void ReadAntiquant(const Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const FusedNames &nm = a.names;
  const bool combined = a.antiquant_scale.present() || a.antiquant_offset.present();
  const bool separate = a.key_scale.present() || a.key_offset.present() || a.value_scale.present() ||
                        a.value_offset.present();
  if (p->kv.dtype != abi::kInt8 || p->q_dtype == abi::kInt8) {
    if (combined || separate) {
      Fail(c.prim, "the antiquant scales and offsets are only for an int8 'key' and 'value' with a float16 or "
           "bfloat16 'query'.");
    }
    return;
  }
  if (combined && separate) {
    Fail(c.prim, "the 'antiquant_scale' / 'antiquant_offset' and the separate key / value antiquant inputs cannot be "
         "given together.");
  }
  if (!combined && !separate) Fail(c.prim, "an int8 'key' and 'value' need an antiquant scale.");
  Antiquant &aq = p->kv.antiquant;
  const int64_t width = p->kvN * p->D;
  const std::vector<float> ones(width, 1.f), zeros(width, 0.f);
  aq.key_scale = aq.value_scale = ones;
  aq.key_offset = aq.value_offset = zeros;
  const bool has_prefix = p->prefix.len > 0 || c.a.key_prefix.present();
  if (combined) {
    if (!a.antiquant_scale.present()) Fail(c.prim, "the 'antiquant_offset' needs an 'antiquant_scale'.");
    if (a.antiquant_mode == 0) {
      aq = ::msa::ReadAntiquant(c.prim, a.antiquant_scale, a.antiquant_offset, p->q_dtype, p->kvN, p->D);
    } else if (a.antiquant_mode == 1) {
      if (has_prefix) Fail(c.prim, "per-token antiquant is not supported with a shared prefix.");
      p->kv.key_tokens = ReadTokens(c, *p, "antiquant_scale", a.antiquant_scale, "antiquant_offset",
                                    a.antiquant_offset, true, 0);
      p->kv.value_tokens = ReadTokens(c, *p, "antiquant_scale", a.antiquant_scale, "antiquant_offset",
                                      a.antiquant_offset, true, 1);
    } else {
      Fail(c.prim, "the 'antiquant_mode' must be 0 or 1, but got %lld.", (long long)a.antiquant_mode);
    }
    return;
  }
  if (!a.key_scale.present() || !a.value_scale.present()) {
    Fail(c.prim, "the '%s' and '%s' must be given together.", nm.key_scale, nm.value_scale);
  }
  struct Side {
    const char *scale_name, *offset_name, *mode_name;
    const Arg &scale, &offset;
    int64_t mode;
    std::vector<float> *channel_scale, *channel_offset;
    TokenScale *tokens;
  };
  const Side sides[2] = {
      {nm.key_scale, nm.key_offset, nm.key_mode, a.key_scale, a.key_offset, a.key_mode, &aq.key_scale, &aq.key_offset,
       &p->kv.key_tokens},
      {nm.value_scale, nm.value_offset, nm.value_mode, a.value_scale, a.value_offset, a.value_mode, &aq.value_scale,
       &aq.value_offset, &p->kv.value_tokens}};
  for (const Side &s : sides) {
    if (s.mode == 0) {
      *s.channel_scale = ReadChannels(c, *p, s.scale_name, s.scale);
      if (s.offset.present()) {
        *s.channel_offset = ReadChannels(c, *p, s.offset_name, s.offset);
        if (s.offset.numel() != s.scale.numel()) {
          Fail(c.prim, "the '%s' %s must have the shape of '%s' %s.", s.offset_name, s.offset.ShapeString().c_str(),
               s.scale_name, s.scale.ShapeString().c_str());
        }
      }
    } else if (s.mode == 1) {
      if (has_prefix) Fail(c.prim, "per-token antiquant is not supported with a shared prefix.");
      *s.tokens = ReadTokens(c, *p, s.scale_name, s.scale, s.offset_name, s.offset, false, 0);
    } else {
      Fail(c.prim, "the '%s' must be 0 or 1, but got %lld.", s.mode_name, (long long)s.mode);
    }
  }
}

// deq_scale1 / quant_scale1 / deq_scale2 of full quantization: one float32 value, or a uint64 holding its bits.
inline float ReadQuantParameter(const Context &c, const char *name, const Arg &x) {
  CheckDType(c.prim, name, x, {abi::kFloat32, abi::kUint64});
  if (x.numel() != 1) Fail(c.prim, "the '%s' must hold one value, but got shape %s.", name, x.ShapeString().c_str());
  if (x.dtype == abi::kFloat32) return static_cast<const float *>(x.data)[0];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint64_t *>(x.data)[0] & 0xffffffffu);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline void ReadQuant(const Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const FusedNames &nm = a.names;
  const bool any = a.deq1.present() || a.quant1.present() || a.deq2.present();
  if (p->q_dtype == abi::kInt8) {
    if (!a.deq1.present() || !a.quant1.present() || !a.deq2.present()) {
      Fail(c.prim, "an int8 'query' needs '%s', '%s' and '%s'.", nm.deq1, nm.quant1, nm.deq2);
    }
    if (p->rope.enabled() || !p->sink.empty()) Fail(c.prim, "full quantization is not supported with rope or sink.");
    FullQuant &fq = p->full_quant;
    fq.enabled = true;
    fq.deq1 = ReadQuantParameter(c, nm.deq1, a.deq1);
    fq.quant1 = ReadQuantParameter(c, nm.quant1, a.quant1);
    fq.deq2 = ReadQuantParameter(c, nm.deq2, a.deq2);
  } else if (any) {
    Fail(c.prim, "the '%s', '%s' and '%s' are only for an int8 'query' (full quantization).", nm.deq1, nm.quant1,
         nm.deq2);
  }
  if (a.scale2.present()) {
    p->post_quant = ReadPostQuant(c.prim, nm.scale2, nm.offset2, a.scale2, a.offset2, p->N, p->D,
                                  p->q_dtype == abi::kBfloat16);
    if (c.decode && p->kv.paged && p->post_quant.per_channel) {
      Fail(c.prim, "per-channel post quantization ('%s' with N*D elements) is not supported with page attention.",
           nm.scale2);
    }
  } else if (a.offset2.present()) {
    Fail(c.prim, "the '%s' needs a '%s'.", nm.offset2, nm.scale2);
  }
}

inline void ReadSink(const Context &c, Problem *p) {
  const Arg &s = c.a.sink;
  if (!s.present()) return;
  CheckDType(c.prim, "learnable_sink", s, {abi::kFloat32, abi::kFloat16, abi::kBfloat16});
  if (s.numel() != p->N) {
    Fail(c.prim, "the 'learnable_sink' must hold one value per query head (%lld), but got shape %s.",
         (long long)p->N, s.ShapeString().c_str());
  }
  for (int64_t h = 0; h < p->N; ++h) p->sink.push_back(ReadFloat(s, h));
}

// The size limits the Python checks apply where the shapes are known (incre_flash_attention's documented
// limits, shared by the family) and PFA's alignment rules: with dynamic shapes only the kernel sees the sizes.
inline void CheckLimits(const Context &c, const Problem &p) {
  namespace limits = abi::incre_flash_attention::limits;
  if (p.D > limits::kMaxHeadDim) {
    Fail(c.prim, "D <= %lld is supported, but got D=%lld.", (long long)limits::kMaxHeadDim, (long long)p.D);
  }
  if (c.decode && p.B > limits::kMaxBatch) {
    Fail(c.prim, "B <= %lld is supported for a query of one position, but got B=%lld.", (long long)limits::kMaxBatch,
         (long long)p.B);
  }
  if (p.kv.paged && p.kv.pages.max_blocks > limits::kMaxBlocksPerSeq) {
    Fail(c.prim, "the max_blocks_per_seq of 'block_table' must not exceed %lld, but got %lld.",
         (long long)limits::kMaxBlocksPerSeq, (long long)p.kv.pages.max_blocks);
  }
  if (!c.a.pfa) return;
  if (p.q_dtype == abi::kBfloat16 && p.D % 16 != 0) {
    Fail(c.prim, "a bfloat16 'query' needs the head dim D aligned to 16, but got D=%lld.", (long long)p.D);
  }
  if (p.post_quant.per_channel && p.D % 32 != 0) {
    Fail(c.prim, "per-channel '%s' needs the head dim D 32-byte aligned, but got D=%lld.", c.a.names.scale2,
         (long long)p.D);
  }
}

// attention_out (and softmax_lse when the operator has one).
inline void ReadOutputs(const Context &c, Problem *p) {
  const FusedArgs &a = c.a;
  const Arg &q = a.query, &out = a.out;
  const DType plain = p->q_dtype == abi::kInt8 ? abi::kFloat16 : p->q_dtype;
  const DType expected = p->post_quant.enabled() ? abi::kInt8 : plain;
  if (out.dtype != expected) {
    Fail(c.prim, "the output must be %s, but got %s.", DTypeName(expected), DTypeName(out.dtype));
  }
  std::vector<int64_t> shape(q.shape, q.shape + q.ndim);
  if (a.layout == abi::kBnsdBsnd) shape = {q.dim(0), q.dim(2), q.dim(1), q.dim(3)};
  CheckShape(c.prim, "attention_out", out, shape);
  p->out = out.data;
  p->out_dtype = out.dtype;
  p->out_numel = out.numel();
  p->out_rows = a.layout == abi::kBnsdBsnd ? DenseStrides(abi::kBsnd, p->N, p->Sq, p->D) : p->q_rows;
  if (!a.lse.present()) return;  // PFA
  CheckDType(c.prim, "softmax_lse", a.lse, {abi::kFloat32});
  if (!a.lse_flag) {
    CheckShape(c.prim, "softmax_lse", a.lse, {1});
    return;
  }
  if (c.tnd) {
    CheckShape(c.prim, "softmax_lse", a.lse, {p->Sq, p->N, 1});
    p->lse_rows = {0, 1, p->N};
  } else {
    CheckShape(c.prim, "softmax_lse", a.lse, {p->B, p->N, p->Sq, 1});
    p->lse_rows = {p->N * p->Sq, p->Sq, 1};
  }
  p->lse = static_cast<float *>(a.lse.data);
  p->lse_numel = a.lse.numel();
}

}  // namespace fused

// Every input of a PFA / FIA / v2 call, validated, as the core's Problem.
inline Problem BuildFusedProblem(const FusedArgs &a) {
  fused::Context c{a, a.prim};
  Problem p;
  fused::ReadAttributes(c, &p);
  fused::ReadQuery(c, &p);
  fused::ReadKeyValue(c, &p);
  fused::ReadWindows(c, &p);
  fused::ReadSink(c, &p);
  fused::ReadBand(c, &p);
  fused::SetFrame(c, &p);
  fused::ReadMask(c, &p);
  fused::ReadPse(c, &p);
  fused::ReadAntiquant(c, &p);
  fused::ReadQuant(c, &p);
  fused::CheckLimits(c, p);
  fused::ReadOutputs(c, &p);
  CheckProblem(a.prim, p);
  return p;
}

// Runs a built problem: rows outside the windows are zero (lse +inf), a softmax_lse the op does not return is 0.
inline void RunFused(const FusedArgs &a, const Problem &p) {
  if (a.lse.present() && !a.lse_flag) static_cast<float *>(a.lse.data)[0] = 0.f;
  if (a.layout != abi::kTnd) ClearRowsOutsideWindows(p);
  RunAttention(p);
}

}  // namespace msa
