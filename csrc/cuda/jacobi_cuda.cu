// Batched one-sided Jacobi SVD on CUDA: one thread block per matrix, so a whole batch of small
// and medium matrices runs in a single launch. Each round of the round-robin ordering rotates
// n/2 disjoint column pairs at once, one warp per pair (dot products by warp shuffles).
// Work is in float64. Matrices whose columns and rotations fit in shared memory (64 × 64 needs
// 64 KiB) are swept there: a sweep touches every column n − 1 times, so keeping them on chip is
// what makes the batch fast. Larger ones are swept in global memory (correct, not fast).
// Sorting, normalisation and completion are ATen ops afterwards.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>
#include <cstdio>
#include <cstdlib>

#include "ops/svd.h"

namespace unisub::detail {
namespace {

constexpr int kMaxSweeps = 80;
constexpr int kGlobalThreads = 256;
constexpr int kMaxWarps = 32;  // 1024 threads

// Three independent sums over aligned groups of L lanes in one shuffle chain, so their latencies
// overlap. xor butterflies leave the same bits in every lane of a group (a + b == b + a), so all
// lanes of a group take the same branch and rotation below.
template <int L>
__device__ inline void group_sum3(double& x, double& y, double& z) {
  for (int offset = L / 2; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
    y += __shfl_xor_sync(0xffffffffu, y, offset);
    z += __shfl_xor_sync(0xffffffffu, z, offset);
  }
}

// Sweeps one matrix to convergence, by the whole thread block, one column pair per group of L
// lanes (32 / L pairs per warp). The rotation's scalar arithmetic (a division, a square root and a
// reciprocal square root in float64) is repeated by every lane of a group, so for short columns
// small groups spend more of the FP64 throughput on the columns themselves. a: n columns of length
// m, column j at a + j lda; v: n columns of length n, column j at v + j ldv, set to the identity
// here. Works on shared or global memory alike. Returns the sweeps done (kMaxSweeps: unconverged).
template <int L>
__device__ int jacobi_sweeps(double* a, int64_t lda, double* v, int64_t ldv, int m, int n, int* rotated) {
  static_assert(L == 8 || L == 16 || L == 32, "lanes per pair");
  constexpr int kPairsPerWarp = 32 / L;
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(n) * n; idx += blockDim.x) {
    const int64_t j = idx / n, i = idx % n;
    v[j * ldv + i] = i == j ? 1.0 : 0.0;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % L, sub = (threadIdx.x % 32) / L;
  const int warps = blockDim.x / 32;
  const int players = n + (n & 1);  // an odd n gets a dummy column that never rotates
  const int pairs = players / 2;
  const double tol = static_cast<double>(m) * DBL_EPSILON, tol2 = tol * tol;
  int sweep = 0;
  for (; sweep < kMaxSweeps; ++sweep) {
    if (threadIdx.x == 0) *rotated = 0;
    __syncthreads();
    for (int round = 0; round + 1 < players; ++round) {
      // Warp-uniform trip count: every lane reaches the shuffles, idle groups with zeros.
      for (int base = warp * kPairsPerWarp; base < pairs; base += warps * kPairsPerWarp) {
        const int k = base + sub;
        int p = k == 0 ? round : (round + k) % (players - 1);
        int q = k == 0 ? players - 1 : (round - k + players - 1) % (players - 1);
        if (p > q) { const int t = p; p = q; q = t; }
        const bool real = k < pairs && q < n;
        double* xp = a + p * lda;
        double* xq = a + q * lda;
        double alpha = 0.0, beta = 0.0, gamma = 0.0;
        if (real) {
          for (int i = lane; i < m; i += L) {
            const double x = xp[i], y = xq[i];
            alpha += x * x;
            beta += y * y;
            gamma += x * y;
          }
        }
        group_sum3<L>(alpha, beta, gamma);
        // |γ| ≤ tol·√(αβ), squared: no square roots on the common path.
        if (!real || alpha == 0.0 || beta == 0.0 || gamma * gamma <= tol2 * alpha * beta) continue;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = fabs(zeta) > 1e150 ? 1.0 / (2.0 * zeta)
                                             : copysign(1.0, zeta) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
        const double c = rsqrt(1.0 + t * t), s = c * t;
        for (int i = lane; i < m; i += L) {
          const double x = xp[i], y = xq[i];
          xp[i] = c * x - s * y;
          xq[i] = s * x + c * y;
        }
        double* vp = v + p * ldv;
        double* vq = v + q * ldv;
        for (int i = lane; i < n; i += L) {
          const double x = vp[i], y = vq[i];
          vp[i] = c * x - s * y;
          vq[i] = s * x + c * y;
        }
        if (lane == 0) *rotated = 1;
      }
      __syncthreads();
    }
    const bool done = *rotated == 0;
    __syncthreads();  // everyone has read `rotated` before it is reset
    if (done) break;
  }
  return sweep;
}

__device__ void record(int sweep, int* stats) {
  if (threadIdx.x != 0) return;
  if (sweep == kMaxSweeps) atomicAdd(stats, 1);
  atomicMax(stats + 1, sweep + (sweep < kMaxSweeps));
}

// cols: [batch][n][m] (column j of matrix b at cols + (b n + j) m), swept in place; V: [batch][n][n],
// V(i, j) at V + b n n + j n + i.
__global__ void jacobi_global_kernel(double* __restrict__ cols, double* __restrict__ V, int m, int n,
                                     int* __restrict__ stats) {
  __shared__ int rotated;
  double* a = cols + static_cast<int64_t>(blockIdx.x) * n * m;
  double* v = V + static_cast<int64_t>(blockIdx.x) * n * n;
  record(jacobi_sweeps<32>(a, m, v, n, m, n, &rotated), stats);
}

// A: [batch][m][n] row-major, read once; the columns are swept in shared memory and written to
// cols ([batch][n][m]), the rotations to V as above. An odd leading dimension spreads the
// transposing stores over the shared-memory banks.
template <int L>
__global__ void __launch_bounds__(kMaxWarps * 32)
    jacobi_shared_kernel(const double* __restrict__ A, double* __restrict__ cols, double* __restrict__ V,
                         int m, int n, int* __restrict__ stats) {
  extern __shared__ double smem[];
  __shared__ int rotated;
  const int lda = m | 1;
  double* a = smem;
  double* v = smem + static_cast<int64_t>(lda) * n;
  const int64_t mn = static_cast<int64_t>(m) * n;
  const double* src = A + static_cast<int64_t>(blockIdx.x) * mn;
  for (int64_t idx = threadIdx.x; idx < mn; idx += blockDim.x) a[(idx % n) * lda + idx / n] = src[idx];
  __syncthreads();
  record(jacobi_sweeps<L>(a, lda, v, n, m, n, &rotated), stats);
  __syncthreads();
  double* dst = cols + static_cast<int64_t>(blockIdx.x) * mn;
  for (int64_t idx = threadIdx.x; idx < mn; idx += blockDim.x) dst[idx] = a[(idx / m) * lda + idx % m];
  double* vdst = V + static_cast<int64_t>(blockIdx.x) * n * n;
  for (int64_t idx = threadIdx.x; idx < static_cast<int64_t>(n) * n; idx += blockDim.x) vdst[idx] = v[idx];
}

// Shared memory for the columns and rotations of one m × n matrix, or 0 when it does not fit.
size_t shared_bytes_for(int64_t m, int64_t n) {
  const size_t bytes = sizeof(double) * static_cast<size_t>(((m | 1) * n) + n * n);
  const auto* props = at::cuda::getCurrentDeviceProperties();
  // Leave room for the kernel's static shared memory and the per-block reservation.
  const size_t limit = props->sharedMemPerBlockOptin > 1024 ? props->sharedMemPerBlockOptin - 1024 : 0;
  return bytes <= limit ? bytes : 0;
}

}  // namespace

bool jacobi_cuda_fits_shared(int64_t m, int64_t n) { return m > 0 && n > 0 && shared_bytes_for(m, n) > 0; }

bool jacobi_svd_cuda(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V) {
  TORCH_INTERNAL_ASSERT(A.scalar_type() == at::kDouble && A.dim() == 3 && A.size(1) >= A.size(2));
  const c10::cuda::CUDAGuard guard(A.device());
  const int64_t batch = A.size(0), m = A.size(1), n = A.size(2);
  TORCH_CHECK(batch <= std::numeric_limits<int>::max() && m <= std::numeric_limits<int>::max(),
              "unisub.svd: batch or rows too large for one launch");
  auto rotations = at::empty({batch, n, n}, A.options());  // row j = column j of V
  auto stats = at::zeros({2}, A.options().dtype(at::kInt));  // unconverged matrices, most sweeps
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor cols;
  if (batch > 0) {
    if (const size_t bytes = shared_bytes_for(m, n)) {
      cols = at::empty({batch, n, m}, A.options());
      const auto src = A.contiguous();
      // Lanes per column pair: about four entries of each column per lane.
      const int lanes = m <= 32 ? 8 : (m <= 64 ? 16 : 32);
      const auto kernel = lanes == 8 ? jacobi_shared_kernel<8>
                                     : (lanes == 16 ? jacobi_shared_kernel<16> : jacobi_shared_kernel<32>);
      if (bytes > 48 * 1024) {
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(bytes)));
      }
      const int pairs = static_cast<int>((n + 1) / 2), pairs_per_warp = 32 / lanes;
      const int warps = (pairs + pairs_per_warp - 1) / pairs_per_warp;
      const int threads = 32 * std::max(1, std::min(warps, kMaxWarps));
      kernel<<<static_cast<unsigned>(batch), threads, bytes, stream>>>(
          src.data_ptr<double>(), cols.data_ptr<double>(), rotations.data_ptr<double>(), static_cast<int>(m),
          static_cast<int>(n), stats.data_ptr<int>());
    } else {
      cols = A.mT().contiguous();  // [batch, n, m]: columns contiguous
      jacobi_global_kernel<<<static_cast<unsigned>(batch), kGlobalThreads, 0, stream>>>(
          cols.data_ptr<double>(), rotations.data_ptr<double>(), static_cast<int>(m), static_cast<int>(n),
          stats.data_ptr<int>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    cols = at::empty({0, n, m}, A.options());
  }

  const auto sigma = cols.norm(2, -1);  // [batch, n]
  const auto order = std::get<1>(sigma.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true));
  S.copy_(sigma.gather(-1, order));
  const auto inv = at::where(S > 0, S.reciprocal(), at::zeros_like(S));
  const auto sorted_cols = cols.gather(1, order.unsqueeze(-1).expand({batch, n, m}));
  U.copy_((sorted_cols * inv.unsqueeze(-1)).mT());
  V.copy_(rotations.gather(1, order.unsqueeze(-1).expand({batch, n, n})).mT());
  const auto host_stats = stats.cpu();
  // UNISUB_JACOBI_TRACE=1 prints the sweep count, which benchmarks use to count the work done.
  if (std::getenv("UNISUB_JACOBI_TRACE") != nullptr) {
    std::fprintf(stderr, "unisub jacobi: batch %lld, %lld x %lld, %s memory, at most %d sweeps\n",
                 static_cast<long long>(batch), static_cast<long long>(m), static_cast<long long>(n),
                 shared_bytes_for(m, n) ? "shared" : "global", host_stats[1].item<int>());
  }
  return host_stats[0].item<int>() == 0;
}

}  // namespace unisub::detail
