#pragma once
// The fused Gram-route SVD of one float32 matrix (see gram_svd_cpu.h for why and when). Plain C++
// on raw pointers and no library headers: this header is compiled twice, once for baseline
// x86-64 (gram_svd_kernel_generic.cpp) and once with AVX2 + FMA (gram_svd_kernel_avx2.cpp), and
// the driver picks one at run time. Everything here has internal linkage, so the two copies can
// never be mixed up by the linker (an AVX2 copy of a shared inline function would crash on an
// older CPU).
//
// Every inner loop runs over contiguous memory with independent lanes (axpy form, no floating-point
// reductions), which is what lets the compiler vectorise them without -ffast-math.
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace unisub::detail {

// One matrix in its tall orientation T (rows ≥ cols): T(i, j) = a[i * a_rs + j * a_cs]. For A with
// m ≥ n, T = A; for a wide A, T = Aᵀ (and then T's right vectors are A's left ones).
struct GramSvdProblem {
  int64_t rows = 0, cols = 0;
  const float* a = nullptr;
  int64_t a_rs = 0, a_cs = 0;
  int64_t k = 0;  // triplets written, 1 ≤ k ≤ cols
  float* u = nullptr;  // T's left vectors: U_T(i, c) = u[i * u_rs + c * u_cs], i < rows, c < k
  int64_t u_rs = 0, u_cs = 0;
  float* v = nullptr;  // T's right vectors: V_T(j, c) = v[j * v_rs + c * v_cs], j < cols, c < k
  int64_t v_rs = 0, v_cs = 0;
  float* s = nullptr;  // k singular values, descending
  bool sign_from_v = false;  // A's left vectors are V_T (wide A): the sign rule looks at V_T
  double min_ratio = 0.0;     // give up (kIllConditioned) when σ_k < min_ratio · σ_1 (0: never)
  double reortho_lambda_ratio = 0.0;  // re-orthonormalise U_T unless λ_min ≥ this · λ_max
};

enum GramSvdStatus : int { kGramSvdOk = 0, kGramSvdIllConditioned = 1, kGramSvdNoConvergence = 2, kGramSvdNonFinite = 3 };

// Doubles of workspace gram_svd_one needs.
inline int64_t gram_svd_work_size(int64_t rows, int64_t cols) { return 4 * cols * cols + 8 * cols + rows * cols; }

// The two compiled copies (one per instruction set) of the same code.
int gram_svd_one_generic(const GramSvdProblem& p, double* work);
int gram_svd_one_avx2(const GramSvdProblem& p, double* work);
bool gram_svd_avx2_compiled();

}  // namespace unisub::detail

#ifdef UNISUB_GRAM_SVD_KERNEL_BODY
namespace unisub::detail {
namespace {

constexpr double kEps = 2.220446049250313e-16;  // double's machine epsilon
constexpr int kMaxQlIterations = 30;             // per eigenvalue; classical QL needs 1-2 on average

inline double abs_(double x) { return x < 0 ? -x : x; }
inline int64_t max_(int64_t a, int64_t b) { return a < b ? b : a; }

// √(x² + y²) without overflow for the magnitudes a float32 Gram can reach (|x| up to ~1e82) and
// the shift quotient, which can be much larger.
inline double hypot_(double x, double y) {
  const double ax = abs_(x), ay = abs_(y);
  const double big = ax < ay ? ay : ax, small = ax < ay ? ax : ay;
  if (big == 0.0) return 0.0;
  if (big > 1e150 || big < 1e-150) {
    const double q = small / big;
    return big * std::sqrt(1.0 + q * q);
  }
  return std::sqrt(x * x + y * y);
}

inline void load_row(const GramSvdProblem& p, int64_t i, double* x) {
  const float* a = p.a + i * p.a_rs;
  for (int64_t j = 0; j < p.cols; ++j) x[j] = static_cast<double>(a[j * p.a_cs]);
}

// G = TᵀT (full, bit-symmetric: G[p][q] and G[q][p] see the same products in the same order),
// four rows per pass over G so that G's rows are loaded and stored a quarter as often.
void gram(const GramSvdProblem& p, double* G, double* x4) {
  const int64_t n = p.cols;
  for (int64_t t = 0; t < n * n; ++t) G[t] = 0.0;
  int64_t i = 0;
  double* x0 = x4;
  double* x1 = x4 + n;
  double* x2 = x4 + 2 * n;
  double* x3 = x4 + 3 * n;
  for (; i + 4 <= p.rows; i += 4) {
    load_row(p, i, x0);
    load_row(p, i + 1, x1);
    load_row(p, i + 2, x2);
    load_row(p, i + 3, x3);
    for (int64_t r = 0; r < n; ++r) {
      double* g = G + r * n;
      const double a0 = x0[r], a1 = x1[r], a2 = x2[r], a3 = x3[r];
      for (int64_t c = 0; c < n; ++c) g[c] += a0 * x0[c] + a1 * x1[c] + a2 * x2[c] + a3 * x3[c];
    }
  }
  for (; i < p.rows; ++i) {
    load_row(p, i, x0);
    for (int64_t r = 0; r < n; ++r) {
      double* g = G + r * n;
      const double a0 = x0[r];
      for (int64_t c = 0; c < n; ++c) g[c] += a0 * x0[c];
    }
  }
}

// Householder reduction of the symmetric G (n × n, full storage, overwritten) to tridiagonal
// form QᵀGQ = tridiag(e, d, e). Step k reflects rows/columns k+1.. with H = I − τ v vᵀ (v[k+1] = 1),
// stored in row k of R and tau[k]. Every update is a row axpy over the trailing block.
void tridiagonalize(double* G, int64_t n, double* d, double* e, double* R, double* tau, double* pv, double* w) {
  for (int64_t k = 0; k + 2 < n; ++k) {
    double* x = G + k * n + (k + 1);  // row k right of the diagonal = column k below it
    const int64_t len = n - k - 1;
    double* v = R + k * n + (k + 1);
    double xnorm2 = 0.0;
    for (int64_t t = 1; t < len; ++t) xnorm2 += x[t] * x[t];
    const double alpha = x[0];
    d[k] = G[k * n + k];
    if (xnorm2 == 0.0) {
      tau[k] = 0.0;
      e[k] = alpha;
      continue;
    }
    const double beta = -std::copysign(std::sqrt(alpha * alpha + xnorm2), alpha);
    tau[k] = (beta - alpha) / beta;
    const double scale = 1.0 / (alpha - beta);
    v[0] = 1.0;
    for (int64_t t = 1; t < len; ++t) v[t] = x[t] * scale;
    e[k] = beta;
    // p = τ A₂₂ v as a combination of A₂₂'s rows (A₂₂ is symmetric): no reductions.
    double* A22 = G + (k + 1) * n + (k + 1);
    for (int64_t c = 0; c < len; ++c) pv[c] = 0.0;
    for (int64_t r = 0; r < len; ++r) {
      const double vr = v[r];
      const double* row = A22 + r * n;
      for (int64_t c = 0; c < len; ++c) pv[c] += vr * row[c];
    }
    double pv_dot_v = 0.0;
    for (int64_t c = 0; c < len; ++c) {
      pv[c] *= tau[k];
      pv_dot_v += pv[c] * v[c];
    }
    const double half = 0.5 * tau[k] * pv_dot_v;
    for (int64_t c = 0; c < len; ++c) w[c] = pv[c] - half * v[c];
    // A₂₂ ← H A₂₂ H = A₂₂ − v wᵀ − w vᵀ
    for (int64_t r = 0; r < len; ++r) {
      double* row = A22 + r * n;
      const double vr = v[r], wr = w[r];
      for (int64_t c = 0; c < len; ++c) row[c] -= vr * w[c] + wr * v[c];
    }
  }
  if (n >= 2) {
    d[n - 2] = G[(n - 2) * n + (n - 2)];
    e[n - 2] = G[(n - 2) * n + (n - 1)];
  }
  d[n - 1] = G[(n - 1) * n + (n - 1)];
  e[n - 1] = 0.0;
}

// Q = H₀ H₁ … (backward accumulation: each reflector touches only the trailing block that is
// not yet the identity), row-major in Q; then Zt = Qᵀ, whose rows are the eigenvector candidates.
void form_q_transposed(const double* R, const double* tau, int64_t n, double* Q, double* Zt, double* r) {
  for (int64_t t = 0; t < n * n; ++t) Q[t] = 0.0;
  for (int64_t t = 0; t < n; ++t) Q[t * n + t] = 1.0;
  for (int64_t k = n - 3; k >= 0; --k) {
    if (tau[k] == 0.0) continue;
    const int64_t s = k + 1, len = n - s;
    const double* v = R + k * n + s;
    for (int64_t c = 0; c < len; ++c) r[c] = 0.0;
    for (int64_t i = 0; i < len; ++i) {
      const double vi = v[i];
      const double* row = Q + (s + i) * n + s;
      for (int64_t c = 0; c < len; ++c) r[c] += vi * row[c];
    }
    for (int64_t i = 0; i < len; ++i) {
      const double f = tau[k] * v[i];
      double* row = Q + (s + i) * n + s;
      for (int64_t c = 0; c < len; ++c) row[c] -= f * r[c];
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) Zt[j * n + i] = Q[i * n + j];
}

// Implicit QL with Wilkinson-type shifts on tridiag(e, d, e); each plane rotation is applied to two
// rows of Zt (contiguous, vectorised). On return d holds the eigenvalues and row c of Zt the
// eigenvector of d[c]. False when some eigenvalue needed more than kMaxQlIterations.
bool tridiagonal_ql(double* d, double* e, int64_t n, double* Zt) {
  for (int64_t l = 0; l < n; ++l) {
    int iterations = 0;
    for (;;) {
      int64_t m = l;
      for (; m + 1 < n; ++m) {
        if (abs_(e[m]) <= kEps * (abs_(d[m]) + abs_(d[m + 1]))) break;
      }
      if (m == l) break;
      if (++iterations > kMaxQlIterations) return false;
      double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
      double r = hypot_(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
      double s = 1.0, c = 1.0, p = 0.0;
      bool restarted = false;
      for (int64_t i = m - 1; i >= l; --i) {
        const double f = s * e[i], b = c * e[i];
        r = hypot_(f, g);
        e[i + 1] = r;
        if (r == 0.0) {  // the rotation underflowed: split here and start over
          d[i + 1] -= p;
          e[m] = 0.0;
          restarted = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2.0 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        double* zi = Zt + i * n;
        double* zj = Zt + (i + 1) * n;
        for (int64_t t = 0; t < n; ++t) {
          const double a = zi[t], bb = zj[t];
          zj[t] = s * a + c * bb;
          zi[t] = c * a - s * bb;
        }
      }
      if (restarted) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0.0;
    }
  }
  return true;
}

// Eigenpairs in descending order of eigenvalue (selection sort: n swaps of contiguous rows at most).
void sort_descending(double* d, double* Zt, int64_t n) {
  for (int64_t i = 0; i + 1 < n; ++i) {
    int64_t best = i;
    for (int64_t j = i + 1; j < n; ++j)
      if (d[j] > d[best]) best = j;
    if (best == i) continue;
    const double t = d[i];
    d[i] = d[best];
    d[best] = t;
    double* a = Zt + i * n;
    double* b = Zt + best * n;
    for (int64_t c = 0; c < n; ++c) {
      const double x = a[c];
      a[c] = b[c];
      b[c] = x;
    }
  }
}

inline double dot(const double* x, const double* y, int64_t n) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) acc[l] += x[i + l] * y[i + l];
  for (; i < n; ++i) acc[0] += x[i] * y[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// x ← x − Σ_{j<c} (q_jᵀx) q_j over the rows q_j of Q (length len).
inline void project_out(const double* Q, int64_t c, int64_t len, double* x) {
  for (int64_t j = 0; j < c; ++j) {
    const double* q = Q + j * len;
    const double h = dot(q, x, len);
    for (int64_t t = 0; t < len; ++t) x[t] -= h * q[t];
  }
}

// Rows of Ut (cols × len) made orthonormal in order by Gram-Schmidt with re-orthogonalisation
// ("twice is enough", repeated while a pass still removes more than half the norm). A row that
// is zero or lies in the span of the earlier ones is replaced by the first unit vector e_t whose
// remaining part holds at least half the average norm² of the complement (one exists), so the
// rows complete an orthonormal basis. Rows keep their direction: Q's row c has a positive
// product with the original row c, as the QR in orthonormal_completion gives.
void orthonormalize_rows(double* Ut, int64_t cols, int64_t len) {
  for (int64_t c = 0; c < cols; ++c) {
    double* x = Ut + c * len;
    double before = std::sqrt(dot(x, x, len));
    bool independent = false;
    if (before > 0.0) {
      for (int pass = 0; pass < 4; ++pass) {
        project_out(Ut, c, len, x);
        const double after = std::sqrt(dot(x, x, len));
        if (after == 0.0) break;
        if (pass >= 1 && after >= 0.5 * before) {
          independent = true;
          break;
        }
        before = after;
      }
    }
    if (!independent) {
      const double want = 0.5 * static_cast<double>(len - c) / static_cast<double>(len);
      for (int64_t t = 0; t < len; ++t) {
        for (int64_t i = 0; i < len; ++i) x[i] = i == t ? 1.0 : 0.0;
        project_out(Ut, c, len, x);
        project_out(Ut, c, len, x);
        if (dot(x, x, len) >= want) break;
      }
    }
    const double inv = 1.0 / std::sqrt(dot(x, x, len));
    for (int64_t t = 0; t < len; ++t) x[t] *= inv;
  }
}

// The sign rule on the values as they were written (the first entry of largest magnitude of each
// of A's left vectors is positive), flipping the matching vector on the other side with it.
void apply_signs(const GramSvdProblem& p) {
  const float* base = p.sign_from_v ? p.v : p.u;
  const int64_t len = p.sign_from_v ? p.cols : p.rows;
  const int64_t rs = p.sign_from_v ? p.v_rs : p.u_rs, cs = p.sign_from_v ? p.v_cs : p.u_cs;
  for (int64_t c = 0; c < p.k; ++c) {
    float best = 0.0f, pivot = 0.0f;
    for (int64_t i = 0; i < len; ++i) {
      const float x = base[i * rs + c * cs];
      const float ax = x < 0 ? -x : x;
      if (ax > best) {
        best = ax;
        pivot = x;
      }
    }
    if (!(pivot < 0.0f)) continue;
    for (int64_t i = 0; i < p.rows; ++i) p.u[i * p.u_rs + c * p.u_cs] = -p.u[i * p.u_rs + c * p.u_cs];
    for (int64_t j = 0; j < p.cols; ++j) p.v[j * p.v_rs + c * p.v_cs] = -p.v[j * p.v_rs + c * p.v_cs];
  }
}

int gram_svd_one_impl(const GramSvdProblem& p, double* work) {
  const int64_t n = p.cols, m = p.rows;
  double* G = work;
  double* Zt = G + n * n;
  double* R = Zt + n * n;  // reflectors; reused for V/σ (row-major, Vs[j][c]) afterwards
  double* Q = R + n * n;
  double* d = Q + n * n;
  double* e = d + n;
  double* tau = e + n;
  double* sv = tau + n;
  double* x4 = sv + n;  // 4n: four rows of T; also the tridiagonalisation's p and w
  double* Ut = x4 + 4 * n;  // n × m, only when U is re-orthonormalised

  gram(p, G, x4);
  for (int64_t c = 0; c < n; ++c)
    if (!std::isfinite(G[c * n + c])) return kGramSvdNonFinite;  // any NaN/inf in T reaches it

  tridiagonalize(G, n, d, e, R, tau, x4, x4 + n);
  form_q_transposed(R, tau, n, Q, Zt, x4);
  if (!tridiagonal_ql(d, e, n, Zt)) return kGramSvdNoConvergence;
  sort_descending(d, Zt, n);

  // Eigenvalues within rounding of zero (λ ≤ max(m, n) ε λ_max) carry no information about σ:
  // they become exact zeros, and their U columns are completed instead of amplified noise.
  const double lambda_max = d[0];
  const double floor = lambda_max * kEps * static_cast<double>(max_(m, n));
  for (int64_t c = 0; c < n; ++c) sv[c] = d[c] > floor ? std::sqrt(d[c]) : 0.0;
  if (p.min_ratio > 0.0 && sv[0] > 0.0 && sv[p.k - 1] < p.min_ratio * sv[0]) return kGramSvdIllConditioned;
  const double lambda_min = d[n - 1] > floor ? d[n - 1] : 0.0;
  const bool reortho = !(lambda_max > 0.0 && lambda_min >= lambda_max * p.reortho_lambda_ratio);

  // Vs = V diag(1/σ) row-major (Vs[j][c] = Zt[c][j] / σ_c; 0 for σ = 0).
  double* Vs = R;
  for (int64_t c = 0; c < n; ++c) {
    const double inv = sv[c] > 0.0 ? 1.0 / sv[c] : 0.0;
    for (int64_t j = 0; j < n; ++j) Vs[j * n + c] = Zt[c * n + j] * inv;
  }
  // U_T = T Vs, one row at a time: u = Σ_j T(i, j) Vs[j][:].
  double* x = x4;
  double* acc = x4 + n;
  for (int64_t i = 0; i < m; ++i) {
    load_row(p, i, x);
    for (int64_t c = 0; c < n; ++c) acc[c] = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      const double xj = x[j];
      const double* vs = Vs + j * n;
      for (int64_t c = 0; c < n; ++c) acc[c] += xj * vs[c];
    }
    if (reortho) {
      for (int64_t c = 0; c < n; ++c) Ut[c * m + i] = acc[c];
    } else {
      float* u = p.u + i * p.u_rs;
      for (int64_t c = 0; c < p.k; ++c) u[c * p.u_cs] = static_cast<float>(acc[c]);
    }
  }
  if (reortho) {
    orthonormalize_rows(Ut, n, m);
    for (int64_t c = 0; c < p.k; ++c) {
      const double* src = Ut + c * m;
      for (int64_t i = 0; i < m; ++i) p.u[i * p.u_rs + c * p.u_cs] = static_cast<float>(src[i]);
    }
  }
  for (int64_t c = 0; c < p.k; ++c) {
    const double* z = Zt + c * n;
    for (int64_t j = 0; j < n; ++j) p.v[j * p.v_rs + c * p.v_cs] = static_cast<float>(z[j]);
    p.s[c] = static_cast<float>(sv[c]);
  }
  apply_signs(p);
  return kGramSvdOk;
}

}  // namespace
}  // namespace unisub::detail
#endif  // UNISUB_GRAM_SVD_KERNEL_BODY
