// Shape inference for MindSpore's AOT Custom ops with dynamic shapes.
//
// MindSpore calls `extern "C" std::vector<int64_t> <Func>InferShape(int *ndims, int64_t **shapes,
// mindspore::AotExtra *extra)` from the kernel library at compile time, where a dim may be -1 (unknown) and
// a shape may be [-2] (unknown rank), and again at run time with the real shapes. A multi-output op returns
// std::vector<std::vector<int64_t>> from the same entry point. The library is built with MindSpore's
// libstdc++ ABI (_GLIBCXX_USE_CXX11_ABI=0, build.py), so the vectors cross the boundary safely.
#pragma once

#include <cstdint>
#include <vector>

namespace mindspore {
class AotExtra;
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

}  // namespace msa
