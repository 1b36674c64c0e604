// Error reporting and library metadata shared by every kernel.
#include "common.h"

#include <mutex>

namespace msa {
namespace {
std::mutex g_error_mutex;
std::string g_last_error;
}  // namespace

int Fail(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    g_last_error = buf;
  }
  std::fprintf(stderr, "ms_attention: %s\n", buf);
  return 1;
}

}  // namespace msa

extern "C" {

// The message of the latest failing kernel call ("" when none); the Python side adds it to MindSpore's
// generic "Return value from CPU AOT kernel ... is 1" error.
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
