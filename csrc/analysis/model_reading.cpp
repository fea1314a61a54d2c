#include "analysis/model_reading.h"

#include <cmath>
#include <sstream>

#include "ops/checks.h"

namespace unisub::analysis {
namespace {

std::string number(double x) {
  std::ostringstream out;
  out.precision(3);
  out << x;
  return out.str();
}

std::string beyond(double x, int exponent) {
  return number(x) + ", is " + (exponent > 0 ? "beyond 2^" : "below 2^") + std::to_string(exponent) + " (" +
         number(std::ldexp(1.0, exponent)) + "): the analysis squares weights in float64, where such values " +
         (exponent > 0 ? "overflow" : "underflow");
}

// Why a value of the given largest magnitude is refused, or "": `what` names it in the reason.
std::string range_problem(double largest, const std::string& what) {
  if (!std::isfinite(largest)) return "";  // the callers' NaN / infinity reasons come first
  if (largest > std::ldexp(1.0, kWeightExponentLimit)) return what + ", " + beyond(largest, kWeightExponentLimit);
  if (largest > 0 && largest < std::ldexp(1.0, -kWeightExponentLimit))
    return what + ", " + beyond(largest, -kWeightExponentLimit);
  return "";
}

std::string scaling_problem(double s) {
  const std::string what = "its LoRA scaling s = lora_alpha / r";
  if (!std::isfinite(s)) return what + ", " + number(s) + ", is not finite";
  return range_problem(std::abs(s), what);
}

std::string tensor_problem(double largest) {
  if (!std::isfinite(largest)) return "holds NaN or infinity; the analysis needs finite weights";
  const auto why = range_problem(largest, "its largest entry");
  return why.empty() ? why : why + "; rescale the model";
}

void refuse(const Checkpoint& model, const std::string& key, const std::string& why) {
  if (!why.empty()) throw ReadError(model.file_of(key), why, key);
}

}  // namespace

std::string weight_problem(const at::Tensor& t, std::optional<double> scaling) {
  if (scaling)
    if (auto why = scaling_problem(*scaling); !why.empty()) return why;
  auto why = tensor_problem(unisub::detail::largest_magnitude(t));
  if (!why.empty() && scaling)
    why += " (as multiplied by its LoRA scaling s = " + number(*scaling) +
           ", in float32 unless lora_B is float64)";
  return why;
}

std::pair<std::string, std::string> delta_problem(const at::Tensor& B, const at::Tensor& A, double s) {
  if (auto why = scaling_problem(s); !why.empty()) return {"lora_B", why};
  const double b = unisub::detail::largest_magnitude(B), a = unisub::detail::largest_magnitude(A);
  if (auto why = tensor_problem(b); !why.empty()) return {"lora_B", why};
  if (auto why = tensor_problem(a); !why.empty()) return {"lora_A", why};
  if (s == 0 || a == 0 || b == 0) return {"", ""};  // ΔW = 0: nothing to square
  // |s|·max|B|·max|A| bounds ΔW's entries up to the rank's factor: in log2, as it may not fit a double
  const double e = std::log2(std::abs(s)) + std::log2(b) + std::log2(a);
  if (e > kWeightExponentLimit || e < -kWeightExponentLimit)
    return {"lora_B", "its weight change s·B·A (s = " + number(s) + ", largest entries " + number(b) + " in lora_B and " +
                          number(a) + " in lora_A) reaches about 2^" + std::to_string(static_cast<int64_t>(std::lround(e))) +
                          ", " + (e > 0 ? "beyond 2^" : "below 2^-") + std::to_string(kWeightExponentLimit) +
                          ": the analysis squares it in float64, where it would " + (e > 0 ? "overflow" : "underflow")};
  return {"", ""};
}

at::Tensor read_finite(const Checkpoint& model, const std::string& key, bool scale) {
  const auto s = model.scalings.find(key);
  auto t = model.get(key, scale);
  refuse(model, key, weight_problem(t, scale && s != model.scalings.end() ? std::optional<double>(s->second) : std::nullopt));
  return t;
}

void add_delta_model(DeltaAccumulator& acc, const Checkpoint& model, const std::string& a_key,
                     const std::string& b_key, bool scale, int64_t id) {
  // conv and embedding factors are stored with more dimensions: their matrix view, B [m, ·], A [·, n]
  const auto B = model.get_unscaled(b_key).reshape({acc.rows(), -1});
  const auto A = model.get_unscaled(a_key).reshape({-1, acc.cols()});
  const double s = model.scaling(b_key, scale);
  const auto [which, why] = delta_problem(B, A, s);
  refuse(model, which == "lora_A" ? a_key : b_key, why);
  acc.add(B, A, s, id);
}

}  // namespace unisub::analysis
