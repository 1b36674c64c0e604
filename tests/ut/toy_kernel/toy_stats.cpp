// A toy AOT kernel that exercises what KernelPrimitive declares from the YAML: two outputs, an input updated
// in place (side_effect_mem), C++ shape inference for dynamic shapes. Inputs: x (float32, rows x cols),
// state (int32, in place: += 1), the attribute vector [scale]. Outputs: y = x * scale, rowsum (rows, 1).
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace mindspore { class AotExtra; }

extern "C" std::vector<std::vector<int64_t>> ToyStatsInferShape(int *ndims, int64_t **shapes,
                                                                 mindspore::AotExtra *) {
  std::vector<int64_t> x(shapes[0], shapes[0] + ndims[0]);
  if (ndims[0] == 1 && shapes[0][0] == -2) return {{-2}, {-1, 1}};
  return {x, {ndims[0] > 0 ? shapes[0][0] : -1, 1}};
}

extern "C" int ToyStats(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *, void *) {
  if (nparam != 5 || ndims[0] != 2) throw std::runtime_error("For 'ToyStats', the 'x' must be 2-D.");
  const float *x = static_cast<const float *>(params[0]);
  int32_t *state = static_cast<int32_t *>(params[1]);
  const double *attrs = static_cast<const double *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  float *rowsum = static_cast<float *>(params[4]);
  const int64_t rows = shapes[0][0], cols = shapes[0][1];
  for (int64_t r = 0; r < rows; ++r) {
    float s = 0.f;
    for (int64_t c = 0; c < cols; ++c) {
      y[r * cols + c] = x[r * cols + c] * static_cast<float>(attrs[0]);
      s += x[r * cols + c];
    }
    rowsum[r] = s;
  }
  int64_t n = 1;
  for (int i = 0; i < ndims[1]; ++i) n *= shapes[1][i];
  for (int64_t i = 0; i < n; ++i) state[i] += 1;
  return 0;
}
