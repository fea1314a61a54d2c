// Preconditioned one-sided Jacobi SVD on the CPU, one matrix per task of a parallel loop.
//
// Why this shape: one-sided Jacobi computes every singular value to high *relative* accuracy
// when the matrix is a well-conditioned matrix scaled by diagonals. Sorting the rows by norm and
// taking a QR with column pivoting first (A Pc = Q R, after Pr A) lets Jacobi run on Rᵀ, which
// keeps that property for two-sided grading D₁ B D₂, and shrinks tall matrices to n × n.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "ops/svd.h"

namespace unisub::detail {
namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
constexpr int kMaxSweeps = 80;

inline double dot(const double* x, const double* y, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * y[i];
  return s;
}

inline void rotate(double* x, double* y, int64_t n, double c, double s) {
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i], yi = y[i];
    x[i] = c * xi - s * yi;
    y[i] = s * xi + c * yi;
  }
}

// Cyclic one-sided Jacobi on the columns of X (n × n, column-major), accumulating the rotations
// into V. Returns the sweeps used (kMaxSweeps + 1 when it did not converge).
int orthogonalize_columns(std::vector<double>& X, std::vector<double>& V, int64_t rows, int64_t n) {
  const double tol = std::max<double>(static_cast<double>(rows), 1.0) * kEps;
  for (int sweep = 1; sweep <= kMaxSweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p + 1 < n; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        double* xp = X.data() + p * rows;
        double* xq = X.data() + q * rows;
        const double alpha = dot(xp, xp, rows), beta = dot(xq, xq, rows);
        const double gamma = dot(xp, xq, rows);
        if (alpha == 0.0 || beta == 0.0 || std::abs(gamma) <= tol * std::sqrt(alpha) * std::sqrt(beta))
          continue;
        rotated = true;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = std::abs(zeta) > 1e150
                             ? 1.0 / (2.0 * zeta)
                             : std::copysign(1.0, zeta) / (std::abs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = c * t;
        rotate(xp, xq, rows, c, s);
        rotate(V.data() + p * n, V.data() + q * n, n, c, s);
      }
    }
    if (!rotated) return sweep;
  }
  return kMaxSweeps + 1;
}

// Householder QR with column pivoting of a (m × n, column-major, m ≥ n), in place: R in the upper
// triangle, reflectors below it (v₀ = 1 implicit), their scalars in tau; perm[j] = original column.
void pivoted_qr(std::vector<double>& a, int64_t m, int64_t n, std::vector<double>& tau,
                std::vector<int64_t>& perm) {
  std::iota(perm.begin(), perm.end(), 0);
  std::vector<double> norms(n);
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t j = k; j < n; ++j) {
      const double* col = a.data() + j * m + k;
      norms[j] = dot(col, col, m - k);
    }
    const int64_t pivot = k + (std::max_element(norms.begin() + k, norms.end()) - (norms.begin() + k));
    if (pivot != k) {
      std::swap_ranges(a.begin() + k * m, a.begin() + (k + 1) * m, a.begin() + pivot * m);
      std::swap(perm[k], perm[pivot]);
      std::swap(norms[k], norms[pivot]);
    }
    double* x = a.data() + k * m + k;
    const int64_t len = m - k;
    const double norm_x = std::sqrt(norms[k]);
    if (norm_x == 0.0) {
      tau[k] = 0.0;
      continue;
    }
    const double alpha = x[0] >= 0 ? -norm_x : norm_x;  // reflect away from x to avoid cancellation
    const double v0 = x[0] - alpha;
    for (int64_t i = 1; i < len; ++i) x[i] /= v0;
    tau[k] = -v0 / alpha;
    x[0] = alpha;
    for (int64_t j = k + 1; j < n; ++j) {  // apply I − τ v vᵀ to the remaining columns
      double* y = a.data() + j * m + k;
      double w = y[0];
      for (int64_t i = 1; i < len; ++i) w += x[i] * y[i];
      w *= tau[k];
      y[0] -= w;
      for (int64_t i = 1; i < len; ++i) y[i] -= w * x[i];
    }
  }
}

// Q·B for the thin Q of pivoted_qr, B (n × n, column-major) given; result m × n column-major.
std::vector<double> apply_q(const std::vector<double>& a, const std::vector<double>& tau, int64_t m,
                            int64_t n, const std::vector<double>& B) {
  std::vector<double> out(m * n, 0.0);
  for (int64_t j = 0; j < n; ++j) std::copy(B.begin() + j * n, B.begin() + (j + 1) * n, out.begin() + j * m);
  for (int64_t k = n - 1; k >= 0; --k) {
    if (tau[k] == 0.0) continue;
    const double* v = a.data() + k * m + k;
    for (int64_t j = 0; j < n; ++j) {
      double* y = out.data() + j * m + k;
      double w = y[0];
      for (int64_t i = 1; i < m - k; ++i) w += v[i] * y[i];
      w *= tau[k];
      y[0] -= w;
      for (int64_t i = 1; i < m - k; ++i) y[i] -= w * v[i];
    }
  }
  return out;
}

// One matrix: A (m × n, row-major input with m ≥ n) → U (m × n), S (n), V (n × n), sorted descending.
// Returns false if Jacobi did not converge.
bool jacobi_one(const double* A, int64_t m, int64_t n, double* U, double* S, double* V) {
  // Rows sorted by decreasing norm: with pivoted QR this makes the factorisation row-grading safe.
  std::vector<double> row_norm(m);
  for (int64_t i = 0; i < m; ++i) row_norm[i] = dot(A + i * n, A + i * n, n);
  std::vector<int64_t> row_perm(m);
  std::iota(row_perm.begin(), row_perm.end(), 0);
  std::stable_sort(row_perm.begin(), row_perm.end(),
                   [&](int64_t x, int64_t y) { return row_norm[x] > row_norm[y]; });
  std::vector<double> a(m * n);  // column-major, rows permuted
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) a[j * m + i] = A[row_perm[i] * n + j];

  std::vector<double> tau(n);
  std::vector<int64_t> col_perm(n);
  pivoted_qr(a, m, n, tau, col_perm);

  // X = Rᵀ, column-major: column j of X is row j of R.
  std::vector<double> X(n * n, 0.0), W(n * n, 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = j; i < n; ++i) X[j * n + i] = a[i * m + j];
  for (int64_t j = 0; j < n; ++j) W[j * n + j] = 1.0;
  const bool converged = orthogonalize_columns(X, W, n, n) <= kMaxSweeps;

  // Rᵀ W = X  ⇒  R = W Σ Uxᵀ with Ux = X Σ⁻¹;  A = Prᵀ Q W Σ (Pc Ux)ᵀ.
  std::vector<double> sigma(n);
  for (int64_t j = 0; j < n; ++j) sigma[j] = std::sqrt(dot(X.data() + j * n, X.data() + j * n, n));
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return sigma[x] > sigma[y]; });

  const auto QW = apply_q(a, tau, m, n, W);  // m × n column-major
  for (int64_t k = 0; k < n; ++k) {
    const int64_t j = order[k];
    S[k] = sigma[j];
    for (int64_t i = 0; i < m; ++i) U[row_perm[i] * n + k] = QW[j * m + i];
    const double inv = sigma[j] > 0 ? 1.0 / sigma[j] : 0.0;  // zero columns are completed later
    for (int64_t i = 0; i < n; ++i) V[col_perm[i] * n + k] = X[j * n + i] * inv;
  }
  return converged;
}

}  // namespace

bool jacobi_svd_cpu(const at::Tensor& A, at::Tensor& U, at::Tensor& S, at::Tensor& V) {
  TORCH_INTERNAL_ASSERT(A.scalar_type() == at::kDouble && A.is_contiguous() && A.dim() == 3);
  const int64_t batch = A.size(0), m = A.size(1), n = A.size(2);
  TORCH_INTERNAL_ASSERT(m >= n);
  const double* a = A.const_data_ptr<double>();
  double* u = U.data_ptr<double>();
  double* s = S.data_ptr<double>();
  double* v = V.data_ptr<double>();
  std::atomic<bool> all_converged{true};
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (!jacobi_one(a + b * m * n, m, n, u + b * m * n, s + b * n, v + b * n * n))
        all_converged = false;
    }
  });
  return all_converged;
}

}  // namespace unisub::detail
