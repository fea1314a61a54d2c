// The fused Gram-route SVD kernel compiled with AVX2 + FMA (CMakeLists.txt adds -mavx2 -mfma to this
// file alone on x86-64). Only called after a run-time check that the CPU has both; see
// gram_svd_cpu.cpp. Elsewhere (or without those flags) it is an empty stub that is never called.
#if defined(__AVX2__) && defined(__FMA__)
#define UNISUB_GRAM_SVD_KERNEL_BODY
#endif
#include "cpu/gram_svd_kernel.h"

namespace unisub::detail {

#if defined(__AVX2__) && defined(__FMA__)
bool gram_svd_avx2_compiled() { return true; }
int gram_svd_one_avx2(const GramSvdProblem& p, double* work) { return gram_svd_one_impl(p, work); }
#else
bool gram_svd_avx2_compiled() { return false; }
int gram_svd_one_avx2(const GramSvdProblem&, double*) { return kGramSvdNoConvergence; }
#endif

}  // namespace unisub::detail
