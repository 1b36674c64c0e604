// Shape inference for MindSpore's AOT Custom ops with dynamic shapes.
//
// MindSpore calls `extern "C" std::vector<int64_t> <Func>InferShape(int *ndims, int64_t **shapes,
// mindspore::AotExtra *extra)` from the kernel library at compile time, where a dim may be -1 (unknown) and
// a shape may be [-2] (unknown rank), and again at run time with the real shapes. A multi-output op returns
// std::vector<std::vector<int64_t>> from the same entry point. The library is built with MindSpore's
// libstdc++ ABI (_GLIBCXX_USE_CXX11_ABI=0, build.py), so the vectors cross the boundary safely.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernel_abi.h"

// MindSpore's AotExtra (include/mindspore/ccsrc/utils/custom_aot_extra.h), declared here with the same
// virtual functions in the same order, so its vtable matches and the reg_info attributes can be read; the
// strings are the old libstdc++ ABI's, like MindSpore's (build.py). Only IntVec is used.
namespace mindspore {
class AotKernelData {
 public:
  virtual ~AotKernelData() = default;
};

class AotExtra {
 public:
  virtual ~AotExtra() = default;
  virtual bool HasAttr(std::string name) = 0;
  std::vector<int64_t> IntVec(const std::string &name) { return GetAttrIntVec(name); }

 private:
  virtual bool GetAttrBool(std::string name) = 0;
  virtual int64_t GetAttrInt(std::string name) = 0;
  virtual float GetAttrFloat(std::string name) = 0;
  virtual std::string GetAttrStr(std::string name) = 0;
  virtual std::vector<int64_t> GetAttrIntVec(std::string name) = 0;
  virtual std::vector<float> GetAttrFloatVec(std::string name) = 0;
  virtual std::vector<std::vector<int64_t>> GetAttrInt2DVec(std::string name) = 0;
  virtual std::vector<std::vector<float>> GetAttrFloat2DVec(std::string name) = 0;
  std::vector<size_t> workspace_;
  AotKernelData *kernel_data_{nullptr};
};
}  // namespace mindspore

namespace msa {

constexpr int64_t kUnknownRank = -2;

// The shape of input i exactly as MindSpore gave it (-1 dims and [-2] pass through); [-2] when the arrays
// themselves are unusable. i must be an input the op always has.
inline std::vector<int64_t> InputShape(const int *ndims, int64_t *const *shapes, int i) {
  if (ndims == nullptr || shapes == nullptr || i < 0) return {kUnknownRank};
  const int n = ndims[i];
  if (n < 0 || (n > 0 && shapes[i] == nullptr)) return {kUnknownRank};
  return std::vector<int64_t>(shapes[i], shapes[i] + n);
}

// The normalised integer attributes the KernelPrimitive puts in the reg_info (primitive_base.INT_ATTRS), in
// kernel_abi.h attr:: order; false when they are missing or fewer than `count` (the caller then answers
// unknown-rank shapes).
inline bool IntAttributes(mindspore::AotExtra *extra, size_t count, std::vector<int64_t> *attrs) {
  if (extra == nullptr || !extra->HasAttr("msa_int_attrs")) return false;
  *attrs = extra->IntVec("msa_int_attrs");
  return attrs->size() >= count;
}

// True when the shape has a known rank (it may still hold -1 dims).
inline bool RankKnown(const std::vector<int64_t> &shape) {
  return !(shape.size() == 1 && shape[0] == kUnknownRank);
}

}  // namespace msa

namespace msa {

// attention_out of the attention family: the query's shape, except BNSD_BSND, whose (B, N, S, D) query gives a
// (B, S, N, D) output.
inline std::vector<int64_t> AttentionOutShape(const std::vector<int64_t> &query, int layout) {
  if (layout == abi::kBnsdBsnd && RankKnown(query) && query.size() == 4) {
    return {query[0], query[2], query[1], query[3]};
  }
  return query;
}

// softmax_lse: float32 (B, N, Sq, 1), (T, N, 1) in TND, or (1,) when the op does not return it.
inline std::vector<int64_t> SoftmaxLseShape(const std::vector<int64_t> &query, int layout, int64_t num_heads,
                                            bool returned) {
  if (!returned) return {1};
  const bool known = RankKnown(query);
  if (layout == abi::kTnd) return {known && query.size() == 3 ? query[0] : -1, num_heads, 1};
  int64_t batch = -1, seq = -1;
  if (known && (query.size() == 3 || query.size() == 4)) {
    batch = query[0];
    seq = layout == abi::kBnsd || layout == abi::kBnsdBsnd ? (query.size() == 4 ? query[2] : -1) : query[1];
  }
  return {batch, num_heads, seq, 1};
}

}  // namespace msa

namespace msa {

// softmax_max / softmax_sum of the training ops: float32 (B, N1, S1, 8), or (T1, N1, 8) in TND, with B and S1
// taken from the query in its layout (SBH is (S1, B, H)); unknown dims stay -1. A query of a known rank that does
// not fit the layout (only a dynamic-rank graph lets one through the Python checks) gets empty statistics, so
// that the kernel runs and fails with its own message rather than MindSpore's "Resize failed" on a -1 shape.
inline std::vector<int64_t> TrainingStatsShape(const std::vector<int64_t> &query, int layout, int64_t head_num) {
  constexpr int64_t kWidth = 8;
  const bool known = RankKnown(query);
  const size_t rank = layout == abi::kBnsd || layout == abi::kBsnd ? 4 : 3;
  const bool misfit = known && query.size() != rank;
  if (layout == abi::kTnd) return {misfit ? 0 : known ? query[0] : -1, head_num, kWidth};
  int64_t batch = misfit ? 0 : -1, seq = misfit ? 0 : -1;
  if (known && !misfit) {
    batch = layout == abi::kSbh ? query[1] : query[0];
    seq = layout == abi::kSbh ? query[0] : layout == abi::kBnsd ? query[2] : query[1];
  }
  return {batch, head_num, seq, kWidth};
}

}  // namespace msa
