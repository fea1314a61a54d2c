#include "analysis/model_reading.h"

#include "ops/checks.h"

namespace unisub::analysis {
namespace {

at::Tensor finite(const Checkpoint& model, const std::string& key, at::Tensor t) {
  if (!unisub::detail::all_finite(t))
    throw ReadError(model.file_of(key), "holds NaN or infinity; the analysis needs finite weights", key);
  return t;
}

}  // namespace

at::Tensor read_finite(const Checkpoint& model, const std::string& key, bool scale) {
  return finite(model, key, model.get(key, scale));
}

at::Tensor read_finite_unscaled(const Checkpoint& model, const std::string& key) {
  return finite(model, key, model.get_unscaled(key));
}

void add_delta_model(DeltaAccumulator& acc, const Checkpoint& model, const std::string& a_key,
                     const std::string& b_key, bool scale, int64_t id) {
  // conv and embedding factors are stored with more dimensions: their matrix view, B [m, ·], A [·, n]
  const auto B = read_finite_unscaled(model, b_key).reshape({acc.rows(), -1});
  const auto A = read_finite_unscaled(model, a_key).reshape({-1, acc.cols()});
  acc.add(B, A, model.scaling(b_key, scale), id);
}

}  // namespace unisub::analysis
