// unisub.all_finite(t): whether a tensor holds no NaN or infinity. The readers of both front ends
// check every tensor they read with it. One kernel for every device (the CPU scan and the aminmax
// fallback for others live in one function, csrc/cpu/finite_cpu.cpp), registered as
// CompositeExplicitAutograd rather than catch-all: a catch-all kernel is decomposed under
// FakeTensorMode, so torch.compile ran it on a fake tensor and read memory it does not have
// (a segfault); now the tracer hands it a meta tensor, which it refuses by name.
#include <torch/library.h>

#include "ops/checks.h"

TORCH_LIBRARY_FRAGMENT(unisub, m) { m.def("all_finite(Tensor t) -> bool"); }

TORCH_LIBRARY_IMPL(unisub, CompositeExplicitAutograd, m) {
  m.impl("all_finite", [](const at::Tensor& t) {
    unisub::detail::check_has_values(t, "all_finite", "t");
    return unisub::detail::all_finite(t);
  });
}
