// advance_step_flashattn on CPU: vLLM's decode-step bookkeeping, in place (docs/advance_step_flashattn.md).
//
// AOT parameters (kernel_abi.h, abi::advance_step_flashattn): input_tokens, sampled_token_ids, input_positions,
// seq_lens, slot_mapping, block_tables (each int32 or int64), the float64 attribute vector, then one placeholder
// output (an AOT Custom op needs an output; primitive_base.PLACEHOLDER_OUTPUT), int32 (1,), set to 0.
//
// Every value is checked before anything is written, so a rejected call leaves the state as it was.
#include <cstdint>
#include <limits>
#include <vector>

#include "attention/validate.h"
#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

namespace op = abi::advance_step_flashattn;
namespace in = op::in;
namespace attr = op::attr;
constexpr int kPlaceholder = op::kNumParams;  // the one output, after the inputs
constexpr int kParams = op::kNumParams + 1;

int64_t Get(const Arg &a, int64_t i) { return ReadInt(a, i); }

void Set(const Arg &a, int64_t i, int64_t value) {
  if (a.dtype == abi::kInt32) {
    static_cast<int32_t *>(a.data)[i] = static_cast<int32_t>(value);
  } else {
    static_cast<int64_t *>(a.data)[i] = value;
  }
}

// value must fit the dtype of the tensor it is written to
void CheckFits(const char *prim, const char *name, const Arg &a, int64_t value, int64_t q) {
  if (a.dtype == abi::kInt32 &&
      (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max())) {
    Fail(prim, "the value %lld written to '%s' for sequence %lld does not fit its dtype int32.", (long long)value,
         name, (long long)q);
  }
}

void CheckShape(const char *prim, const char *name, const Arg &a, int ndim, int64_t dim0, int64_t dim1) {
  const bool ok = a.ndim == ndim && a.shape[0] == dim0 && (ndim == 1 || dim1 < 0 || a.shape[1] == dim1);
  if (!ok) Fail(prim, "the shape of '%s' %s does not match num_seqs / num_queries.", name, a.ShapeString().c_str());
}

}  // namespace
}  // namespace msa

extern "C" int AdvanceStepFlashattn(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  (void)stream;
  (void)extra;
  using namespace msa;
  const char *prim = op::kPrimName;
  Arg args[kParams];
  ReadArgs(prim, kParams, nparam, params, ndims, shapes, dtypes, args);
  const double *v = ReadAttrs(prim, args[in::kAttrs], op::kAttrVectorSize, op::kPresenceOffset, args);
  const int64_t num_seqs = IntAttr(prim, v, attr::kNumSeqs, "num_seqs");
  const int64_t num_queries = IntAttr(prim, v, attr::kNumQueries, "num_queries");
  const int64_t block_size = IntAttr(prim, v, attr::kBlockSize, "block_size");
  if (num_seqs <= 0 || num_queries < 0 || num_queries > num_seqs || block_size <= 0) {
    Fail(prim, "the attributes num_seqs %lld, num_queries %lld, block_size %lld are out of range.",
         (long long)num_seqs, (long long)num_queries, (long long)block_size);
  }
  const Arg &tokens = args[in::kInputTokens], &sampled = args[in::kSampledTokenIds];
  const Arg &positions = args[in::kInputPositions], &lens = args[in::kSeqLens];
  const Arg &slots = args[in::kSlotMapping], &tables = args[in::kBlockTables];
  const char *names[] = {"input_tokens", "sampled_token_ids", "input_positions", "seq_lens", "slot_mapping",
                         "block_tables"};
  for (int i = 0; i < in::kAttrs; ++i) CheckDType(prim, names[i], args[i], {abi::kInt32, abi::kInt64});
  CheckShape(prim, "input_tokens", tokens, 1, num_seqs, -1);
  CheckShape(prim, "input_positions", positions, 1, num_seqs, -1);
  CheckShape(prim, "seq_lens", lens, 1, num_seqs, -1);
  CheckShape(prim, "slot_mapping", slots, 1, num_seqs, -1);
  CheckShape(prim, "sampled_token_ids", sampled, 2, num_queries, 1);
  CheckShape(prim, "block_tables", tables, 2, num_seqs, -1);
  const int64_t max_blocks = tables.shape[1];
  if (max_blocks <= 0) Fail(prim, "the 'block_tables' must have at least one block per sequence.");
  const Arg &placeholder = args[kPlaceholder];
  if (placeholder.dtype != abi::kInt32 || placeholder.numel() != 1) {
    Fail(prim, "the placeholder output must be int32 of shape (1,), but got %s of %s.",
         DTypeName(placeholder.dtype), placeholder.ShapeString().c_str());
  }

  // validation: every value read and every value written, before any write
  std::vector<int64_t> slot_of(static_cast<size_t>(num_queries));
  for (int64_t q = 0; q < num_queries; ++q) {
    const int64_t pos = Get(lens, q);
    if (pos < 0 || pos / block_size >= max_blocks) {
      Fail(prim, "the 'seq_lens' value %lld of sequence %lld is out of range [0, %lld) (max_blocks_per_seq %lld "
           "* block_size %lld).", (long long)pos, (long long)q, (long long)(max_blocks * block_size),
           (long long)max_blocks, (long long)block_size);
    }
    const int64_t block = Get(tables, q * max_blocks + pos / block_size);
    if (block < 0 || block > std::numeric_limits<int64_t>::max() / block_size - 1) {
      Fail(prim, "the 'block_tables' entry %lld of sequence %lld (block %lld) is out of range.", (long long)block,
           (long long)q, (long long)(pos / block_size));
    }
    slot_of[q] = block * block_size + pos % block_size;
    CheckFits(prim, "input_tokens", tokens, Get(sampled, q), q);
    CheckFits(prim, "input_positions", positions, pos, q);
    CheckFits(prim, "seq_lens", lens, pos + 1, q);
    CheckFits(prim, "slot_mapping", slots, slot_of[q], q);
  }

  for (int64_t q = 0; q < num_queries; ++q) {
    const int64_t pos = Get(lens, q);
    Set(tokens, q, Get(sampled, q));
    Set(positions, q, pos);
    Set(lens, q, pos + 1);
    Set(slots, q, slot_of[q]);
  }
  for (int64_t q = num_queries; q < num_seqs; ++q) {
    Set(tokens, q, 0);
    Set(positions, q, 0);
    Set(slots, q, -1);
  }
  static_cast<int32_t *>(placeholder.data)[0] = 0;
  return 0;
}

extern "C" std::vector<int64_t> AdvanceStepFlashattnInferShape(int *ndims, int64_t **shapes,
                                                              mindspore::AotExtra *extra) {
  (void)ndims;
  (void)shapes;
  (void)extra;
  return {1};
}
