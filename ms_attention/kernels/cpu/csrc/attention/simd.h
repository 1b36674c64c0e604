// The SIMD layer of the attention core: one float32 vector type per instruction set, loads that widen every
// element type to float32 in registers, horizontal sums and exp.
//
// AVX-512 (F, BW, VL) gives 16 lanes, AVX2 with FMA and F16C gives 8; without them (the portable build)
// kHasSimd is false and the core takes its scalar loops instead. Loads with a count n read only elements
// [0, n) (masked loads, or a copy for the widths AVX2 cannot mask), so a row's tail never reads past it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention/numeric.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MSA_SIMD_AVX512 1
#define MSA_SIMD 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define MSA_SIMD_AVX2 1
#define MSA_SIMD 1
#include <immintrin.h>
#endif

namespace msa {
namespace simd {

#if defined(MSA_SIMD_AVX512)

constexpr bool kHasSimd = true;
constexpr int kWidth = 16;
using Vec = __m512;

inline __mmask16 FirstN(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Set1(float x) { return _mm512_set1_ps(x); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline float ReduceAdd(Vec v) { return _mm512_reduce_add_ps(v); }
// v, kept in a register: stops the compiler from folding the load of v into each instruction that uses it
// (one load per use instead of one in all, which makes a register-blocked kernel load-bound).
inline Vec InRegister(Vec v) {
  __asm__("" : "+v"(v));
  return v;
}
inline float ReduceMax(Vec v) { return _mm512_reduce_max_ps(v); }

inline Vec Load(const float *p) { return _mm512_loadu_ps(p); }
inline Vec Load(const float *p, int n) { return _mm512_maskz_loadu_ps(FirstN(n), p); }
inline void Store(float *p, Vec v) { _mm512_storeu_ps(p, v); }
inline void Store(float *p, Vec v, int n) { _mm512_mask_storeu_ps(p, FirstN(n), v); }

inline Vec HalfBitsToFloat(__m256i h) { return _mm512_cvtph_ps(h); }
inline Vec BF16BitsToFloat(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline Vec Int8ToFloat(__m128i x) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x)); }

inline Vec Load(const Half *p) { return HalfBitsToFloat(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))); }
inline Vec Load(const Half *p, int n) { return HalfBitsToFloat(_mm256_maskz_loadu_epi16(FirstN(n), p)); }
inline Vec Load(const BFloat16 *p) {
  return BF16BitsToFloat(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline Vec Load(const BFloat16 *p, int n) { return BF16BitsToFloat(_mm256_maskz_loadu_epi16(FirstN(n), p)); }
inline Vec Load(const int8_t *p) { return Int8ToFloat(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))); }
inline Vec Load(const int8_t *p, int n) { return Int8ToFloat(_mm_maskz_loadu_epi8(FirstN(n), p)); }

// Lane i of the result is op over the lanes of v[i], for kWidth vectors: the three halvings of a
// transpose-and-combine tree, 45 shuffles and ops for 16 results instead of 16 separate reductions. The tree
// leaves result i in lane 4 * (i % 4) + i / 4, so the inputs are fed in that (self-inverse) order.
template <class Op>
__attribute__((always_inline)) inline Vec CombineEach(const Vec *v, Op op) {
  auto in = [v](int i) { return v[(i % 4) * 4 + i / 4]; };
  Vec w[8], u[4];
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {  // lanes 0-1: halves of input 2k, lanes 2-3: of input 2k+1
    const Vec a = in(2 * k), b = in(2 * k + 1);
    w[k] = op(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {  // lane k: four partial results of input 4m + k
    const Vec a = w[2 * m], b = w[2 * m + 1];
    u[m] = op(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  const Vec t0 = op(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  const Vec t1 = op(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
  return op(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xEE));
}
__attribute__((always_inline)) inline Vec SumEach(const Vec *v) { return CombineEach(v, [](Vec a, Vec b) { return _mm512_add_ps(a, b); }); }
__attribute__((always_inline)) inline Vec MaxEach(const Vec *v) { return CombineEach(v, [](Vec a, Vec b) { return _mm512_max_ps(a, b); }); }

// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln 2 / 2, with Cephes' expf polynomial for exp(r)
// (about 1 ulp). Inputs below -104 (and -inf) give 0: scalef underflows through the subnormals.
inline Vec Exp(Vec x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.7228f));
  const Vec n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vec r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  Vec p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

#elif defined(MSA_SIMD_AVX2)

constexpr bool kHasSimd = true;
constexpr int kWidth = 8;
using Vec = __m256;

inline __m256i FirstN(int n) {
  static const int32_t kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(kLanes + 8 - n));
}
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Set1(float x) { return _mm256_set1_ps(x); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec InRegister(Vec v) {
  __asm__("" : "+x"(v));
  return v;
}
inline float ReduceAdd(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float ReduceMax(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline Vec Load(const float *p) { return _mm256_loadu_ps(p); }
inline Vec Load(const float *p, int n) { return _mm256_maskload_ps(p, FirstN(n)); }
inline void Store(float *p, Vec v) { _mm256_storeu_ps(p, v); }
inline void Store(float *p, Vec v, int n) { _mm256_maskstore_ps(p, FirstN(n), v); }

inline Vec HalfBitsToFloat(__m128i h) { return _mm256_cvtph_ps(h); }
inline Vec BF16BitsToFloat(__m128i h) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline Vec Int8ToFloat(__m128i x) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x)); }
// AVX2 has no masked 8/16-bit loads: the tail goes through a zeroed copy.
template <class T>
inline __m128i LoadTail(const T *p, int n) {
  alignas(16) unsigned char buf[16] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(T));
  return _mm_load_si128(reinterpret_cast<const __m128i *>(buf));
}

inline Vec Load(const Half *p) { return HalfBitsToFloat(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))); }
inline Vec Load(const Half *p, int n) { return HalfBitsToFloat(LoadTail(p, n)); }
inline Vec Load(const BFloat16 *p) {
  return BF16BitsToFloat(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}
inline Vec Load(const BFloat16 *p, int n) { return BF16BitsToFloat(LoadTail(p, n)); }
inline Vec Load(const int8_t *p) { return Int8ToFloat(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))); }
inline Vec Load(const int8_t *p, int n) { return Int8ToFloat(LoadTail(p, n)); }

// Lane i of the result is the sum of v[i], for kWidth vectors (three levels of horizontal adds).
__attribute__((always_inline)) inline Vec SumEach(const Vec *v) {
  const Vec a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const Vec b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// As the AVX-512 version, but 2^n is built in the exponent field, so inputs below ln(FLT_MIN) give 0.
inline Vec Exp(Vec x) {
  const Vec underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  const Vec n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  Vec r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  Vec p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#else

constexpr bool kHasSimd = false;
constexpr int kWidth = 1;

#endif

// src[0, n) widened to float32 into dst.
template <class T>
inline void LoadRow(const T *src, int64_t n, float *dst) {
  int64_t i = 0;
#if defined(MSA_SIMD)
  for (; i + kWidth <= n; i += kWidth) Store(dst + i, Load(src + i));
#endif
  for (; i < n; ++i) dst[i] = ToFloat(src[i]);
}

// max of x[0, n); -inf for n == 0
inline float MaxOf(const float *x, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
#if defined(MSA_SIMD)
  if (n >= kWidth) {
    Vec v = Load(x);
    for (i = kWidth; i + kWidth <= n; i += kWidth) v = Max(v, Load(x + i));
    m = ReduceMax(v);
  }
#endif
  for (; i < n; ++i) m = std::fmax(m, x[i]);
  return m;
}

// x[i] = exp(x[i] - shift) for i in [0, n); returns the sum of the new values.
inline float ExpShiftedSum(float *x, int64_t n, float shift) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(MSA_SIMD)
  const Vec s = Set1(shift);
  Vec acc = Zero();
  for (; i + kWidth <= n; i += kWidth) {
    const Vec e = Exp(Sub(Load(x + i), s));
    Store(x + i, e);
    acc = Add(acc, e);
  }
  sum = ReduceAdd(acc);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

// y[0, n) = y * a + x * b
inline void ScaleAdd(float *y, float a, const float *x, float b, int64_t n) {
  int64_t i = 0;
#if defined(MSA_SIMD)
  const Vec va = Set1(a), vb = Set1(b);
  for (; i + kWidth <= n; i += kWidth) Store(y + i, Fma(Load(x + i), vb, Mul(Load(y + i), va)));
#endif
  for (; i < n; ++i) y[i] = y[i] * a + x[i] * b;
}

}  // namespace simd
}  // namespace msa
