// fused_infer_attention_score on CPU: the adapter from FusedInferAttentionScore's AOT parameters to the shared
// reading of the fused family (attention/fused_inputs.h) and the attention core.
//
// AOT parameters (kernel_abi.h, abi::fused_infer_attention_score): the 24 inputs in YAML order (an absent
// optional input is a shape-(0,) tensor), the float64 attribute vector, attention_out and softmax_lse.
#include <cstdint>
#include <vector>

#include "attention/fused_inputs.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::fused_infer_attention_score;
namespace in = op::in;
namespace attr = op::attr;

FusedArgs ReadParameters(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  FusedArgs a;
  a.prim = op::kPrimName;
  Arg args[op::kNumParams];
  ReadArgs(a.prim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(a.prim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  a.num_heads = IntAttr(a.prim, v, attr::kNumHeads, "num_heads");
  a.kv_heads = IntAttr(a.prim, v, attr::kNumKeyValueHeads, "num_key_value_heads");
  a.pre_tokens = TokenCountAttr(a.prim, v, attr::kPreTokens, "pre_tokens");
  a.next_tokens = TokenCountAttr(a.prim, v, attr::kNextTokens, "next_tokens");
  a.layout = static_cast<int>(IntAttr(a.prim, v, attr::kInputLayout, "input_layout"));
  a.sparse_mode = IntAttr(a.prim, v, attr::kSparseMode, "sparse_mode");
  a.block_size = IntAttr(a.prim, v, attr::kBlockSize, "block_size");
  a.antiquant_mode = IntAttr(a.prim, v, attr::kAntiquantMode, "antiquant_mode");
  a.key_mode = IntAttr(a.prim, v, attr::kKeyAntiquantMode, "key_antiquant_mode");
  a.value_mode = IntAttr(a.prim, v, attr::kValueAntiquantMode, "value_antiquant_mode");
  a.lse_flag = IntAttr(a.prim, v, attr::kSoftmaxLseFlag, "softmax_lse_flag") != 0;
  a.scale = static_cast<float>(v[attr::kScaleValue]);
  a.query = args[in::kQuery];
  a.key = args[in::kKey];
  a.value = args[in::kValue];
  a.pse = args[in::kPseShift];
  a.mask = args[in::kAttnMask];
  a.seq_q = args[in::kActualSeqLengths];
  a.seq_kv = args[in::kActualSeqLengthsKv];
  a.deq1 = args[in::kDequantScale1];
  a.quant1 = args[in::kQuantScale1];
  a.deq2 = args[in::kDequantScale2];
  a.scale2 = args[in::kQuantScale2];
  a.offset2 = args[in::kQuantOffset2];
  a.antiquant_scale = args[in::kAntiquantScale];
  a.antiquant_offset = args[in::kAntiquantOffset];
  a.block_table = args[in::kBlockTable];
  a.q_pad = args[in::kQueryPaddingSize];
  a.kv_pad = args[in::kKvPaddingSize];
  a.key_scale = args[in::kKeyAntiquantScale];
  a.key_offset = args[in::kKeyAntiquantOffset];
  a.value_scale = args[in::kValueAntiquantScale];
  a.value_offset = args[in::kValueAntiquantOffset];
  a.key_prefix = args[in::kKeySharedPrefix];
  a.value_prefix = args[in::kValueSharedPrefix];
  a.prefix_len = args[in::kActualSharedPrefixLen];
  a.out = args[in::kCount + op::out::kAttentionOut];
  a.lse = args[in::kCount + op::out::kSoftmaxLse];
  return a;
}

}  // namespace
}  // namespace msa

extern "C" int FusedInferAttentionScore(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                        void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::FusedArgs args = msa::ReadParameters(nparam, params, ndims, shapes, dtypes);
  const msa::Problem problem = msa::BuildFusedProblem(args);  // throws on a bad input
  msa::RunFused(args, problem);
  return 0;
}

// attention_out: the query's shape (BNSD_BSND: transposed to BSND); softmax_lse: (B, N, Sq, 1), (T, N, 1) in
// TND, (1,) when softmax_lse_flag is False. Unknown dims and rank pass through.
extern "C" std::vector<std::vector<int64_t>> FusedInferAttentionScoreInferShape(int *ndims, int64_t **shapes,
                                                                                mindspore::AotExtra *extra) {
  namespace op = msa::abi::fused_infer_attention_score;
  const std::vector<int64_t> query = msa::InputShape(ndims, shapes, op::in::kQuery);
  std::vector<int64_t> attrs;
  if (!msa::IntAttributes(extra, op::attr::kCount, &attrs)) return {{msa::kUnknownRank}, {msa::kUnknownRank}};
  const int layout = static_cast<int>(attrs[op::attr::kInputLayout]);
  return {msa::AttentionOutShape(query, layout),
          msa::SoftmaxLseShape(query, layout, attrs[op::attr::kNumHeads], attrs[op::attr::kSoftmaxLseFlag] != 0)};
}
