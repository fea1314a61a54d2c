// CPU kernels of the Gram ops: a parallel pack of unfolding columns; the GEMMs go to ATen's BLAS.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops/gram.h"

namespace unisub::detail {
namespace {

// One run of consecutive unfolding columns that share the outer index o: inner indices [i0, i1).
template <typename scalar_t>
inline void copy_run(double* __restrict__ out, const scalar_t* __restrict__ x, int64_t xs2,
                     const double* __restrict__ mu, int64_t ms2, int64_t n) {
  if (xs2 == 1 && (mu == nullptr || ms2 == 1)) {  // the common case: a vectorisable loop
    if (mu) {
      for (int64_t k = 0; k < n; ++k) out[k] = static_cast<double>(x[k]) - mu[k];
    } else {
      for (int64_t k = 0; k < n; ++k) out[k] = static_cast<double>(x[k]);
    }
    return;
  }
  for (int64_t k = 0; k < n; ++k)
    out[k] = static_cast<double>(x[k * xs2]) - (mu ? mu[k * ms2] : 0.0);
}

template <typename scalar_t>
void pack_typed(const at::Tensor& X3, const std::optional<at::Tensor>& mean3, const Unfolding& u,
                int64_t c0, at::Tensor& buf) {
  const scalar_t* x = X3.const_data_ptr<scalar_t>();
  const int64_t xs0 = X3.stride(0), xs1 = X3.stride(1), xs2 = X3.stride(2);
  const double* mu = mean3 ? mean3->const_data_ptr<double>() : nullptr;
  const int64_t ms0 = mu ? mean3->stride(0) : 0, ms1 = mu && u.mean_per_row ? mean3->stride(1) : 0,
                ms2 = mu ? mean3->stride(2) : 0;
  double* out = buf.data_ptr<double>();
  const int64_t bs0 = buf.stride(0), bs1 = buf.stride(1);
  const int64_t rows = buf.size(0), cols = buf.size(1);

  if (bs1 == 1) {
    // Row-major block: each task fills whole rows, column runs of constant o read X along inner.
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t c = 0;
        while (c < cols) {
          const int64_t o = (c0 + c) / u.inner, i = (c0 + c) % u.inner;
          const int64_t n = std::min(u.inner - i, cols - c);
          copy_run(out + r * bs0 + c, x + o * xs0 + r * xs1 + i * xs2, xs2,
                   mu ? mu + (o % u.period) * ms0 + r * ms1 + i * ms2 : nullptr, ms2, n);
          c += n;
        }
      }
    });
  } else {
    // Column-major block (inner == 1): each column is one o, read along the rows of X.
    TORCH_INTERNAL_ASSERT(bs0 == 1, "column-major pack block must have unit row stride");
    at::parallel_for(0, cols, 16, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t o = c0 + c;
        copy_run(out + c * bs1, x + o * xs0, xs1,
                 mu ? mu + (o % u.period) * ms0 : nullptr, ms1, rows);
      }
    });
  }
}

template <typename scalar_t>
void spread_sum_typed(const at::Tensor& flat, at::Tensor& out) {
  const scalar_t* x = flat.const_data_ptr<scalar_t>();
  const int64_t s0 = flat.stride(0), s1 = flat.stride(1);
  const int64_t models = flat.size(0), n = flat.size(1);
  double* acc = out.data_ptr<double>();
  // Column tiles small enough that the partial sums stay in L1 while the models stream past.
  at::parallel_for(0, n, 512, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) acc[j] = 0.0;
    const scalar_t* first = x;
    for (int64_t m = 1; m < models; ++m) {
      const scalar_t* row = x + m * s0;
      if (s1 == 1) {
        for (int64_t j = j0; j < j1; ++j)
          acc[j] += static_cast<double>(row[j]) - static_cast<double>(first[j]);
      } else {
        for (int64_t j = j0; j < j1; ++j)
          acc[j] += static_cast<double>(row[j * s1]) - static_cast<double>(first[j * s1]);
      }
    }
  });
}

void pack_unfolding_cpu(const at::Tensor& X3, const std::optional<at::Tensor>& mean3,
                        const Unfolding& u, int64_t c0, at::Tensor& buf) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X3.scalar_type(), "unisub_pack_cpu",
                                  [&] { pack_typed<scalar_t>(X3, mean3, u, c0, buf); });
}

void spread_sum_cpu(const at::Tensor& flat, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "unisub_spread_sum_cpu",
                                  [&] { spread_sum_typed<scalar_t>(flat, out); });
}

constexpr GramKernels kCpuKernels{pack_unfolding_cpu, spread_sum_cpu};

}  // namespace

const GramKernels& cpu_gram_kernels() { return kCpuKernels; }

}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, CPU, m) {
  using namespace unisub::detail;
  m.impl("mode_gram", [](const at::Tensor& X, int64_t dim, bool center) {
    return mode_gram_impl(X, dim, center, kCpuKernels);
  });
  m.impl("gram_update_", [](const at::Tensor& G, const at::Tensor& X, int64_t dim) {
    gram_update_impl(G, X, dim, kCpuKernels);
  });
}
