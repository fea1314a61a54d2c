// Batched one-sided Jacobi SVD on CUDA: one thread block per matrix, so a whole batch of small
// and medium matrices runs in a single launch. Each round of the round-robin ordering rotates
// n/2 disjoint column pairs at once, one warp per pair (dot products by warp shuffles).
// Work is in float64. Sorting, normalisation and completion are ATen ops afterwards.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>

#include "ops/svd.h"

namespace unisub::detail {
namespace {

constexpr int kMaxSweeps = 80;
constexpr int kThreads = 256;

__device__ inline double warp_sum(double x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// cols: [batch][n][m] (column j of matrix b at cols + (b n + j) m); V: [batch][n][n], V(i, j) at
// V + b n n + j n + i. On return the columns are mutually orthogonal and V holds the rotations.
__global__ void jacobi_rotate_kernel(double* __restrict__ cols, double* __restrict__ V, int64_t m,
                                     int64_t n, int* __restrict__ unconverged) {
  double* a = cols + static_cast<int64_t>(blockIdx.x) * n * m;
  double* v = V + static_cast<int64_t>(blockIdx.x) * n * n;
  for (int64_t idx = threadIdx.x; idx < n * n; idx += blockDim.x) v[idx] = (idx / n == idx % n) ? 1.0 : 0.0;
  __shared__ int rotated;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t players = n + (n & 1);  // an odd n gets a dummy column that never rotates
  const double tol = static_cast<double>(m) * DBL_EPSILON;
  int sweep = 0;
  for (; sweep < kMaxSweeps; ++sweep) {
    if (threadIdx.x == 0) rotated = 0;
    __syncthreads();
    for (int64_t round = 0; round + 1 < players; ++round) {
      for (int64_t k = warp; k < players / 2; k += warps) {
        int64_t p = k == 0 ? round : (round + k) % (players - 1);
        int64_t q = k == 0 ? players - 1 : (round - k + players - 1) % (players - 1);
        if (p > q) { const int64_t t = p; p = q; q = t; }
        if (q >= n) continue;
        double* xp = a + p * m;
        double* xq = a + q * m;
        double alpha = 0.0, beta = 0.0, gamma = 0.0;
        for (int64_t i = lane; i < m; i += 32) {
          alpha += xp[i] * xp[i];
          beta += xq[i] * xq[i];
          gamma += xp[i] * xq[i];
        }
        alpha = warp_sum(alpha);
        beta = warp_sum(beta);
        gamma = warp_sum(gamma);
        if (alpha == 0.0 || beta == 0.0 || fabs(gamma) <= tol * sqrt(alpha) * sqrt(beta)) continue;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = fabs(zeta) > 1e150 ? 1.0 / (2.0 * zeta)
                                             : copysign(1.0, zeta) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / sqrt(1.0 + t * t), s = c * t;
        for (int64_t i = lane; i < m; i += 32) {
          const double x = xp[i], y = xq[i];
          xp[i] = c * x - s * y;
          xq[i] = s * x + c * y;
        }
        double* vp = v + p * n;
        double* vq = v + q * n;
        for (int64_t i = lane; i < n; i += 32) {
          const double x = vp[i], y = vq[i];
          vp[i] = c * x - s * y;
          vq[i] = s * x + c * y;
        }
        if (lane == 0) rotated = 1;
      }
      __syncthreads();
    }
    const bool done = rotated == 0;
    __syncthreads();  // everyone has read `rotated` before it is reset
    if (done) break;
  }
  if (threadIdx.x == 0 && sweep == kMaxSweeps) atomicAdd(unconverged, 1);
}

}  // namespace

bool jacobi_svd_cuda(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V) {
  TORCH_INTERNAL_ASSERT(A.scalar_type() == at::kDouble && A.dim() == 3 && A.size(1) >= A.size(2));
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), n = A.size(2);
  auto cols = A.mT().contiguous();                 // [batch, n, m]: columns contiguous
  auto rotations = at::empty({batch, n, n}, A.options());  // row j = column j of V
  auto unconverged = at::zeros({1}, A.options().dtype(at::kInt));
  TORCH_CHECK(batch <= std::numeric_limits<int>::max(), "unisub.svd: batch too large for one launch");
  jacobi_rotate_kernel<<<static_cast<unsigned>(batch), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      cols.data_ptr<double>(), rotations.data_ptr<double>(), m, n, unconverged.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const auto sigma = cols.norm(2, -1);  // [batch, n]
  const auto order = std::get<1>(sigma.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true));
  S.copy_(sigma.gather(-1, order));
  const auto inv = at::where(S > 0, S.reciprocal(), at::zeros_like(S));
  const auto sorted_cols = cols.gather(1, order.unsqueeze(-1).expand({batch, n, m}));
  U.copy_((sorted_cols * inv.unsqueeze(-1)).mT());
  V.copy_(rotations.gather(1, order.unsqueeze(-1).expand({batch, n, n})).mT());
  return unconverged.item<int>() == 0;
}

}  // namespace unisub::detail
