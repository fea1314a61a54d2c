// The fused Gram-route SVD kernel compiled for baseline x86-64 (or whatever the build targets).
#define UNISUB_GRAM_SVD_KERNEL_BODY
#include "cpu/gram_svd_kernel.h"

namespace unisub::detail {

int gram_svd_one_generic(const GramSvdProblem& p, double* work) { return gram_svd_one_impl(p, work); }

}  // namespace unisub::detail
