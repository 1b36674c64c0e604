// sparse_flash_attention on CPU: reads SparseFlashAttention's AOT parameters, validates every shape and every value
// the compute relies on (lengths, block table entries, sparse_indices), then runs the selected-block attention
// (attention/sparse_attention.h) on the attention core's tiles.
//
// AOT parameters (kernel_abi.h, abi::sparse_flash_attention): query, key, value, sparse_indices, block_table,
// actual_seq_lengths_query, actual_seq_lengths_kv, query_rope, key_rope (absent: shape (0,)), the float64 attribute
// vector, then attention_out, softmax_max, softmax_sum.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "attention/sparse_attention.h"
#include "attention/validate.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::sparse_flash_attention;
namespace in = op::in;
namespace attr = op::attr;
namespace out = op::out;
constexpr const char *kPrim = op::kPrimName;
constexpr int64_t kHeadDim = 512, kRopeDim = 64;

void CheckRank(const char *name, const Arg &a, int ndim) {
  if (a.ndim != ndim) Fail(kPrim, "the '%s' must be %d-D, but got shape %s.", name, ndim, a.ShapeString().c_str());
}

// The per-batch lengths of a lengths input: per batch (size 1 or B) in [0, upper], or cumulative (size B, non-
// decreasing, the last equal to `total`), giving lengths and starts.
void ReadLengths(const char *name, const Arg &a, int64_t B, bool cumulative, int64_t upper, int64_t total,
                 std::vector<int64_t> *len, std::vector<int64_t> *start) {
  len->assign(B, upper);
  start->assign(B, 0);
  if (!a.present()) return;
  CheckDType(kPrim, name, a, {abi::kInt32, abi::kInt64});
  if (a.ndim != 1) Fail(kPrim, "the '%s' must be 1-D, but got shape %s.", name, a.ShapeString().c_str());
  const int64_t size = a.shape[0];
  if (cumulative) {
    if (size != B) Fail(kPrim, "the cumulative '%s' must hold %lld lengths, but got %lld.", name, (long long)B,
                        (long long)size);
    int64_t previous = 0;
    for (int64_t i = 0; i < B; ++i) {
      const int64_t v = ReadInt(a, i);
      if (v < previous) {
        Fail(kPrim, "the '%s' must be cumulative (non-decreasing, non-negative), but got %lld after %lld.", name,
             (long long)v, (long long)previous);
      }
      (*start)[i] = previous;
      (*len)[i] = v - previous;
      previous = v;
    }
    if (previous != total) {
      Fail(kPrim, "the last of the cumulative '%s' must equal %lld, but got %lld.", name, (long long)total,
           (long long)previous);
    }
    return;
  }
  if (size != 1 && size != B) {
    Fail(kPrim, "the size of '%s' must be 1 or B (%lld), but got %lld.", name, (long long)B, (long long)size);
  }
  for (int64_t i = 0; i < B; ++i) {
    const int64_t v = ReadInt(a, size == 1 ? 0 : i);
    if (v < 0 || v > upper) {
      Fail(kPrim, "each '%s' must be in [0, %lld], but got %lld (batch %lld).", name, (long long)upper, (long long)v,
           (long long)i);
    }
    (*len)[i] = v;
  }
}

// Every index a computed row reads (until its first -1) must be >= 0 with its block starting below `capacity`.
void CheckIndices(const SparseProblem &p, int64_t capacity) {
  for (int64_t row = 0; row < p.Rows(); ++row) {
    int64_t b = 0, s = 0;
    if (!detail::SparseRowBatch(p, row, &b, &s)) continue;
    for (int64_t h2 = 0; h2 < p.N2; ++h2) {
      const int32_t *sel = p.indices + (row * p.N2 + h2) * p.K;
      for (int64_t i = 0; i < p.K && sel[i] != -1; ++i) {
        if (sel[i] < 0 || static_cast<int64_t>(sel[i]) * p.sparse_block_size >= capacity) {
          Fail(kPrim, "the 'sparse_indices' value %d (query row %lld, batch %lld, position %lld) is out of range: "
               "it must be -1 (end of the selection) or in [0, %lld) (ceil(%lld / sparse_block_size %lld)).", sel[i],
               (long long)row, (long long)b, (long long)i, (long long)((capacity + p.sparse_block_size - 1) /
               p.sparse_block_size), (long long)capacity, (long long)p.sparse_block_size);
        }
      }
    }
  }
}

void CheckOutput(const char *name, const Arg &a, DType dtype, const std::vector<int64_t> &shape) {
  bool ok = a.dtype == dtype && a.ndim == static_cast<int>(shape.size());
  for (int d = 0; ok && d < a.ndim; ++d) ok = a.shape[d] == shape[d];
  if (!ok) Fail(kPrim, "the output '%s' has dtype %s and shape %s, not what its inputs give.", name,
                DTypeName(a.dtype), a.ShapeString().c_str());
}

SparseProblem ReadProblem(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg args[op::kNumParams];
  ReadArgs(kPrim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(kPrim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  SparseProblem p;
  p.scale = static_cast<float>(v[attr::kScaleValue]);
  p.sparse_block_size = IntAttr(kPrim, v, attr::kSparseBlockSize, "sparse_block_size");
  const int64_t layout_q = IntAttr(kPrim, v, attr::kLayoutQuery, "layout_query");
  const int64_t layout_kv = IntAttr(kPrim, v, attr::kLayoutKv, "layout_kv");
  const int64_t sparse_mode = IntAttr(kPrim, v, attr::kSparseMode, "sparse_mode");
  const bool lse = IntAttr(kPrim, v, attr::kReturnSoftmaxLse, "return_softmax_lse") != 0;
  if (p.sparse_block_size < 1 || p.sparse_block_size > 128) {
    Fail(kPrim, "the 'sparse_block_size' must be in [1, 128], but got %lld.", (long long)p.sparse_block_size);
  }
  if (layout_q != abi::kBsnd && layout_q != abi::kTnd) Fail(kPrim, "the 'layout_query' is not BSND or TND.");
  if (layout_kv != abi::kBsnd && layout_kv != abi::kTnd && layout_kv != abi::kPaBsnd) {
    Fail(kPrim, "the 'layout_kv' is not BSND, TND or PA_BSND.");
  }
  if (layout_kv != abi::kPaBsnd && layout_kv != layout_q) Fail(kPrim, "the 'layout_kv' must equal 'layout_query'.");
  if (sparse_mode != 0 && sparse_mode != 3) Fail(kPrim, "the 'sparse_mode' must be 0 or 3.");
  p.causal = sparse_mode == 3;
  p.q_tnd = layout_q == abi::kTnd;

  const Arg &query = args[in::kQuery], &key = args[in::kKey], &value = args[in::kValue];
  const Arg &indices = args[in::kSparseIndices], &table = args[in::kBlockTable];
  const Arg &q_rope = args[in::kQueryRope], &k_rope = args[in::kKeyRope];
  CheckDType(kPrim, "query", query, {abi::kFloat16, abi::kBfloat16});
  p.bf16 = query.dtype == abi::kBfloat16;
  CheckDTypeIs(kPrim, "key", key, query.dtype, "query");
  CheckDTypeIs(kPrim, "value", value, query.dtype, "query");
  CheckDType(kPrim, "sparse_indices", indices, {abi::kInt32});
  CheckRank("query", query, p.q_tnd ? 3 : 4);
  p.N1 = query.dim(-2);
  p.D = query.dim(-1);
  if (p.D != kHeadDim) Fail(kPrim, "the head dim of 'query' must be 512, but got %lld.", (long long)p.D);
  if (p.N1 < 1 || p.N1 > 128 || (p.N1 & (p.N1 - 1)) != 0) {
    Fail(kPrim, "the number of query heads must be a power of 2 in [1, 128], but got %lld.", (long long)p.N1);
  }
  const int kv_rank = layout_kv == abi::kTnd ? 3 : 4;
  CheckRank("key", key, kv_rank);
  CheckSameShape(kPrim, "key", key, "value", value);
  p.N2 = key.dim(-2);
  if (p.N2 != 1 || key.dim(-1) != kHeadDim) {
    Fail(kPrim, "the 'key' must have 1 head of dim 512, but got shape %s.", key.ShapeString().c_str());
  }
  p.G = p.N1 / p.N2;
  if (q_rope.present() != k_rope.present()) Fail(kPrim, "the 'query_rope' and 'key_rope' must be given together.");
  if (q_rope.present()) {
    p.Dr = kRopeDim;
    CheckDTypeIs(kPrim, "query_rope", q_rope, query.dtype, "query");
    CheckDTypeIs(kPrim, "key_rope", k_rope, query.dtype, "query");
    auto check_rope = [](const char *name, const Arg &rope, const Arg &base) {
      bool ok = rope.ndim == base.ndim && rope.dim(-1) == kRopeDim;
      for (int d = 0; ok && d + 1 < base.ndim; ++d) ok = rope.shape[d] == base.shape[d];
      if (!ok) Fail(kPrim, "the shape of '%s' %s must be the shape of its tensor %s with a last axis of 64.", name,
                    rope.ShapeString().c_str(), base.ShapeString().c_str());
    };
    check_rope("query_rope", q_rope, query);
    check_rope("key_rope", k_rope, key);
  }

  // batch and query rows
  if (p.q_tnd) {
    if (!args[in::kActualSeqLengthsQuery].present()) Fail(kPrim, "the 'actual_seq_lengths_query' is required for TND.");
    p.B = args[in::kActualSeqLengthsQuery].numel();
    p.T1 = query.shape[0];
  } else {
    p.B = query.shape[0];
    p.S1 = query.shape[1];
  }
  ReadLengths("actual_seq_lengths_query", args[in::kActualSeqLengthsQuery], p.B, p.q_tnd, p.q_tnd ? 0 : p.S1, p.T1,
              &p.q_len, &p.q_start);

  // key/value rows
  int64_t capacity = 0;  // the longest kv length a batch can have (the range of sparse_indices)
  const Arg &kv_lengths = args[in::kActualSeqLengthsKv];
  if (layout_kv == abi::kPaBsnd) {
    p.kv_kind = 2;
    if (!table.present() || !kv_lengths.present()) {
      Fail(kPrim, "the 'block_table' and 'actual_seq_lengths_kv' are required with layout_kv PA_BSND.");
    }
    CheckDType(kPrim, "block_table", table, {abi::kInt32});
    p.block_size = key.shape[1];
    if (p.block_size <= 0 || p.block_size % 16 != 0 || p.block_size > 1024 || p.block_size % p.sparse_block_size) {
      Fail(kPrim, "the block_size of the paged 'key' must be a multiple of 16 in [16, 1024] divisible by "
           "sparse_block_size %lld, but got %lld.", (long long)p.sparse_block_size, (long long)p.block_size);
    }
    if (table.ndim != 2 || table.shape[0] != p.B || table.shape[1] <= 0) {
      Fail(kPrim, "the 'block_table' must have shape (B=%lld, max_blocks_per_seq), but got %s.", (long long)p.B,
           table.ShapeString().c_str());
    }
    p.max_blocks = table.shape[1];
    p.block_table = static_cast<const int32_t *>(table.data);
    capacity = p.max_blocks * p.block_size;
    ReadLengths("actual_seq_lengths_kv", kv_lengths, p.B, false, capacity, 0, &p.kv_len, &p.kv_start);
    const int64_t num_blocks = key.shape[0];
    for (int64_t b = 0; b < p.B; ++b) {
      for (int64_t i = 0; i < (p.kv_len[b] + p.block_size - 1) / p.block_size; ++i) {
        const int32_t entry = p.block_table[b * p.max_blocks + i];
        if (entry < 0 || entry >= num_blocks) {
          Fail(kPrim, "the 'block_table' entry %d of batch %lld (slot %lld) is out of range [0, %lld).", entry,
               (long long)b, (long long)i, (long long)num_blocks);
        }
      }
    }
  } else {
    if (table.present()) Fail(kPrim, "the 'block_table' is only used with layout_kv PA_BSND.");
    if (layout_kv == abi::kTnd) {
      p.kv_kind = 1;
      if (!kv_lengths.present()) Fail(kPrim, "the 'actual_seq_lengths_kv' is required for TND.");
      ReadLengths("actual_seq_lengths_kv", kv_lengths, p.B, true, 0, key.shape[0], &p.kv_len, &p.kv_start);
      capacity = p.kv_len.empty() ? 0 : *std::max_element(p.kv_len.begin(), p.kv_len.end());
    } else {
      p.kv_kind = 0;
      if (key.shape[0] != p.B) Fail(kPrim, "the batch of 'key' %s must equal the batch of 'query' (%lld).",
                                    key.ShapeString().c_str(), (long long)p.B);
      p.S2 = key.shape[1];
      capacity = p.S2;
      ReadLengths("actual_seq_lengths_kv", kv_lengths, p.B, false, p.S2, 0, &p.kv_len, &p.kv_start);
    }
  }

  // sparse_indices: (B, S1, N2, K) or (T1, N2, K)
  CheckRank("sparse_indices", indices, p.q_tnd ? 3 : 4);
  const bool lead_ok = p.q_tnd ? indices.shape[0] == p.T1 && indices.shape[1] == p.N2
                               : indices.shape[0] == p.B && indices.shape[1] == p.S1 && indices.shape[2] == p.N2;
  if (!lead_ok) Fail(kPrim, "the shape of 'sparse_indices' %s does not match the query %s.",
                     indices.ShapeString().c_str(), query.ShapeString().c_str());
  p.K = indices.dim(-1);
  p.indices = static_cast<const int32_t *>(indices.data);
  p.query = query.data;
  p.key = key.data;
  p.value = value.data;
  p.query_rope = q_rope.present() ? q_rope.data : nullptr;
  p.key_rope = k_rope.present() ? k_rope.data : nullptr;
  CheckIndices(p, capacity);

  // outputs
  const Arg &o = args[in::kCount + out::kAttentionOut];
  CheckOutput("attention_out", o, query.dtype, std::vector<int64_t>(query.shape, query.shape + query.ndim));
  const std::vector<int64_t> stats = lse ? (p.q_tnd ? std::vector<int64_t>{p.N2, p.T1, p.G}
                                                    : std::vector<int64_t>{p.B, p.N2, p.S1, p.G})
                                         : std::vector<int64_t>{1};
  const Arg &smax = args[in::kCount + out::kSoftmaxMax], &ssum = args[in::kCount + out::kSoftmaxSum];
  CheckOutput("softmax_max", smax, abi::kFloat32, stats);
  CheckOutput("softmax_sum", ssum, abi::kFloat32, stats);
  p.out = o.data;
  if (lse) {
    p.softmax_max = static_cast<float *>(smax.data);
    p.softmax_sum = static_cast<float *>(ssum.data);
  } else {
    static_cast<float *>(smax.data)[0] = 0.f;
    static_cast<float *>(ssum.data)[0] = 0.f;
  }
  return p;
}

}  // namespace
}  // namespace msa

extern "C" int SparseFlashAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::SparseProblem problem = msa::ReadProblem(nparam, params, ndims, shapes, dtypes);  // throws on bad input
  msa::RunSparse(problem);
  return 0;
}

// attention_out: the query's shape; softmax_max / softmax_sum: (B, N2, S1, N1 / N2) for a BSND query, (N2, T1,
// N1 / N2) for TND, (1,) when return_softmax_lse is False. Unknown dims and rank pass through. At run time every
// shape is known: a malformed query or key (wrong rank, no KV head) still gives concrete (empty) statistics, so
// MindSpore can allocate them and the kernel reports what is wrong, instead of an opaque resize failure.
extern "C" std::vector<std::vector<int64_t>> SparseFlashAttentionInferShape(int *ndims, int64_t **shapes,
                                                                            mindspore::AotExtra *extra) {
  namespace op = msa::abi::sparse_flash_attention;
  const std::vector<int64_t> query = msa::InputShape(ndims, shapes, op::in::kQuery);
  const std::vector<int64_t> key = msa::InputShape(ndims, shapes, op::in::kKey);
  std::vector<int64_t> attrs;
  if (!msa::IntAttributes(extra, op::attr::kCount, &attrs)) {
    return {{msa::kUnknownRank}, {msa::kUnknownRank}, {msa::kUnknownRank}};
  }
  if (attrs[op::attr::kReturnSoftmaxLse] == 0) return {query, {1}, {1}};
  const bool tnd = attrs[op::attr::kLayoutQuery] == msa::abi::kTnd;
  const bool q_rank = msa::RankKnown(query);
  const bool q_ok = q_rank && query.size() == (tnd ? 3u : 4u);
  // a query dim: unknown (-1) when the rank is, 0 when the rank is wrong
  auto q_dim = [&](size_t i) -> int64_t { return q_ok ? query[i] : (q_rank ? 0 : -1); };
  const int64_t n1 = q_ok ? query[query.size() - 2] : q_dim(0);
  const int64_t n2 = !msa::RankKnown(key) ? -1 : (key.size() >= 2 ? key[key.size() - 2] : 0);
  const int64_t g = n1 < 0 || n2 < 0 ? -1 : (n2 == 0 ? 0 : n1 / n2);
  if (tnd) return {query, {n2, q_dim(0), g}, {n2, q_dim(0), g}};
  return {query, {q_dim(0), n2, q_dim(1), g}, {q_dim(0), n2, q_dim(1), g}};
}
