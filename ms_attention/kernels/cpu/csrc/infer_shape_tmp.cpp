// TEMPORARY (replaced by the core branch): IFA output shape = query shape.
#include <cstdint>
#include <vector>
namespace mindspore { class AotExtra; }
extern "C" std::vector<int64_t> IncreFlashAttentionInferShape(int *ndims, int64_t **shapes, mindspore::AotExtra *) {
  if (ndims == nullptr || shapes == nullptr || ndims[0] <= 0) return {-2};
  return std::vector<int64_t>(shapes[0], shapes[0] + ndims[0]);
}
