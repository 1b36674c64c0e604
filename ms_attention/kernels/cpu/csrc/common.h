// Shared helpers of the ms_attention CPU kernels: dtype conversion, error reporting, the AOT argument view.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace msa {

enum class DType { kF16, kBF16, kF32, kF64, kI8, kU8, kBool, kI32, kI64, kU64, kOther };

inline DType ParseDType(const char *name) {
  static const struct { const char *name; DType type; } kTable[] = {
      {"float16", DType::kF16}, {"bfloat16", DType::kBF16}, {"float32", DType::kF32}, {"float", DType::kF32},
      {"float64", DType::kF64}, {"int8", DType::kI8},       {"uint8", DType::kU8},    {"bool", DType::kBool},
      {"int32", DType::kI32},   {"int64", DType::kI64},     {"uint64", DType::kU64}};
  if (name == nullptr) return DType::kOther;
  for (const auto &e : kTable) {
    if (std::strcmp(name, e.name) == 0) return e.type;
  }
  return DType::kOther;
}

// Records the message for msa_last_error() and prints it; returns the AOT error code.
int Fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// One AOT parameter: pointer, shape, dtype.
struct Arg {
  void *data = nullptr;
  int ndim = 0;
  const int64_t *shape = nullptr;
  DType dtype = DType::kOther;
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // Optional inputs travel as shape-(0,) tensors.
  bool present() const { return !(ndim == 1 && shape[0] == 0); }
  int64_t dim(int i) const { return i < 0 ? shape[ndim + i] : shape[i]; }
};

// ---- scalar conversions -------------------------------------------------------------------------------
inline float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToHalf(float f) {  // round to nearest even, saturating to inf like the hardware
#if defined(__F16C__)
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {  // subnormal or zero in half
    float a;
    std::memcpy(&a, &absx, 4);
    uint32_t m = static_cast<uint32_t>(std::nearbyint(a * 16777216.0f));  // a / 2^-24
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t mant = absx & 0x7fffffu;
  uint32_t exp = (absx >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
#endif
}

inline float BF16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// ---- row conversions (the hot path): n elements to float32 -------------------------------------------
inline void HalfRowToFloat(const uint16_t *src, float *dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(src + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = HalfToFloat(src[i]);
}

inline void BF16RowToFloat(const uint16_t *src, float *dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
#endif
  for (; i < n; ++i) dst[i] = BF16ToFloat(src[i]);
}

}  // namespace msa
