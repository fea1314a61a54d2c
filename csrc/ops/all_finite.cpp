// unisub.all_finite(t): whether a tensor holds no NaN or infinity. The readers of both front ends
// check every tensor they read with it; a catch-all kernel, since the CPU scan and the aminmax
// fallback for other devices live in one function (csrc/cpu/finite_cpu.cpp).
#include <torch/library.h>

#include "ops/checks.h"

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("all_finite(Tensor t) -> bool", [](const at::Tensor& t) { return unisub::detail::all_finite(t); });
}
