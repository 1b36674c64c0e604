// Error reporting and library metadata shared by every kernel.
#include "common.h"

#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <stdexcept>

namespace msa {
namespace {
std::mutex g_error_mutex;
std::string g_last_error;
}  // namespace

void Fail(const char *prim, const char *fmt, ...) {
  char body[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  std::string message = std::string("For '") + prim + "', " + body;
  {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    g_last_error = message;
  }
  throw std::runtime_error(message);
}

}  // namespace msa

extern "C" {

// The message of the latest rejected kernel call ("" when none). The exception already carries it to
// MindSpore; this stays for callers that inspect the library directly.
const char *msa_last_error() {
  std::lock_guard<std::mutex> lock(msa::g_error_mutex);
  static thread_local std::string copy;
  copy = msa::g_last_error;
  return copy.c_str();
}

void msa_clear_error() {
  std::lock_guard<std::mutex> lock(msa::g_error_mutex);
  msa::g_last_error.clear();
}

// Comma-separated operator names this library implements.
const char *msa_kernels() { return "incre_flash_attention"; }

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
