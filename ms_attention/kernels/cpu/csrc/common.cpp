// Error reporting and library metadata shared by every kernel. MindSpore catches what a kernel throws and raises
// a RuntimeError carrying the message, in PyNative and Graph mode.
#include "common.h"

#include <cstdarg>
#include <cstdio>
#include <stdexcept>

namespace msa {

void Fail(const char *prim, const char *fmt, ...) {
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  throw std::runtime_error(std::string("For '") + prim + "', " + body);
}

}  // namespace msa

extern "C" {

// The instruction-set extensions the library was compiled for (checked against the CPU before loading).
const char *msa_isa() {
  return ""
#if defined(__AVX512F__)
         "avx512f "
#endif
#if defined(__AVX512BW__)
         "avx512bw "
#endif
#if defined(__AVX512VL__)
         "avx512vl "
#endif
#if defined(__AVX512BF16__)
         "avx512_bf16 "
#endif
#if defined(__AVX2__)
         "avx2 "
#endif
#if defined(__FMA__)
         "fma "
#endif
#if defined(__F16C__)
         "f16c "
#endif
      ;
}
}
