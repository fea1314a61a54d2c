// Eigenvalues of a symmetric tridiagonal matrix by implicit QR steps with Wilkinson's shift
// (Golub & Van Loan, "Matrix Computations", §8.3), no eigenvectors: O(n) per step and a few steps
// per eigenvalue, so O(n²) in all. The matched Gaussian null draws its Wishart sample in tridiagonal
// form (see gaussian_null), where a dense eigvalsh would spend O(n³) on a reduction it does not need.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "unisub/analysis.h"

namespace unisub::analysis {
namespace {

// One implicit QR step on the unreduced block [lo, hi] of (a, b): a the diagonal, b[k] the entry
// (k, k+1). The first rotation is that of T − μI's first column, μ the eigenvalue of the trailing
// 2 × 2 block nearer to a[hi]; the rest chase the bulge it makes down to the block's end.
void qr_step(std::vector<double>& a, std::vector<double>& b, int64_t lo, int64_t hi) {
  const double half_diff = (a[hi - 1] - a[hi]) / 2, tail = b[hi - 1];
  const double denom = half_diff + std::copysign(std::hypot(half_diff, tail), half_diff);
  const double mu = denom != 0 ? a[hi] - tail * tail / denom : a[hi] - std::abs(tail);
  double x = a[lo] - mu, z = b[lo];
  for (int64_t k = lo; k < hi; ++k) {
    // the rotation in the (k, k+1) plane taking (x, z) to (r, 0)
    const double r = std::hypot(x, z);
    const double c = r != 0 ? x / r : 1.0, s = r != 0 ? z / r : 0.0;
    if (k > lo) b[k - 1] = r;  // x was b[k-1], z the bulge at (k-1, k+1): the bulge is gone
    const double ak = a[k], ak1 = a[k + 1], bk = b[k];
    a[k] = c * c * ak + 2 * c * s * bk + s * s * ak1;
    a[k + 1] = s * s * ak - 2 * c * s * bk + c * c * ak1;
    b[k] = c * s * (ak1 - ak) + (c * c - s * s) * bk;
    if (k + 1 < hi) {
      // row k picks up s·b[k+1] at (k, k+2): the bulge the next rotation removes
      z = s * b[k + 1];
      b[k + 1] *= c;
      x = b[k];
    }
  }
}

}  // namespace

std::vector<double> symmetric_tridiagonal_eigenvalues(std::vector<double> a, std::vector<double> b) {
  const int64_t n = static_cast<int64_t>(a.size());
  TORCH_CHECK(n == 0 ? b.empty() : static_cast<int64_t>(b.size()) == n - 1,
              "unisub.symmetric_tridiagonal_eigenvalues: the off-diagonal must have n - 1 = ", n - 1,
              " entries, got ", b.size());
  for (double v : a) TORCH_CHECK(std::isfinite(v), "unisub.symmetric_tridiagonal_eigenvalues: diagonal not finite");
  for (double v : b) TORCH_CHECK(std::isfinite(v), "unisub.symmetric_tridiagonal_eigenvalues: off-diagonal not finite");
  constexpr double eps = std::numeric_limits<double>::epsilon();
  // an off-diagonal entry this small against its neighbours on the diagonal moves no eigenvalue by
  // more than eps·‖T‖: it is set to zero and the matrix splits there
  auto negligible = [&](int64_t k) {
    return std::abs(b[k]) <= eps * (std::abs(a[k]) + std::abs(a[k + 1])) || std::abs(b[k]) < 1e-300;
  };
  int64_t hi = n - 1, steps = 0;
  const int64_t max_steps = 40 * std::max<int64_t>(n, 1);
  while (hi > 0) {
    if (negligible(hi - 1)) {
      b[hi - 1] = 0;
      --hi;
      continue;
    }
    int64_t lo = hi - 1;
    while (lo > 0 && !negligible(lo - 1)) --lo;
    if (lo > 0) b[lo - 1] = 0;
    TORCH_CHECK(++steps <= max_steps, "unisub.symmetric_tridiagonal_eigenvalues: no convergence after ", max_steps,
                " QR steps (n = ", n, ")");
    qr_step(a, b, lo, hi);
  }
  std::sort(a.begin(), a.end(), std::greater<double>());
  return a;
}

}  // namespace unisub::analysis
