// The AOT boundary shared by every kernel: dtype codes, the view of one AOT parameter, error reporting.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "kernel_abi.h"

namespace msa {

// Dtypes are the generated ABI codes (kernel_abi.h), so C++ and the YAML name them the same way.
using DType = abi::DTypeCode;
constexpr DType kUnknownDType = static_cast<DType>(-1);

inline DType ParseDType(const char *name) {
  if (name == nullptr) return kUnknownDType;
  if (std::strcmp(name, "float") == 0) return abi::kFloat32;  // MindSpore's alias
  for (int code = 0; code < abi::kNumDTypes; ++code) {
    if (std::strcmp(name, abi::kDTypeNames[code]) == 0) return static_cast<DType>(code);
  }
  return kUnknownDType;
}

inline const char *DTypeName(DType type) {
  return type >= 0 && type < abi::kNumDTypes ? abi::kDTypeNames[type] : "an unknown dtype";
}

// Rejects a call: throws std::runtime_error("For '<prim>', <message>"). MindSpore turns the exception into a
// RuntimeError carrying the message, in PyNative and Graph mode. Only for the validation phase: never call it
// from a ParallelFor body (parallel.h).
[[noreturn]] void Fail(const char *prim, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// One AOT parameter: pointer, shape, dtype.
struct Arg {
  void *data = nullptr;
  int ndim = 0;
  const int64_t *shape = nullptr;
  DType dtype = kUnknownDType;
  bool given = true;  // false for an absent optional input (the attribute vector's presence flags)

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // An absent optional input travels as a shape-(0,) tensor with its presence flag 0; a given one, even
  // empty, is present (and its validator then rejects a wrong shape).
  bool present() const { return given; }
  int64_t dim(int i) const { return i < 0 ? shape[ndim + i] : shape[i]; }
  // "(2, 1, 128)", for messages
  std::string ShapeString() const {
    std::string s = "(";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (ndim == 1 ? ",)" : ")");
  }
};

}  // namespace msa
