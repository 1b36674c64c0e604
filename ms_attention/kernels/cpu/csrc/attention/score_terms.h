// The per-element terms of a training attention score, shared by the forward core (attention.h) and the
// backward (backward.h) so that both see exactly the same score, visibility and dropout:
//
//   S(b, h, i, j) = scale * q.k + bias.factor * pse[...] + alibi(b, h, i, j)   (-inf where key j is not visible)
//   P'(b, h, i, j) = P * Z / keep_prob                                          (Z: the dropout keep bit)
//
// (i, j) are window-relative: query row i and key j of batch b's windows (Problem: q_start / kv_start). Each
// term has a scalar form for one element and a row form for keys [j, j + n) of one row, which the tiles use.
// Every index was checked by the reader (training_inputs.h / CheckProblem) before these run; none can fail.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/numeric.h"
#include "attention/problem.h"
#include "attention/simd.h"

namespace msa {

// ---- visibility --------------------------------------------------------------------------------------

// Key j lies inside row i's band, or among the keys every row sees (prefix sparse modes).
inline bool InBand(const Problem &p, int64_t b, int64_t i, int64_t j) {
  const Band &band = p.band;
  if (!band.enabled()) return true;
  if (!band.open_keys.empty() && j < band.open_keys[b]) return true;
  const int64_t delta = j - i;
  return delta >= band.lo[b] && delta <= band.hi[b];
}

// Element offset of the mask element of (b, h, i, j) (only with p.mask.data set).
inline int64_t MaskOffset(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j) {
  return b * p.mask.batch + h * p.mask.head + (i + p.frame.q[b]) * p.mask.row + j + p.frame.k[b];
}

// Whether row i of batch b, head h, attends key j: inside the band (or an open prefix key) and not discarded by
// the mask.
inline bool KeyVisible(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!InBand(p, b, i, j)) return false;
  if (p.mask.data != nullptr && !p.mask.additive) {
    return static_cast<const uint8_t *>(p.mask.data)[MaskOffset(p, b, h, i, j)] == 0;
  }
  return true;
}

// ---- bias: pse tensor and ALiBi ----------------------------------------------------------------------

// Element offset of pse (b, h, i, j), or -1 where a compressed pse reads past its last column (bias 0).
inline int64_t BiasOffset(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const ScoreBias &bias = p.bias;
  const int64_t base = b * bias.batch + h * bias.head;
  if (bias.compressed_rows == 0) return base + (i + p.frame.q[b]) * bias.row + j + p.frame.k[b];
  const int64_t r = i + bias.compressed_rows - p.q_len[b];
  if (r >= 0) return base + r * bias.row + j;
  const int64_t col = j - r;  // row 0, shifted: the ALiBi rows are Toeplitz
  return col < bias.cols ? base + col : -1;
}

inline float BiasElement(const ScoreBias &bias, int64_t offset) {
  switch (bias.dtype) {
    case abi::kFloat16: return ToFloat(static_cast<const Half *>(bias.data)[offset]);
    case abi::kBfloat16: return ToFloat(static_cast<const BFloat16 *>(bias.data)[offset]);
    default: return static_cast<const float *>(bias.data)[offset];
  }
}

inline float AlibiSlope(const Problem &p, int64_t b, int64_t h) { return p.alibi.slopes[b * p.N + h]; }

inline float AlibiAt(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const float dist = static_cast<float>(std::llabs(j - i + p.alibi.shift));
  return -AlibiSlope(p, b, h) * (p.alibi.sqrt ? std::sqrt(dist) : dist);
}

// Everything added to the scaled score of (b, h, i, j): factor * pse and ALiBi (0 when neither is given).
inline float BiasAt(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j) {
  float x = 0.f;
  if (p.bias.data != nullptr) {
    const int64_t at = BiasOffset(p, b, h, i, j);
    if (at >= 0) x += p.bias.factor * BiasElement(p.bias, at);
  }
  if (p.alibi.enabled()) x += AlibiAt(p, b, h, i, j);
  return x;
}

namespace detail {
// dst[0, n) += factor * src[0, n), the source widened in registers.
template <class T>
inline void AddScaledRow(const T *src, int64_t n, float factor, float *dst) {
  int64_t t = 0;
#if defined(MSA_SIMD)
  using namespace simd;
  const Vec f = Set1(factor);
  for (; t + kWidth <= n; t += kWidth) Store(dst + t, Fma(f, Load(src + t), Load(dst + t)));
  if (t < n) {
    const int rest = static_cast<int>(n - t);
    Store(dst + t, Fma(f, Load(src + t, rest), Load(dst + t, rest)), rest);
    return;
  }
#endif
  for (; t < n; ++t) dst[t] += factor * ToFloat(src[t]);
}
}  // namespace detail

// s[0, n) += factor * pse of row (b, h, i), keys [j, j + n).
inline void AddPseRow(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t n, float *s) {
  const ScoreBias &bias = p.bias;
  int64_t at = BiasOffset(p, b, h, i, j);
  if (bias.compressed_rows > 0 && i + bias.compressed_rows - p.q_len[b] < 0) {
    // row 0 from column j - r: the columns past the pse's last one add 0
    const int64_t col = j - (i + bias.compressed_rows - p.q_len[b]);
    n = std::max<int64_t>(0, std::min(n, bias.cols - col));
    at = b * bias.batch + h * bias.head + col;
  }
  if (n == 0) return;
  switch (bias.dtype) {
    case abi::kFloat16: detail::AddScaledRow(static_cast<const Half *>(bias.data) + at, n, bias.factor, s); break;
    case abi::kBfloat16:
      detail::AddScaledRow(static_cast<const BFloat16 *>(bias.data) + at, n, bias.factor, s);
      break;
    default: detail::AddScaledRow(static_cast<const float *>(bias.data) + at, n, bias.factor, s); break;
  }
}

// s[0, n) += ALiBi of row (b, h, i), keys [j, j + n).
inline void AddAlibiRow(const Problem &p, int64_t b, int64_t h, int64_t i, int64_t j, int64_t n, float *s) {
  const float neg_slope = -AlibiSlope(p, b, h);
  const float d0 = static_cast<float>(j - i + p.alibi.shift);  // exact: the reader keeps |distances| below 2^24
  if (p.alibi.sqrt) {
    for (int64_t t = 0; t < n; ++t) s[t] += neg_slope * std::sqrt(std::fabs(d0 + static_cast<float>(t)));
  } else {
    for (int64_t t = 0; t < n; ++t) s[t] += neg_slope * std::fabs(d0 + static_cast<float>(t));
  }
}

// ---- dropout -----------------------------------------------------------------------------------------

inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// The generator's stream from the seed / offset inputs (int64 values read as uint64).
inline uint64_t DropoutStream(int64_t seed, int64_t offset) {
  return Mix64(static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(offset));
}

// floor(keep_prob * 2^24): a key is kept when the top 24 bits of its hash are below it.
inline uint64_t DropoutThreshold(double keep_prob) { return static_cast<uint64_t>(std::floor(keep_prob * 16777216.0)); }

// The per-row key of the generated mask, row (b, h, i).
inline uint64_t DropoutRowKey(const Dropout &d, int64_t b, int64_t h, int64_t i) {
  const uint64_t row_id = static_cast<uint64_t>(h) * static_cast<uint64_t>(d.rows) +
                          static_cast<uint64_t>(d.row_origin[b] + i);
  return Mix64(d.stream ^ (row_id * 0xD1B54A32D192ED03ull));
}

inline bool GeneratedKeep(uint64_t row_key, int64_t j, uint64_t threshold) {
  const uint64_t u = Mix64(row_key + static_cast<uint64_t>(j + 1) * 0xA24BAED4963EE407ull);
  return (u >> 40) < threshold;
}

// The explicit mask's bit index of row (b, h, i), key 0.
inline int64_t DropoutBitBase(const Dropout &d, int64_t b, int64_t h, int64_t i) {
  return d.base[b] + h * d.head[b] + i * d.row[b];
}

// Z(b, h, i, j): whether the probability is kept (always, without dropout).
inline bool DropKeep(const Dropout &d, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (!d.enabled()) return true;
  if (d.bits != nullptr) {
    const int64_t k = DropoutBitBase(d, b, h, i) + j;
    return (d.bits[k >> 3] >> (k & 7)) & 1;
  }
  return GeneratedKeep(DropoutRowKey(d, b, h, i), j, d.threshold);
}

// prob[0, n) *= Z / keep_prob for row (b, h, i), keys [j, j + n). Only with dropout enabled.
inline void ApplyDropoutRow(const Dropout &d, int64_t b, int64_t h, int64_t i, int64_t j, int64_t n, float *prob) {
  const float kept = d.inv_keep;
  if (d.bits != nullptr) {
    const int64_t k0 = DropoutBitBase(d, b, h, i) + j;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t k = k0 + t;
      prob[t] *= ((d.bits[k >> 3] >> (k & 7)) & 1) ? kept : 0.f;
    }
    return;
  }
  const uint64_t row_key = DropoutRowKey(d, b, h, i), threshold = d.threshold;
  for (int64_t t = 0; t < n; ++t) prob[t] *= GeneratedKeep(row_key, j + t, threshold) ? kept : 0.f;
}

}  // namespace msa
