// CUDA kernels of the Gram ops: a fused permute + centre + cast of unfolding columns into a
// float64 block, written in the block's memory order (coalesced stores); GEMMs go to cuBLAS.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/gram.h"

namespace unisub::detail {
namespace {

struct PackGeometry {
  int64_t xs0, xs1, xs2;        // X3 strides
  int64_t ms0, ms1, ms2;        // mean3 strides (ms1 = 0 when the mean is per column only)
  int64_t bs0, bs1;             // block strides
  int64_t rows, cols, inner, period, c0;
  bool row_major;
};

template <typename scalar_t>
__global__ void pack_kernel(const scalar_t* __restrict__ x, const double* __restrict__ mu,
                            double* __restrict__ out, PackGeometry g) {
  const int64_t n = g.rows * g.cols;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = g.row_major ? k / g.cols : k % g.rows;
    const int64_t c = g.row_major ? k % g.cols : k / g.rows;
    const int64_t col = g.c0 + c, o = col / g.inner, i = col % g.inner;
    double v = static_cast<double>(x[o * g.xs0 + r * g.xs1 + i * g.xs2]);
    if (mu) v -= mu[(o % g.period) * g.ms0 + r * g.ms1 + i * g.ms2];
    out[r * g.bs0 + c * g.bs1] = v;
  }
}

void pack_unfolding_cuda(const at::Tensor& X3, const std::optional<at::Tensor>& mean3,
                         const Unfolding& u, int64_t c0, at::Tensor& buf) {
  const c10::cuda::CUDAGuard guard(X3.device());
  PackGeometry g{};
  g.xs0 = X3.stride(0); g.xs1 = X3.stride(1); g.xs2 = X3.stride(2);
  if (mean3) { g.ms0 = mean3->stride(0); g.ms1 = u.mean_per_row ? mean3->stride(1) : 0; g.ms2 = mean3->stride(2); }
  g.bs0 = buf.stride(0); g.bs1 = buf.stride(1);
  g.rows = buf.size(0); g.cols = buf.size(1);
  g.inner = u.inner; g.period = u.period; g.c0 = c0;
  g.row_major = g.bs1 == 1;
  const int64_t n = g.rows * g.cols;
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  const double* mu = mean3 ? mean3->const_data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X3.scalar_type(), "unisub_pack_cuda", [&] {
    pack_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        X3.const_data_ptr<scalar_t>(), mu, buf.data_ptr<double>(), g);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
__global__ void spread_sum_kernel(const scalar_t* __restrict__ x, int64_t s0, int64_t s1,
                                  int64_t models, int64_t n, double* __restrict__ out) {
  // One thread per column: neighbouring threads read neighbouring addresses of each model.
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double first = static_cast<double>(x[j * s1]);
    double acc = 0.0;
    for (int64_t m = 1; m < models; ++m) acc += static_cast<double>(x[m * s0 + j * s1]) - first;
    out[j] = acc;
  }
}

void spread_sum_cuda(const at::Tensor& flat, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(flat.device());
  const int64_t n = flat.size(1);
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535LL * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat.scalar_type(), "unisub_spread_sum_cuda", [&] {
    spread_sum_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        flat.const_data_ptr<scalar_t>(), flat.stride(0), flat.stride(1), flat.size(0), n,
        out.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr GramKernels kCudaKernels{pack_unfolding_cuda, spread_sum_cuda};

}  // namespace

const GramKernels& cuda_gram_kernels() { return kCudaKernels; }

}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, CUDA, m) {
  using namespace unisub::detail;
  m.impl("mode_gram", [](const at::Tensor& X, int64_t dim, bool center) {
    return mode_gram_impl(X, dim, center, kCudaKernels);
  });
  m.impl("gram_update_", [](const at::Tensor& G, const at::Tensor& X, int64_t dim) {
    gram_update_impl(G, X, dim, kCudaKernels);
  });
}
