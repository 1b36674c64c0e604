// Packed key and value tiles for blocks with many query rows (prefill): a tile is widened to float32 once,
// into a per-thread buffer, and then serves every row of the block from there.
//
// Keys are packed transposed, kt[d * kPackKeys + j] = k_j[d], kPackKeys keys per panel (zero-padded), so a
// score block is an outer-product micro-GEMM: per d, one broadcast query element times the keys' vectors,
// with MR x (kPackKeys / kWidth) scores in registers and no horizontal reduction. Values are widened row by
// row, vw[j * D + d] = v_j[d]. With few rows (decode), widening once does not pay: the tiles then read the
// keys and values in place (score_tile.h, value_tile.h).
#pragma once

#include <cstdint>
#include <vector>

#include "attention/simd.h"

namespace msa {
namespace detail {

// Per-thread float buffer `which` (0: keys, 1: values, 2: rounded probabilities) of at least `floats` elements, 64-byte aligned. It grows
// on a thread's first large tile and is then reused: no allocation on the hot path. nullptr when it cannot grow
// (the tiles then take their in-place paths: nothing may throw inside a ParallelFor).
inline float *TileBuffer(int which, int64_t floats) noexcept {
  thread_local std::vector<float> buffers[3];
  std::vector<float> &b = buffers[which];
  if (static_cast<int64_t>(b.size()) < floats + 16) {
    try {
      b.resize(static_cast<size_t>(floats + 16));
    } catch (...) {
      return nullptr;
    }
  }
  const uintptr_t p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<float *>((p + 63) & ~static_cast<uintptr_t>(63));
}

#if defined(MSA_SIMD)
constexpr int64_t kPackKeys = 2 * simd::kWidth;  // keys per packed panel: two vectors
constexpr int64_t kPackMinRows = 16;             // rows from which a tile is packed (below: read in place)

#if defined(MSA_SIMD_AVX512)
constexpr int kScorePanelRows = 12;  // 24 accumulators + 2 key vectors + a broadcast: 27 of 32 registers
constexpr int kValueRows = 3, kValueVectors = 8;  // 24 accumulators, 3 broadcast weights, one value vector

// In-place transpose of 16 vectors of 16 floats.
inline void Transpose(simd::Vec *r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  // r[4a + b] now holds, in each 128-bit lane L, elements (4L + b) of rows 4a..4a+3: combine the lanes.
  for (int b = 0; b < 4; ++b) {
    const __m512 x0 = _mm512_shuffle_f32x4(r[b], r[4 + b], 0x88);    // lanes 0,2 of r[b], 0,2 of r[4+b]
    const __m512 x1 = _mm512_shuffle_f32x4(r[b], r[4 + b], 0xDD);    // lanes 1,3
    const __m512 x2 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], 0x88);
    const __m512 x3 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], 0xDD);
    t[b] = _mm512_shuffle_f32x4(x0, x2, 0x88);       // lane 0 of every row group: column b
    t[4 + b] = _mm512_shuffle_f32x4(x1, x3, 0x88);   // lane 1: column 4 + b
    t[8 + b] = _mm512_shuffle_f32x4(x0, x2, 0xDD);   // lane 2: column 8 + b
    t[12 + b] = _mm512_shuffle_f32x4(x1, x3, 0xDD);  // lane 3: column 12 + b
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#else  // AVX2: 16 registers
constexpr int kScorePanelRows = 6;  // 12 accumulators + 2 key vectors + a broadcast
constexpr int kValueRows = 3, kValueVectors = 4;

// In-place transpose of 8 vectors of 8 floats.
inline void Transpose(simd::Vec *r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // u[i + c]: column (4h + c) of rows i..i+3 in each half h
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
  }
}
#endif

// kt[d * kPackKeys + j] = k[j][d] for j < n (n <= kPackKeys), 0 for n <= j < kPackKeys, d < D.
template <class E>
inline void PackKeysTransposed(const E *const *k, int64_t n, int64_t D, float *kt) {
  using namespace simd;
  for (int64_t j0 = 0; j0 < kPackKeys; j0 += kWidth) {
    for (int64_t d0 = 0; d0 < D; d0 += kWidth) {
      const int w = static_cast<int>(D - d0 < kWidth ? D - d0 : kWidth);
      Vec r[kWidth];
      for (int i = 0; i < kWidth; ++i) {
        const int64_t j = j0 + i;
        r[i] = j >= n ? Zero() : w == kWidth ? Load(k[j] + d0) : Load(k[j] + d0, w);
      }
      Transpose(r);
      for (int i = 0; i < w; ++i) Store(kt + (d0 + i) * kPackKeys + j0, r[i]);
    }
  }
}

// s[r * lds + j] = q_r . k_j for MR rows and the n <= kPackKeys keys of a packed panel.
template <int MR>
inline void ScorePanel(const float *q, int64_t ldq, const float *kt, int64_t D, int64_t n, float *s, int64_t lds) {
  using namespace simd;
  Vec a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = Zero();
  for (int64_t d = 0; d < D; ++d) {
    const Vec k0 = Load(kt + d * kPackKeys), k1 = Load(kt + d * kPackKeys + kWidth);
    for (int r = 0; r < MR; ++r) {
      const Vec qb = Set1(q[r * ldq + d]);
      a0[r] = Fma(qb, k0, a0[r]);
      a1[r] = Fma(qb, k1, a1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    if (n >= 2 * kWidth) {
      Store(s + r * lds, a0[r]);
      Store(s + r * lds + kWidth, a1[r]);
    } else if (n > kWidth) {
      Store(s + r * lds, a0[r]);
      Store(s + r * lds + kWidth, a1[r], static_cast<int>(n - kWidth));
    } else {
      Store(s + r * lds, a0[r], static_cast<int>(n));
    }
  }
}

template <int MR>
inline void ScorePanelTail(const float *q, int64_t ldq, int64_t rows, const float *kt, int64_t D, int64_t n,
                           float *s, int64_t lds) {
  if constexpr (MR > 0) {
    if (rows == MR) {
      ScorePanel<MR>(q, ldq, kt, D, n, s, lds);
    } else {
      ScorePanelTail<MR - 1>(q, ldq, rows, kt, D, n, s, lds);
    }
  }
}

// The packed score tile: keys in panels of kPackKeys, rows in blocks of kScorePanelRows.
// kt: D * kPackKeys floats.
template <class E>
inline void ScoreTilePacked(const float *q, int64_t ldq, int64_t rows, const E *const *k, int64_t n, int64_t D,
                            float *s, int64_t lds, float *kt) {
  for (int64_t j = 0; j < n; j += kPackKeys) {
    const int64_t nj = n - j < kPackKeys ? n - j : kPackKeys;
    PackKeysTransposed(k + j, nj, D, kt);
    int64_t r = 0;
    for (; r + kScorePanelRows <= rows; r += kScorePanelRows) {
      ScorePanel<kScorePanelRows>(q + r * ldq, ldq, kt, D, nj, s + r * lds + j, lds);
    }
    if (r < rows) ScorePanelTail<kScorePanelRows - 1>(q + r * ldq, ldq, rows - r, kt, D, nj, s + r * lds + j, lds);
  }
}

// vw[j * D, + D) = v[j][0, D) widened, rows[j] = vw + j * D, for j < n.
template <class E>
inline void WidenValues(const E *const *v, int64_t n, int64_t D, float *vw, const float **rows) {
  for (int64_t j = 0; j < n; ++j) {
    simd::LoadRow(v[j], D, vw + j * D);
    rows[j] = vw + j * D;
  }
}
#endif

}  // namespace detail
}  // namespace msa
