// prompt_flash_attention on CPU: the adapter from PromptFlashAttention's AOT parameters to the shared reading
// of the fused family (attention/fused_inputs.h) and the attention core.
//
// AOT parameters (kernel_abi.h, abi::prompt_flash_attention): the 12 inputs in YAML order (an absent optional
// input is a shape-(0,) tensor), the float64 attribute vector, the output.
#include <cstdint>
#include <vector>

#include "attention/fused_inputs.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::prompt_flash_attention;
namespace in = op::in;
namespace attr = op::attr;

FusedArgs ReadParameters(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  FusedArgs a;
  a.prim = op::kPrimName;
  a.pfa = true;
  a.names.deq1 = "deq_scale1";
  a.names.deq2 = "deq_scale2";
  Arg args[op::kNumParams];
  ReadArgs(a.prim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(a.prim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  a.num_heads = IntAttr(a.prim, v, attr::kNumHeads, "num_heads");
  a.kv_heads = IntAttr(a.prim, v, attr::kNumKeyValueHeads, "num_key_value_heads");
  a.pre_tokens = TokenCountAttr(a.prim, v, attr::kPreTokens, "pre_tokens");
  a.next_tokens = TokenCountAttr(a.prim, v, attr::kNextTokens, "next_tokens");
  a.layout = static_cast<int>(IntAttr(a.prim, v, attr::kInputLayout, "input_layout"));
  a.sparse_mode = IntAttr(a.prim, v, attr::kSparseMode, "sparse_mode");
  a.scale = static_cast<float>(v[attr::kScaleValue]);
  a.query = args[in::kQuery];
  a.key = args[in::kKey];
  a.value = args[in::kValue];
  a.mask = args[in::kAttnMask];
  a.seq_q = args[in::kActualSeqLengths];
  a.seq_kv = args[in::kActualSeqLengthsKv];
  a.pse = args[in::kPseShift];
  a.deq1 = args[in::kDeqScale1];
  a.quant1 = args[in::kQuantScale1];
  a.deq2 = args[in::kDeqScale2];
  a.scale2 = args[in::kQuantScale2];
  a.offset2 = args[in::kQuantOffset2];
  a.out = args[in::kCount + op::out::kAttentionOut];
  return a;
}

}  // namespace
}  // namespace msa

extern "C" int PromptFlashAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::FusedArgs args = msa::ReadParameters(nparam, params, ndims, shapes, dtypes);
  const msa::Problem problem = msa::BuildFusedProblem(args);  // throws on a bad input
  msa::RunFused(args, problem);
  return 0;
}

// The output has the query's shape in every layout PFA takes, unknown dims and rank included.
extern "C" std::vector<int64_t> PromptFlashAttentionInferShape(int *ndims, int64_t **shapes,
                                                               mindspore::AotExtra *extra) {
  (void)extra;
  return msa::InputShape(ndims, shapes, msa::abi::prompt_flash_attention::in::kQuery);
}
