// incre_flash_attention on CPU: the adapter from IncreFlashAttention's AOT parameters to
// the attention core (attention/). Decode: one query position per batch and head; dense, paged, left-padded
// and int8 caches, mask, pse_shift and int8 post-quantization are all the core's.
//
// AOT parameters (kernel_abi.h, abi::incre_flash_attention): the 15 inputs in YAML order (an absent optional
// input is a shape-(0,) tensor), the float64 attribute vector, the output. dequant_scale1, quant_scale1 and
// dequant_scale2 are reserved: the Python side rejects them before any kernel runs, and the kernel ignores
// them. A rejected input throws std::runtime_error from Prepare, before any computation.
#include <cstdint>
#include <vector>

#include "attention/attention.h"
#include "attention/validate.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::incre_flash_attention;
namespace in = op::in;
namespace attr = op::attr;
namespace limits = op::limits;
constexpr const char *kPrim = op::kPrimName;

// A documented size limit (ops_yaml limits:), also checked at compile time in Python where the size is known.
void CheckLimit(const char *what, int64_t value, int64_t limit) {
  if (value > limit) {
    Fail(kPrim, "%s must not exceed %lld, but got %lld.", what, (long long)limit, (long long)value);
  }
}

struct Attributes {
  int64_t num_heads = 0, kv_heads = 0, block_size = 0;
  int layout = 0;
  float scale = 1.f;
};

// num_key_value_heads arrives normalised by the Python side (0 already means num_heads).
// Also marks the absent optional inputs, from the vector's presence flags.
Attributes ReadAttributes(Arg *args) {
  const double *v = ReadAttrs(kPrim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  Attributes at;
  at.num_heads = IntAttr(kPrim, v, attr::kNumHeads, "num_heads");
  at.kv_heads = IntAttr(kPrim, v, attr::kNumKeyValueHeads, "num_key_value_heads");
  at.layout = static_cast<int>(IntAttr(kPrim, v, attr::kInputLayout, "input_layout"));
  at.block_size = IntAttr(kPrim, v, attr::kBlockSize, "block_size");
  at.scale = static_cast<float>(v[attr::kScaleValue]);
  if (at.num_heads <= 0 || at.kv_heads <= 0 || at.num_heads % at.kv_heads != 0) {
    Fail(kPrim, "the 'num_heads' must be a positive multiple of 'num_key_value_heads', but got %lld and %lld.",
         (long long)at.num_heads, (long long)at.kv_heads);
  }
  CheckLimit("the 'num_heads'", at.num_heads, limits::kMaxHeads);
  CheckLimit("the ratio 'num_heads' / 'num_key_value_heads'", at.num_heads / at.kv_heads, limits::kMaxGroup);
  if (at.layout != abi::kBsh && at.layout != abi::kBnsd && at.layout != abi::kBsnd) {
    Fail(kPrim, "the 'input_layout' must be BSH, BNSD or BSND, but got %s (enum %d).", LayoutName(at.layout),
         at.layout);
  }
  return at;
}

// query: (B, 1, H) BSH, (B, N, 1, D) BNSD or (B, 1, N, D) BSND, float16 or bfloat16.
void ReadQuery(const Arg &q, const Attributes &at, Problem *p) {
  CheckDType(kPrim, "query", q, {abi::kFloat16, abi::kBfloat16});
  const DenseGeometry g = ReadDense(kPrim, "query", q, at.layout, at.num_heads);
  if (g.S != 1 || g.B <= 0 || g.D <= 0) {
    Fail(kPrim, "the 'query' must hold one position (S = 1) of a non-empty batch and head dim, but got shape %s.",
         q.ShapeString().c_str());
  }
  CheckLimit("the batch size B", g.B, limits::kMaxBatch);
  CheckLimit("the head dim D", g.D, limits::kMaxHeadDim);
  p->B = g.B;
  p->N = at.num_heads;
  p->kvN = at.kv_heads;
  p->G = at.num_heads / at.kv_heads;
  p->D = g.D;
  p->Sq = 1;
  p->scale = at.scale;
  p->q_dtype = q.dtype;
  p->query = q.data;
  p->q_numel = q.numel();
  p->q_rows = g.rows;
  p->q_start.assign(p->B, 0);
  p->q_len.assign(p->B, 1);
}

// key / value: dense in the query's layout, or a paged cache with its block table; the query dtype, or int8
// (dequantized with antiquant_scale / antiquant_offset).
void ReadKeyValue(const Arg &k, const Arg &v, const Arg &block_table, const Attributes &at, Problem *p) {
  CheckDType(kPrim, "key", k, {p->q_dtype, abi::kInt8});
  CheckDTypeIs(kPrim, "value", v, k.dtype, "key");
  CheckSameShape(kPrim, "key", k, "value", v);
  KvCache &kv = p->kv;
  kv.key = k.data;
  kv.value = v.data;
  kv.dtype = k.dtype;
  kv.numel = k.numel();
  if (block_table.present()) {
    if (at.block_size <= 0) {
      Fail(kPrim, "the 'block_size' must be positive with page attention, but got %lld.", (long long)at.block_size);
    }
    kv.paged = true;
    kv.pages = ReadPagedCache(kPrim, "key", k, p->kvN, p->D, at.block_size);
    ReadBlockTable(kPrim, "block_table", block_table, p->B, &kv.pages);
    CheckLimit("the max_blocks_per_seq of 'block_table'", kv.pages.max_blocks, limits::kMaxBlocksPerSeq);
    CheckLimit("the number of elements of the paged 'key'", k.numel(), INT32_MAX);
    kv.stored_len = kv.pages.max_blocks * at.block_size;
  } else {
    const DenseGeometry g = ReadDense(kPrim, "key", k, at.layout, p->kvN);
    if (g.B != p->B || g.D != p->D) {
      Fail(kPrim, "the 'key' must have the batch size %lld and head dim %lld of the 'query', but got shape %s.",
           (long long)p->B, (long long)p->D, k.ShapeString().c_str());
    }
    CheckLimit("the key/value length S", g.S, limits::kMaxKvLength);
    kv.rows = g.rows;
    kv.stored_len = g.S;
  }
}

// actual_seq_lengths (1 or B values in [0, S]; required with page attention) and kv_padding_size (left
// padding; only together with actual_seq_lengths, and not with page attention).
void ReadKvWindows(const Arg &seq, const Arg &pad, Problem *p) {
  const KvCache &kv = p->kv;
  p->kv_start.assign(p->B, 0);
  if (seq.present()) {
    p->kv_len = ReadSeqLengths(kPrim, "actual_seq_lengths", seq, p->B, kv.stored_len);
  } else if (kv.paged) {
    Fail(kPrim, "the 'actual_seq_lengths' is required with page attention.");
  } else {
    p->kv_len.assign(p->B, kv.stored_len);
  }
  if (pad.present() && seq.present()) {
    if (kv.paged) Fail(kPrim, "the 'kv_padding_size' is not supported with page attention.");
    ApplyLeftPadding(kPrim, "kv_padding_size", pad, kv.stored_len, &p->kv_start, &p->kv_len);
  }
}

// attn_mask: bool / int8 / uint8, (B, S), (B, 1, S) or (B, 1, 1, S); one row per batch serves the single
// query position, indexed by stored key position.
void ReadMask(const Arg &m, Problem *p) {
  CheckDType(kPrim, "attn_mask", m, {abi::kBool, abi::kInt8, abi::kUint8});
  if (m.ndim < 2 || m.ndim > 4 || m.dim(0) != p->B || m.numel() != p->B * m.dim(-1)) {
    Fail(kPrim, "the 'attn_mask' must be (B, S), (B, 1, S) or (B, 1, 1, S) with B = %lld, but got %s.",
         (long long)p->B, m.ShapeString().c_str());
  }
  p->mask.data = m.data;
  p->mask.numel = m.numel();
  p->mask.batch = m.dim(-1);
  p->mask.row = 0;
  CheckCoversKeys(kPrim, "attn_mask", m.dim(-1), *p);
}

// pse_shift: (B or 1, N, 1, S) in the query dtype.
void ReadPse(const Arg &a, Problem *p) {
  if (p->D % 16 != 0) Fail(kPrim, "the 'pse_shift' needs the head dim D to be a multiple of 16, but got D=%lld.",
                           (long long)p->D);
  p->bias = ReadScoreBias(kPrim, "pse_shift", a, p->B, p->N, 1, p->q_dtype);
  CheckCoversKeys(kPrim, "pse_shift", a.dim(3), *p);
}

// antiquant_scale / antiquant_offset: required with an int8 key/value, unused otherwise.
void ReadKvAntiquant(const Arg &scale, const Arg &offset, Problem *p) {
  if (p->kv.dtype != abi::kInt8) return;
  if (!scale.present()) Fail(kPrim, "an int8 'key' and 'value' need an 'antiquant_scale'.");
  p->kv.antiquant = ReadAntiquant(kPrim, scale, offset, p->q_dtype, p->kvN, p->D);
}

// The output has the query's shape and layout; the query dtype, or int8 with quant_scale2.
void ReadOutput(const Arg &out, const Arg &query, const Arg &scale2, const Arg &offset2, Problem *p) {
  if (scale2.present()) {
    p->post_quant = ReadPostQuant(kPrim, "quant_scale2", "quant_offset2", scale2, offset2, p->N, p->D, false);
    if (p->kv.paged && scale2.numel() != 1) {
      Fail(kPrim, "per-channel post quantization ('quant_scale2' with N*D elements) is not supported with page "
           "attention.");
    }
  }
  const DType expected = p->post_quant.enabled() ? abi::kInt8 : p->q_dtype;
  if (out.dtype != expected) {
    Fail(kPrim, "the output must be %s, but got %s.", DTypeName(expected), DTypeName(out.dtype));
  }
  CheckSameShape(kPrim, "query", query, "output", out);
  p->out = out.data;
  p->out_dtype = out.dtype;
  p->out_numel = out.numel();
  p->out_rows = p->q_rows;
}

Problem Prepare(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg args[op::kNumParams];
  ReadArgs(kPrim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const Attributes at = ReadAttributes(args);
  Problem p;
  ReadQuery(args[in::kQuery], at, &p);
  ReadKeyValue(args[in::kKey], args[in::kValue], args[in::kBlockTable], at, &p);
  ReadKvWindows(args[in::kActualSeqLengths], args[in::kKvPaddingSize], &p);
  p.frame.q.assign(p.B, 0);  // mask and pse_shift: one row, indexed by stored key position
  p.frame.k = p.kv_start;
  if (args[in::kAttnMask].present()) ReadMask(args[in::kAttnMask], &p);
  if (args[in::kPseShift].present()) ReadPse(args[in::kPseShift], &p);
  ReadKvAntiquant(args[in::kAntiquantScale], args[in::kAntiquantOffset], &p);
  ReadOutput(args[in::kCount + op::out::kAttentionOut], args[in::kQuery], args[in::kQuantScale2],
             args[in::kQuantOffset2], &p);
  CheckProblem(kPrim, p);
  return p;
}

}  // namespace
}  // namespace msa

extern "C" int IncreFlashAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::Problem problem = msa::Prepare(nparam, params, ndims, shapes, dtypes);  // throws on a bad input
  msa::RunAttention(problem);
  return 0;
}

// The output shape is the query's, unknown dims and rank included.
extern "C" std::vector<int64_t> IncreFlashAttentionInferShape(int *ndims, int64_t **shapes,
                                                              mindspore::AotExtra *extra) {
  (void)extra;
  return msa::InputShape(ndims, shapes, msa::abi::incre_flash_attention::in::kQuery);
}
