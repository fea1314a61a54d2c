// Driver of the fused CPU Gram-route SVD: picks the kernel's instruction set, runs one matrix per
// task and reports the matrices that need another route. See gram_svd_cpu.h.
#include "cpu/gram_svd_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <string>

#include "cpu/gram_svd_kernel.h"
#include "ops/svd.h"

namespace unisub::detail {
namespace {

using KernelFn = int (*)(const GramSvdProblem&, double*);

// AVX2 + FMA where the CPU has them and ATen dispatches to AVX2 or better (so ATEN_CPU_CAPABILITY=
// default selects the baseline copy here too); the baseline x86-64 copy otherwise.
KernelFn select_kernel() {
  static const KernelFn fn = [] {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();
    if (gram_svd_avx2_compiled() && (cap == "AVX2" || cap == "AVX512") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
      return &gram_svd_one_avx2;
#endif
    return &gram_svd_one_generic;
  }();
  return fn;
}

}  // namespace

GramSvdCpuResult gram_svd_cpu(const at::Tensor& A3_in, int64_t k, double min_ratio) {
  const auto A3 = A3_in.to(at::kFloat).contiguous();
  const int64_t batch = A3.size(0), m = A3.size(1), n = A3.size(2);
  const bool wide = m < n;
  const int64_t rows = wide ? n : m, cols = wide ? m : n;
  const auto opts = A3.options();
  GramSvdCpuResult out{at::empty({batch, m, k}, opts), at::empty({batch, k}, opts), at::empty({batch, k, n}, opts), {}};
  const float* a = A3.const_data_ptr<float>();
  float* u = out.U.mutable_data_ptr<float>();
  float* s = out.S.mutable_data_ptr<float>();
  float* vh = out.Vh.mutable_data_ptr<float>();
  std::vector<int> status(batch, kGramSvdOk);
  const KernelFn kernel = select_kernel();

  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> work(gram_svd_work_size(rows, cols));
    for (int64_t b = b0; b < b1; ++b) {
      GramSvdProblem p;
      p.rows = rows;
      p.cols = cols;
      p.a = a + b * m * n;
      p.k = k;
      p.s = s + b * k;
      p.min_ratio = min_ratio;
      p.reortho_lambda_ratio = kSkipReorthoMinLambdaRatio;
      if (!wide) {  // T = A: U_T is A's U (m × k), V_T is A's Vhᵀ
        p.a_rs = n, p.a_cs = 1;
        p.u = u + b * m * k, p.u_rs = k, p.u_cs = 1;
        p.v = vh + b * k * n, p.v_rs = 1, p.v_cs = n;
      } else {  // T = Aᵀ: U_T is A's Vhᵀ (n × k), V_T is A's U (m × k)
        p.a_rs = 1, p.a_cs = n;
        p.u = vh + b * k * n, p.u_rs = 1, p.u_cs = n;
        p.v = u + b * m * k, p.v_rs = k, p.v_cs = 1;
        p.sign_from_v = true;
      }
      status[b] = kernel(p, work.data());
    }
  });

  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(status[b] != kGramSvdNonFinite,
                "unisub.svd: A contains NaN or infinity; decompositions need finite input");
    if (status[b] != kGramSvdOk) out.redo.push_back(b);
  }
  return out;
}

}  // namespace unisub::detail
