// fused_infer_attention_score_v2 on CPU: the adapter from FusedInferAttentionScoreV2's AOT parameters to the
// shared reading of the fused family (attention/fused_inputs.h) and the attention core. v2 adds MLA rope
// (query_rope, key_rope) and a learnable sink; its antiquant is the separate key / value form
// (dequant_scale_key / dequant_offset_key with key_quant_mode, and the value's).
//
// AOT parameters (kernel_abi.h, abi::fused_infer_attention_score_v2): the 22 inputs in YAML order (an absent
// optional input is a shape-(0,) tensor), the float64 attribute vector, attention_out and softmax_lse.
#include <cstdint>
#include <vector>

#include "attention/fused_inputs.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::fused_infer_attention_score_v2;
namespace in = op::in;
namespace attr = op::attr;

FusedArgs ReadParameters(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  FusedArgs a;
  a.prim = op::kPrimName;
  a.names.mask = "atten_mask";
  a.names.scale2 = "quant_scale_out";
  a.names.offset2 = "quant_offset_out";
  a.names.key_scale = "dequant_scale_key";
  a.names.key_offset = "dequant_offset_key";
  a.names.value_scale = "dequant_scale_value";
  a.names.value_offset = "dequant_offset_value";
  a.names.key_mode = "key_quant_mode";
  a.names.value_mode = "value_quant_mode";
  a.names.num_heads = "num_query_heads";
  Arg args[op::kNumParams];
  ReadArgs(a.prim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(a.prim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  a.num_heads = IntAttr(a.prim, v, attr::kNumQueryHeads, "num_query_heads");
  a.kv_heads = IntAttr(a.prim, v, attr::kNumKeyValueHeads, "num_key_value_heads");
  a.pre_tokens = TokenCountAttr(a.prim, v, attr::kPreTokens, "pre_tokens");
  a.next_tokens = TokenCountAttr(a.prim, v, attr::kNextTokens, "next_tokens");
  a.layout = static_cast<int>(IntAttr(a.prim, v, attr::kInputLayout, "input_layout"));
  a.sparse_mode = IntAttr(a.prim, v, attr::kSparseMode, "sparse_mode");
  a.block_size = IntAttr(a.prim, v, attr::kBlockSize, "block_size");
  a.key_mode = IntAttr(a.prim, v, attr::kKeyQuantMode, "key_quant_mode");
  a.value_mode = IntAttr(a.prim, v, attr::kValueQuantMode, "value_quant_mode");
  a.lse_flag = IntAttr(a.prim, v, attr::kReturnSoftmaxLse, "return_softmax_lse") != 0;
  a.scale = static_cast<float>(v[attr::kSoftmaxScale]);
  if (IntAttr(a.prim, v, attr::kQueryQuantMode, "query_quant_mode") != 0) {
    Fail(a.prim, "the 'query_quant_mode' must be 0, but got %g.", v[attr::kQueryQuantMode]);
  }
  for (int i : {in::kDequantScaleQuery, in::kDequantScaleKeyRope}) {
    if (args[i].present()) {
      Fail(a.prim, "the '%s' is not supported.", i == in::kDequantScaleQuery ? "dequant_scale_query"
                                                                             : "dequant_scale_key_rope");
    }
  }
  a.query = args[in::kQuery];
  a.key = args[in::kKey];
  a.value = args[in::kValue];
  a.query_rope = args[in::kQueryRope];
  a.key_rope = args[in::kKeyRope];
  a.pse = args[in::kPseShift];
  a.mask = args[in::kAttenMask];
  a.seq_q = args[in::kActualSeqLengths];
  a.seq_kv = args[in::kActualSeqLengthsKv];
  a.block_table = args[in::kBlockTable];
  a.key_scale = args[in::kDequantScaleKey];
  a.key_offset = args[in::kDequantOffsetKey];
  a.value_scale = args[in::kDequantScaleValue];
  a.value_offset = args[in::kDequantOffsetValue];
  a.scale2 = args[in::kQuantScaleOut];
  a.offset2 = args[in::kQuantOffsetOut];
  a.sink = args[in::kLearnableSink];
  a.key_prefix = args[in::kKeySharedPrefix];
  a.value_prefix = args[in::kValueSharedPrefix];
  a.prefix_len = args[in::kActualSharedPrefixLen];
  a.out = args[in::kCount + op::out::kAttentionOut];
  a.lse = args[in::kCount + op::out::kSoftmaxLse];
  return a;
}

}  // namespace
}  // namespace msa

extern "C" int FusedInferAttentionScoreV2(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::FusedArgs args = msa::ReadParameters(nparam, params, ndims, shapes, dtypes);
  const msa::Problem problem = msa::BuildFusedProblem(args);  // throws on a bad input
  msa::RunFused(args, problem);
  return 0;
}

// attention_out: the query's shape (BNSD_BSND: transposed to BSND); softmax_lse: (B, N, Sq, 1), (T, N, 1) in
// TND, (1,) when return_softmax_lse is False. Unknown dims and rank pass through.
extern "C" std::vector<std::vector<int64_t>> FusedInferAttentionScoreV2InferShape(int *ndims, int64_t **shapes,
                                                                                  mindspore::AotExtra *extra) {
  namespace op = msa::abi::fused_infer_attention_score_v2;
  const std::vector<int64_t> query = msa::InputShape(ndims, shapes, op::in::kQuery);
  std::vector<int64_t> attrs;
  if (!msa::IntAttributes(extra, op::attr::kCount, &attrs)) return {{msa::kUnknownRank}, {msa::kUnknownRank}};
  const int layout = static_cast<int>(attrs[op::attr::kInputLayout]);
  return {msa::AttentionOutShape(query, layout), msa::SoftmaxLseShape(query, layout, attrs[op::attr::kNumQueryHeads],
                                                                      attrs[op::attr::kReturnSoftmaxLse] != 0)};
}
