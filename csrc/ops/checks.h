#pragma once
// Input checks shared by every op. Each message names the op, the argument, what was expected
// and what was given, so a user can fix the call without reading our source.
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <string_view>

namespace unisub::detail {

// Ops without an autograd kernel (every op but svd, mode_gram, project, coefficients and
// reconstruct) open their driver with `const at::NoGradGuard no_grad;`. PyTorch's autograd
// fallback calls them with grad mode on, so without it an input that requires grad makes the
// driver's own ATen calls record a graph: out= ops then refuse to run ("functions with out=...
// arguments don't support automatic differentiation"), and in-place steps break the graph's
// backward. Under the guard the fallback's documented behaviour holds: backward warns that no
// autograd kernel is registered.

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// True when no entry is NaN or infinite (integer tensors and empty ones are). A CPU tensor is read
// once by its bit patterns (csrc/cpu/finite_cpu.cpp); others take aminmax and one host sync.
bool all_finite(const at::Tensor& t);
// The in-place ops have no backward. Under grad mode, a target that requires grad (already part of
// a graph) would keep a graph describing its old values: backward silently wrong, with no warning.
// It is refused at the call; `instead` says what to do. (Other arguments that require grad get the
// autograd fallback's warning at backward: the result is only not differentiated.)
inline void check_not_in_graph(const at::Tensor& t, std::string_view op, std::string_view arg,
                               std::string_view instead) {
  TORCH_CHECK(!t.defined() || !c10::GradMode::is_enabled() || !t.requires_grad(), "unisub.", op, ": ", arg,
              " requires grad, and ", op, " is in place and not differentiable: ", instead,
              ", or call it under torch.no_grad()");
}

// Kernels that read a tensor's values on the host (all_finite, the analysis ops) refuse a meta
// tensor (what torch.compile, torch.export and FakeTensorMode trace with): it has no values, and
// copying it to the CPU gives uninitialised memory.
inline void check_has_values(const at::Tensor& t, std::string_view op, std::string_view arg) {
  TORCH_CHECK(!t.defined() || !t.is_meta(), "unisub.", op, ": ", arg, " is a meta tensor (no values); ", op,
              " reads values, so it cannot be traced (torch.compile, torch.export, FakeTensorMode): call it outside "
              "the traced code");
}

// The largest |entry| (0 for an empty tensor; NaN where any entry is NaN, infinity where any is
// infinite and none NaN). A CPU tensor is read once by its bit patterns, like all_finite.
double largest_magnitude(const at::Tensor& t);

// float16/bfloat16/float32 are computed in float32 and returned as float32; float64 stays.
inline at::ScalarType result_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_defined(const at::Tensor& t, std::string_view op, std::string_view arg) {
  TORCH_CHECK(t.defined(), "unisub.", op, ": ", arg, " must be a tensor, got None");
}

inline void check_float_input(const at::Tensor& t, std::string_view op, std::string_view arg) {
  check_defined(t, op, arg);
  TORCH_CHECK(is_supported_float(t.scalar_type()), "unisub.", op, ": ", arg,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_min_dim(const at::Tensor& t, int64_t min_dim, std::string_view op,
                          std::string_view arg, std::string_view what) {
  TORCH_CHECK(t.dim() >= min_dim, "unisub.", op, ": ", arg, " must have at least ", min_dim,
              " dimensions (", what, "), got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, std::string_view arg_a, const at::Tensor& b,
                              std::string_view arg_b, std::string_view op) {
  TORCH_CHECK(a.device() == b.device(), "unisub.", op, ": ", arg_a, " and ", arg_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// Wraps a possibly negative dim into [0, order), or fails naming the argument.
inline int64_t wrap_dim(int64_t dim, int64_t order, std::string_view op, std::string_view arg) {
  TORCH_CHECK(dim >= -order && dim < order, "unisub.", op, ": ", arg, " must be in [", -order,
              ", ", order - 1, "] for a tensor of order ", order, ", got ", dim);
  return dim < 0 ? dim + order : dim;
}

}  // namespace unisub::detail
