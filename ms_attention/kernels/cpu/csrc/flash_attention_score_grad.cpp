// flash_attention_score_grad on CPU: the backward of flash_attention_score and speed_fusion_attention (their
// bprops call it with the forward's inputs and outputs). The adapter reads the forward's inputs through the shared
// training reader (attention/training_inputs.h), checks dy / softmax_max / softmax_sum / attention_in and the
// four outputs against them, and runs the flash backward (attention/backward.h).
//
// AOT parameters (kernel_abi.h, abi::flash_attention_score_grad): the 17 inputs in YAML order (an absent optional
// input is a shape-(0,) tensor), the float64 attribute vector, the outputs dq, dk, dv, dpse.
#include <cstdint>
#include <vector>

#include "attention/backward.h"
#include "attention/training_inputs.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::flash_attention_score_grad;
namespace in = op::in;
namespace attr = op::attr;

struct Call {
  TrainingArgs args;
  Arg dy, softmax_max, softmax_sum, attention_in;
  Arg dq, dk, dv, dpse;
};

Call ReadParameters(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Call call;
  TrainingArgs &a = call.args;
  a.prim = op::kPrimName;
  a.names.pse = "pse";
  a.names.mask = "attn_mask";
  a.names.scale = "scale_value";
  a.allow_float32 = true;  // speed_fusion_attention's float32
  Arg args[op::kNumParams];
  ReadArgs(a.prim, op::kNumParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(a.prim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args,
                              {in::kSeed, in::kOffset});
  a.head_num = IntAttr(a.prim, v, attr::kHeadNum, "head_num");
  a.keep_prob = v[attr::kKeepProb];
  a.scale = static_cast<float>(v[attr::kScaleValue]);
  a.pre_tokens = TokenCountAttr(a.prim, v, attr::kPreTokens, "pre_tokens");
  a.next_tokens = TokenCountAttr(a.prim, v, attr::kNextTokens, "next_tokens");
  a.layout = static_cast<int>(IntAttr(a.prim, v, attr::kInputLayout, "input_layout"));
  a.sparse_mode = IntAttr(a.prim, v, attr::kSparseMode, "sparse_mode");
  a.pse_type = IntAttr(a.prim, v, attr::kPseType, "pse_type");
  a.query = args[in::kQuery];
  a.key = args[in::kKey];
  a.value = args[in::kValue];
  a.pse = args[in::kPse];
  a.drop_mask = args[in::kDropMask];
  a.mask = args[in::kAttnMask];
  a.prefix = args[in::kPrefix];
  a.seq_q = args[in::kActualSeqQlen];
  a.seq_kv = args[in::kActualSeqKvlen];
  a.q_start_idx = args[in::kQStartIdx];
  a.kv_start_idx = args[in::kKvStartIdx];
  a.seed = args[in::kSeed];
  a.offset = args[in::kOffset];
  call.dy = args[in::kDy];
  call.softmax_max = args[in::kSoftmaxMax];
  call.softmax_sum = args[in::kSoftmaxSum];
  call.attention_in = args[in::kAttentionIn];
  const int o = in::kCount;
  call.dq = args[o + op::out::kDq];
  call.dk = args[o + op::out::kDk];
  call.dv = args[o + op::out::kDv];
  call.dpse = args[o + op::out::kDpse];
  return call;
}

// dy, attention_in and the softmax statistics against the forward's inputs; dq / dk / dv / dpse against the
// inputs they are the gradients of. Sets the problem's statistics and output (dq) for CheckProblem.
GradTensors ReadGradTensors(const Call &call, Problem *p) {
  const TrainingArgs &a = call.args;
  const char *prim = a.prim;
  CheckQueryShaped(a, "dy", call.dy, p->q_dtype);
  CheckQueryShaped(a, "attention_in", call.attention_in, p->q_dtype);
  p->stats.rows = CheckSoftmaxStats(a, *p, "softmax_max", call.softmax_max);
  CheckSoftmaxStats(a, *p, "softmax_sum", call.softmax_sum);
  p->stats.max = static_cast<float *>(call.softmax_max.data);
  p->stats.sum = static_cast<float *>(call.softmax_sum.data);
  p->stats.numel = call.softmax_max.numel();

  CheckQueryShaped(a, "dq", call.dq, p->q_dtype);
  CheckDTypeIs(prim, "dk", call.dk, a.key.dtype, "key");
  CheckSameShape(prim, "key", a.key, "dk", call.dk);
  CheckDTypeIs(prim, "dv", call.dv, a.value.dtype, "value");
  CheckSameShape(prim, "value", a.value, "dv", call.dv);
  if (a.pse.present()) {
    CheckDTypeIs(prim, "dpse", call.dpse, a.pse.dtype, "pse");
    CheckSameShape(prim, "pse", a.pse, "dpse", call.dpse);
  } else {
    CheckDTypeIs(prim, "dpse", call.dpse, p->q_dtype, "query");
    if (call.dpse.ndim != 1 || call.dpse.dim(0) != 0) {
      Fail(prim, "the 'dpse' must have shape (0,) without a pse, but got %s.", call.dpse.ShapeString().c_str());
    }
  }
  // dq is the problem's output: CheckProblem proves its rows (the query's) lie inside it
  p->out = call.dq.data;
  p->out_dtype = call.dq.dtype;
  p->out_numel = call.dq.numel();
  p->out_rows = p->q_rows;

  GradTensors g;
  g.dy = call.dy.data;
  g.out = call.attention_in.data;
  g.dq = call.dq.data;
  g.dk = call.dk.data;
  g.dv = call.dv.data;
  if (a.pse.present()) {
    g.dpse = call.dpse.data;
    g.dpse_dtype = call.dpse.dtype;
    g.dpse_numel = call.dpse.numel();
  }
  return g;
}

}  // namespace
}  // namespace msa

extern "C" int FlashAttentionScoreGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  (void)stream;
  (void)extra;
  const msa::Call call = msa::ReadParameters(nparam, params, ndims, shapes, dtypes);
  msa::Problem problem = msa::BuildTrainingProblem(call.args);  // throws on a bad input
  const msa::GradTensors grads = msa::ReadGradTensors(call, &problem);
  msa::CheckProblem(call.args.prim, problem);
  msa::RunAttentionGrad(problem, grads);
  return 0;
}

// (dq, dk, dv, dpse): the shapes of query, key, value and pse ((0,) without a pse; an absent optional input
// arrives as its shape-(0,) placeholder, so pse's own shape is the answer either way). Unknown dims and rank pass
// through.
extern "C" std::vector<std::vector<int64_t>> FlashAttentionScoreGradInferShape(int *ndims, int64_t **shapes,
                                                                               mindspore::AotExtra *extra) {
  (void)extra;
  namespace in = msa::abi::flash_attention_score_grad::in;
  return {msa::InputShape(ndims, shapes, in::kQuery), msa::InputShape(ndims, shapes, in::kKey),
          msa::InputShape(ndims, shapes, in::kValue), msa::InputShape(ndims, shapes, in::kPse)};
}
