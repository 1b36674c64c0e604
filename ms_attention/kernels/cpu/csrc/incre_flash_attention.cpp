// incre_flash_attention on CPU: the adapter from IncreFlashAttention's AOT parameters to the shared reading of
// the attention family (attention/fused_inputs.h, whose decode branch is this operator) and the attention core.
// Decode: one query position per batch and head; dense, paged, left-padded and int8 caches, mask, pse_shift and
// int8 post-quantization.
//
// AOT parameters (kernel_abi.h, abi::incre_flash_attention): the 15 inputs in YAML order (an absent optional
// input is a shape-(0,) tensor), the float64 attribute vector, the output. dequant_scale1, quant_scale1 and
// dequant_scale2 are reserved: the Python side rejects them before any kernel runs, and the kernel ignores
// them. A rejected input throws std::runtime_error before any computation.
#include <cstdint>
#include <vector>

#include "attention/fused_inputs.h"
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

// The attributes (num_key_value_heads arrives normalised: 0 already means num_heads) and the inputs by role;
// also marks the absent optional inputs, from the vector's presence flags. Its actual_seq_lengths are the kv
// lengths.
FusedArgs ReadParameters(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  FusedArgs a;
  a.prim = kPrim;
  a.names.seq_kv = "actual_seq_lengths";
  Arg args[op::kNumParams];
  ReadArgs(kPrim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(kPrim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  a.num_heads = IntAttr(kPrim, v, attr::kNumHeads, "num_heads");
  a.kv_heads = IntAttr(kPrim, v, attr::kNumKeyValueHeads, "num_key_value_heads");
  a.layout = static_cast<int>(IntAttr(kPrim, v, attr::kInputLayout, "input_layout"));
  a.block_size = IntAttr(kPrim, v, attr::kBlockSize, "block_size");
  a.scale = static_cast<float>(v[attr::kScaleValue]);
  a.query = args[in::kQuery];
  a.key = args[in::kKey];
  a.value = args[in::kValue];
  a.mask = args[in::kAttnMask];
  a.seq_kv = args[in::kActualSeqLengths];
  a.pse = args[in::kPseShift];
  a.scale2 = args[in::kQuantScale2];
  a.offset2 = args[in::kQuantOffset2];
  a.antiquant_scale = args[in::kAntiquantScale];
  a.antiquant_offset = args[in::kAntiquantOffset];
  a.block_table = args[in::kBlockTable];
  a.kv_pad = args[in::kKvPaddingSize];
  a.out = args[in::kCount + op::out::kAttentionOut];
  return a;
}

// What only IFA requires: its layouts, a query of one position, float16 / bfloat16, the documented limits.
void CheckDecodeCall(const FusedArgs &a) {
  if (a.num_heads > 0 && a.kv_heads > 0 && a.num_heads % a.kv_heads == 0) {
    CheckLimit("the 'num_heads'", a.num_heads, limits::kMaxHeads);
    CheckLimit("the ratio 'num_heads' / 'num_key_value_heads'", a.num_heads / a.kv_heads, limits::kMaxGroup);
  }
  if (a.layout != abi::kBsh && a.layout != abi::kBnsd && a.layout != abi::kBsnd) {
    Fail(kPrim, "the 'input_layout' must be BSH, BNSD or BSND, but got %s (enum %d).", LayoutName(a.layout),
         a.layout);
  }
  CheckDType(kPrim, "query", a.query, {abi::kFloat16, abi::kBfloat16});
  if (a.num_heads <= 0) return;  // BuildFusedProblem names the problem
  const DenseGeometry g = ReadDense(kPrim, "query", a.query, a.layout, a.num_heads);
  if (g.S != 1 || g.B <= 0 || g.D <= 0) {
    Fail(kPrim, "the 'query' must hold one position (S = 1) of a non-empty batch and head dim, but got shape %s.",
         a.query.ShapeString().c_str());
  }
  CheckLimit("the batch size B", g.B, limits::kMaxBatch);
  CheckLimit("the head dim D", g.D, limits::kMaxHeadDim);
}

Problem Prepare(const FusedArgs &a) {
  CheckDecodeCall(a);
  Problem p = BuildFusedProblem(a);
  // BuildFusedProblem checks the block table's limit
  if (!p.kv.paged) CheckLimit("the key/value length S", p.kv.stored_len, limits::kMaxKvLength);
  return p;
}

}  // namespace
}  // namespace msa

extern "C" int IncreFlashAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::FusedArgs args = msa::ReadParameters(nparam, params, ndims, shapes, dtypes);
  const msa::Problem problem = msa::Prepare(args);  // throws on a bad input
  msa::RunFused(args, problem);
  return 0;
}

// The output shape is the query's, unknown dims and rank included.
extern "C" std::vector<int64_t> IncreFlashAttentionInferShape(int *ndims, int64_t **shapes,
                                                              mindspore::AotExtra *extra) {
  (void)extra;
  return msa::InputShape(ndims, shapes, msa::abi::incre_flash_attention::in::kQuery);
}
