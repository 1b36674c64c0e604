// Compact entry points: <Class>Compact and <Class>CompactInferShape for every operator with outputs.
//
// Why: MindSpore's PyNative dispatch of a Custom op costs about 5 us per input (MindSpore 2.10, measured with a
// trivial AOT kernel: 100 us with 1 input, 180 us with 16), and an operator of this family has 12-27 tensor
// inputs of which a call usually gives 3-5; the others travel as empty placeholders. In PyNative the
// KernelPrimitive (primitive_base.py) therefore hands MindSpore only the inputs a call gives, plus the
// attribute vector, to these entry points. They put an empty placeholder back for every absent input (its
// presence flag in the attribute vector is 0) and call the operator's own kernel or InferShape with the full
// parameter list of kernel_abi.h, so the kernels themselves see exactly what a full call gives them. Graph mode
// keeps the full entry points.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"
#include "infer_shape.h"
#include "kernel_abi.h"

namespace msa {
namespace {

using KernelFn = int (*)(int, void **, int *, int64_t **, const char **, void *, void *);

// An absent input: a shape-(0,) tensor of the placeholder dtype, as the functional makes it.
int64_t kEmptyShape[1] = {0};
char kEmptyData[1] = {0};

// The full parameter list of one call, rebuilt from a compact one.
struct FullParams {
  std::vector<void *> params;
  std::vector<int> ndims;
  std::vector<int64_t *> shapes;
  std::vector<const char *> dtypes;

  void Add(void *data, int ndim, int64_t *shape, const char *dtype) {
    params.push_back(data);
    ndims.push_back(ndim);
    shapes.push_back(shape);
    dtypes.push_back(dtype);
  }
  void AddPlaceholder(abi::DTypeCode dtype) { Add(kEmptyData, 1, kEmptyShape, abi::kDTypeNames[dtype]); }
};

// inputs: the operator's tensor inputs (the attribute vector excluded); outputs: its outputs.
template <int inputs, int outputs, int presence_offset, int attr_vector_size>
int RunCompact(const char *prim, KernelFn kernel, const abi::DTypeCode *placeholders, int nparam, void **params,
               int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra) {
  if (kernel == nullptr) Fail(prim, "the kernel library has no kernel for this operator.");
  if (params == nullptr || ndims == nullptr || shapes == nullptr || dtypes == nullptr) {
    Fail(prim, "the kernel got null parameter arrays.");
  }
  const int given = nparam - 1 - outputs;  // the compact list: given inputs, the attribute vector, outputs
  if (given < 0 || given > inputs) {
    Fail(prim, "the compact kernel entry needs %d to %d parameters, but got %d.", 1 + outputs,
         inputs + 1 + outputs, nparam);
  }
  const int at = given;
  if (ParseDType(dtypes[at]) != abi::kFloat64 || ndims[at] != 1 || shapes[at] == nullptr ||
      shapes[at][0] != attr_vector_size || params[at] == nullptr) {
    Fail(prim, "the attribute vector must hold %d float64 values.", attr_vector_size);
  }
  const double *flags = static_cast<const double *>(params[at]) + presence_offset;
  int flagged = 0;
  for (int i = 0; i < inputs; ++i) {
    if (flags[i] != 0.0 && flags[i] != 1.0) Fail(prim, "the presence flag of input %d must be 0 or 1.", i);
    flagged += flags[i] == 1.0;
  }
  if (flagged != given) {
    Fail(prim, "the compact kernel entry got %d inputs, but the attribute vector flags %d as given.", given,
         flagged);
  }
  FullParams full;
  for (int i = 0, next = 0; i < inputs; ++i) {
    if (flags[i] == 1.0) {
      full.Add(params[next], ndims[next], shapes[next], dtypes[next]);
      ++next;
    } else {
      full.AddPlaceholder(placeholders[i]);
    }
  }
  for (int i = at; i < nparam; ++i) full.Add(params[i], ndims[i], shapes[i], dtypes[i]);
  return kernel(static_cast<int>(full.params.size()), full.params.data(), full.ndims.data(), full.shapes.data(),
                full.dtypes.data(), stream, extra);
}

// The presence flags of the compact op's inputs, from its reg_info attribute (primitive_base.PRESENT_ATTR);
// false when missing or of the wrong length.
bool PresenceFlags(mindspore::AotExtra *extra, int inputs, std::vector<int64_t> *present) {
  if (extra == nullptr || !extra->HasAttr("msa_present")) return false;
  *present = extra->IntVec("msa_present");
  return static_cast<int>(present->size()) == inputs;
}

template <class Shapes, int inputs>
Shapes InferCompact(Shapes (*infer)(int *, int64_t **, mindspore::AotExtra *), int *ndims, int64_t **shapes,
                    mindspore::AotExtra *extra) {
  std::vector<int64_t> present;
  if (infer == nullptr || ndims == nullptr || shapes == nullptr || !PresenceFlags(extra, inputs, &present)) {
    return Shapes{};  // MindSpore reports the failed inference
  }
  std::vector<int> full_ndims;
  std::vector<int64_t *> full_shapes;
  int next = 0;
  for (int i = 0; i < inputs; ++i) {
    if (present[i] != 0) {
      full_ndims.push_back(ndims[next]);
      full_shapes.push_back(shapes[next]);
      ++next;
    } else {
      full_ndims.push_back(1);
      full_shapes.push_back(kEmptyShape);
    }
  }
  full_ndims.push_back(ndims[next]);  // the attribute vector
  full_shapes.push_back(shapes[next]);
  return infer(full_ndims.data(), full_shapes.data(), extra);
}

}  // namespace
}  // namespace msa

// Weak: an operator the library has no kernel for leaves them null (its compact entry then fails cleanly).
#define MSA_COMPACT_ENTRY(op, Class)                                                                            \
  using Class##Shapes = std::conditional_t<(msa::abi::op::out::kCount > 1), std::vector<std::vector<int64_t>>, \
                                           std::vector<int64_t>>;                                               \
  extern "C" int Class(int, void **, int *, int64_t **, const char **, void *, void *) __attribute__((weak));    \
  extern "C" Class##Shapes Class##InferShape(int *, int64_t **, mindspore::AotExtra *) __attribute__((weak));   \
  extern "C" int Class##Compact(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,   \
                                void *stream, void *extra) {                                                    \
    namespace abi_op = msa::abi::op;                                                                            \
    return msa::RunCompact<abi_op::in::kAttrs, abi_op::out::kCount, abi_op::kPresenceOffset,                    \
                           abi_op::kAttrVectorSize>(abi_op::kPrimName, Class, abi_op::kPlaceholderDTypes,       \
                                                    nparam, params, ndims, shapes, dtypes, stream, extra);      \
  }                                                                                                             \
  extern "C" Class##Shapes Class##CompactInferShape(int *ndims, int64_t **shapes, mindspore::AotExtra *extra) { \
    return msa::InferCompact<Class##Shapes, msa::abi::op::in::kAttrs>(Class##InferShape, ndims, shapes, extra); \
  }

MSA_ABI_OPERATORS(MSA_COMPACT_ENTRY)
