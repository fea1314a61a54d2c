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

// Register blocks of the two products (TᵀT and T·V/σ): kBlockRows rows × kBlockCols columns of
// doubles, i.e. 4 × 2 AVX2 vectors, kept in registers across the whole inner loop. Column counts
// are padded to a multiple of kBlockCols with zeros.
constexpr int64_t kBlockCols = 8;
constexpr int64_t kBlockRows = 4;
constexpr int64_t kGramChunkRows = 32;  // rows of T converted to float64 at a time for the Gram
inline int64_t padded_cols(int64_t cols) { return (cols + kBlockCols - 1) / kBlockCols * kBlockCols; }

// Doubles of workspace gram_svd_one needs.
inline int64_t gram_svd_work_size(int64_t rows, int64_t cols) {
  const int64_t np = padded_cols(cols);
  return np * np + 4 * cols * cols + cols * np + 4 * cols + 2 * np + kGramChunkRows * np + rows * cols;
}

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

// Four doubles as one value (GCC/Clang vector extension): AVX2 registers in the AVX2 copy, pairs
// of SSE2 registers in the baseline one. The hot loops are written with it explicitly instead of
// relying on the auto-vectoriser, which spilled the register blocks to memory.
typedef double v4d __attribute__((vector_size(32)));
inline v4d load4(const double* p) {
  v4d r;
  __builtin_memcpy(&r, p, sizeof r);
  return r;
}
inline void store4(double* p, v4d v) { __builtin_memcpy(p, &v, sizeof v); }
inline v4d splat(double x) { return v4d{x, x, x, x}; }

// y += a·x
inline void axpy(double* y, double a, const double* x, int64_t n) {
  int64_t t = 0;
  const v4d va = splat(a);
  for (; t + 4 <= n; t += 4) store4(y + t, load4(y + t) + va * load4(x + t));
  for (; t < n; ++t) y[t] += a * x[t];
}
// y −= a·x + b·z
inline void sub_rank2(double* y, double a, const double* x, double b, const double* z, int64_t n) {
  int64_t t = 0;
  const v4d va = splat(a), vb = splat(b);
  for (; t + 4 <= n; t += 4) store4(y + t, load4(y + t) - (va * load4(x + t) + vb * load4(z + t)));
  for (; t < n; ++t) y[t] -= a * x[t] + b * z[t];
}
// (x, y) ← (c x − s y, s x + c y)
inline void rotate(double* x, double* y, double c, double s, int64_t n) {
  int64_t t = 0;
  const v4d vc = splat(c), vs = splat(s);
  for (; t + 4 <= n; t += 4) {
    const v4d a = load4(x + t), b = load4(y + t);
    store4(x + t, vc * a - vs * b);
    store4(y + t, vs * a + vc * b);
  }
  for (; t < n; ++t) {
    const double a = x[t], b = y[t];
    x[t] = c * a - s * b;
    y[t] = s * a + c * b;
  }
}

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

// Rows [i0, i0 + count) of T as float64 in X (count × np, the padding columns zero).
void load_rows(const GramSvdProblem& p, int64_t i0, int64_t count, int64_t np, double* X) {
  for (int64_t r = 0; r < count; ++r) {
    const float* a = p.a + (i0 + r) * p.a_rs;
    double* x = X + r * np;
    if (p.a_cs == 1) {
      for (int64_t j = 0; j < p.cols; ++j) x[j] = static_cast<double>(a[j]);
    } else {
      for (int64_t j = 0; j < p.cols; ++j) x[j] = static_cast<double>(a[j * p.a_cs]);
    }
    for (int64_t j = p.cols; j < np; ++j) x[j] = 0.0;
  }
}

// G = TᵀT (n × n). T is converted kGramChunkRows rows at a time; for each chunk every 4 × 8 block
// of Gp (np × np) on or above the diagonal accumulates in registers over the chunk's rows. The
// lower triangle is then mirrored, so G is exactly symmetric.
void gram(const GramSvdProblem& p, double* Gp, double* G, double* X) {
  const int64_t n = p.cols, np = padded_cols(n);
  for (int64_t t = 0; t < np * np; ++t) Gp[t] = 0.0;
  for (int64_t i0 = 0; i0 < p.rows; i0 += kGramChunkRows) {
    const int64_t count = p.rows - i0 < kGramChunkRows ? p.rows - i0 : kGramChunkRows;
    load_rows(p, i0, count, np, X);
    for (int64_t r0 = 0; r0 < n; r0 += kBlockRows) {  // r0 + kBlockRows ≤ np: np is a multiple of 8
      for (int64_t c0 = r0 / kBlockCols * kBlockCols; c0 < np; c0 += kBlockCols) {
        double* g = Gp + r0 * np + c0;
        v4d a00 = load4(g), a01 = load4(g + 4), a10 = load4(g + np), a11 = load4(g + np + 4);
        v4d a20 = load4(g + 2 * np), a21 = load4(g + 2 * np + 4), a30 = load4(g + 3 * np), a31 = load4(g + 3 * np + 4);
        for (int64_t t = 0; t < count; ++t) {
          const double* x = X + t * np;
          const v4d y0 = load4(x + c0), y1 = load4(x + c0 + 4);
          const v4d x0 = splat(x[r0]), x1 = splat(x[r0 + 1]), x2 = splat(x[r0 + 2]), x3 = splat(x[r0 + 3]);
          a00 += x0 * y0, a01 += x0 * y1, a10 += x1 * y0, a11 += x1 * y1;
          a20 += x2 * y0, a21 += x2 * y1, a30 += x3 * y0, a31 += x3 * y1;
        }
        store4(g, a00), store4(g + 4, a01), store4(g + np, a10), store4(g + np + 4, a11);
        store4(g + 2 * np, a20), store4(g + 2 * np + 4, a21), store4(g + 3 * np, a30), store4(g + 3 * np + 4, a31);
      }
    }
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) G[r * n + c] = c >= r ? Gp[r * np + c] : Gp[c * np + r];
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
    for (int64_t r = 0; r < len; ++r) axpy(pv, v[r], A22 + r * n, len);
    double pv_dot_v = 0.0;
    for (int64_t c = 0; c < len; ++c) {
      pv[c] *= tau[k];
      pv_dot_v += pv[c] * v[c];
    }
    const double half = 0.5 * tau[k] * pv_dot_v;
    for (int64_t c = 0; c < len; ++c) w[c] = pv[c] - half * v[c];
    // A₂₂ ← H A₂₂ H = A₂₂ − v wᵀ − w vᵀ
    for (int64_t r = 0; r < len; ++r) sub_rank2(A22 + r * n, v[r], w, w[r], v, len);
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
    for (int64_t i = 0; i < len; ++i) axpy(r, v[i], Q + (s + i) * n + s, len);
    for (int64_t i = 0; i < len; ++i) axpy(Q + (s + i) * n + s, -tau[k] * v[i], r, len);
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
        rotate(Zt + i * n, Zt + (i + 1) * n, c, s, n);
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

// Sign-rule bookkeeping: the first entry of largest magnitude of column c, on the values as
// written (after rounding), seen in increasing row order.
inline void track_pivot(double* best, double* pivot, int64_t c, float value) {
  const double x = static_cast<double>(value);
  const double ax = x < 0 ? -x : x;
  if (ax > best[c]) {
    best[c] = ax;
    pivot[c] = x;
  }
}

// The same on four columns at once: b, q hold best and pivot of the columns, a the new row values.
typedef float v4f __attribute__((vector_size(16)));
inline void track_pivots(v4d& b, v4d& q, v4d a) {
  const v4d x = __builtin_convertvector(__builtin_convertvector(a, v4f), v4d);
  const v4d ax = x < 0.0 ? -x : x;
  const auto gt = ax > b;
  b = gt ? ax : b;
  q = gt ? x : q;
}

inline void flip_columns(float* base, int64_t rows, int64_t rs, int64_t cs, int64_t k, const double* sign) {
  if (cs == 1) {
    for (int64_t i = 0; i < rows; ++i) {
      float* row = base + i * rs;
      for (int64_t c = 0; c < k; ++c) row[c] = sign[c] < 0.0 ? -row[c] : row[c];
    }
  } else if (cs <= rs) {
    for (int64_t i = 0; i < rows; ++i) {
      float* row = base + i * rs;
      for (int64_t c = 0; c < k; ++c) row[c * cs] = static_cast<float>(row[c * cs] * sign[c]);
    }
  } else {
    for (int64_t c = 0; c < k; ++c) {
      if (sign[c] > 0) continue;
      float* col = base + c * cs;
      for (int64_t i = 0; i < rows; ++i) col[i * rs] = -col[i * rs];
    }
  }
}

int gram_svd_one_impl(const GramSvdProblem& p, double* work) {
  const int64_t n = p.cols, m = p.rows, np = padded_cols(n), k = p.k;
  double* Gp = work;
  double* G = Gp + np * np;
  double* Zt = G + n * n;
  double* R = Zt + n * n;  // reflectors
  double* Q = R + n * n;
  double* Vs = Q + n * n;  // n × np: V diag(1/σ), zero padded
  double* d = Vs + n * np;
  double* e = d + n;
  double* tau = e + n;
  double* sv = tau + n;
  double* best = sv + n;
  double* pivot = best + np;  // best and pivot: np each (read and written 8 columns at a time)
  double* X = pivot + np;  // kGramChunkRows × np; also scratch vectors of the eigensolver
  double* Ut = X + kGramChunkRows * np;  // n × m, only when U is re-orthonormalised

  gram(p, Gp, G, X);
  for (int64_t c = 0; c < n; ++c)
    if (!std::isfinite(G[c * n + c])) return kGramSvdNonFinite;  // any NaN/inf in T reaches it

  tridiagonalize(G, n, d, e, R, tau, X, X + n);
  form_q_transposed(R, tau, n, Q, Zt, X);
  if (!tridiagonal_ql(d, e, n, Zt)) return kGramSvdNoConvergence;
  sort_descending(d, Zt, n);

  // Eigenvalues within rounding of zero (λ ≤ max(m, n) ε λ_max) carry no information about σ:
  // they become exact zeros, and their U columns are completed instead of amplified noise.
  const double lambda_max = d[0];
  const double floor = lambda_max * kEps * static_cast<double>(max_(m, n));
  for (int64_t c = 0; c < n; ++c) sv[c] = d[c] > floor ? std::sqrt(d[c]) : 0.0;
  if (p.min_ratio > 0.0 && sv[0] > 0.0 && sv[k - 1] < p.min_ratio * sv[0]) return kGramSvdIllConditioned;
  const double lambda_min = d[n - 1] > floor ? d[n - 1] : 0.0;
  const bool reortho = !(lambda_max > 0.0 && lambda_min >= lambda_max * p.reortho_lambda_ratio);

  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = n; c < np; ++c) Vs[j * np + c] = 0.0;
  for (int64_t c = 0; c < n; ++c) {
    const double inv = sv[c] > 0.0 ? 1.0 / sv[c] : 0.0;
    for (int64_t j = 0; j < n; ++j) Vs[j * np + c] = Zt[c * n + j] * inv;
  }
  for (int64_t c = 0; c < np; ++c) best[c] = pivot[c] = 0.0;
  const bool track_u = !p.sign_from_v;
  // U_T = T Vs, 4 rows × 8 columns at a time in registers.
  for (int64_t i0 = 0; i0 < m; i0 += kBlockRows) {
    const int64_t count = m - i0 < kBlockRows ? m - i0 : kBlockRows;
    load_rows(p, i0, count, np, X);
    for (int64_t t = count * np; t < kBlockRows * np; ++t) X[t] = 0.0;
    for (int64_t c0 = 0; c0 < n; c0 += kBlockCols) {
      v4d a00 = splat(0.0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
      for (int64_t j = 0; j < n; ++j) {
        const double* vs = Vs + j * np + c0;
        const v4d y0 = load4(vs), y1 = load4(vs + 4);
        const v4d x0 = splat(X[j]), x1 = splat(X[np + j]), x2 = splat(X[2 * np + j]), x3 = splat(X[3 * np + j]);
        a00 += x0 * y0, a01 += x0 * y1, a10 += x1 * y0, a11 += x1 * y1;
        a20 += x2 * y0, a21 += x2 * y1, a30 += x3 * y0, a31 += x3 * y1;
      }
      if (track_u && !reortho) {  // sign-rule pivots on the rounded values, rows in increasing order
        v4d b0 = load4(best + c0), b1 = load4(best + c0 + 4), q0 = load4(pivot + c0), q1 = load4(pivot + c0 + 4);
        track_pivots(b0, q0, a00), track_pivots(b1, q1, a01), track_pivots(b0, q0, a10), track_pivots(b1, q1, a11);
        track_pivots(b0, q0, a20), track_pivots(b1, q1, a21), track_pivots(b0, q0, a30), track_pivots(b1, q1, a31);
        store4(best + c0, b0), store4(best + c0 + 4, b1), store4(pivot + c0, q0), store4(pivot + c0 + 4, q1);
      }
      double acc[kBlockRows][kBlockCols];
      store4(acc[0], a00), store4(acc[0] + 4, a01), store4(acc[1], a10), store4(acc[1] + 4, a11);
      store4(acc[2], a20), store4(acc[2] + 4, a21), store4(acc[3], a30), store4(acc[3] + 4, a31);
      const int64_t width = (reortho ? n : k) - c0 < kBlockCols ? (reortho ? n : k) - c0 : kBlockCols;
      for (int64_t rr = 0; rr < count; ++rr) {
        const int64_t i = i0 + rr;
        if (reortho) {
          for (int64_t cc = 0; cc < width; ++cc) Ut[(c0 + cc) * m + i] = acc[rr][cc];
        } else {
          float* u = p.u + i * p.u_rs + c0 * p.u_cs;
          if (p.u_cs == 1) {
            for (int64_t cc = 0; cc < width; ++cc) u[cc] = static_cast<float>(acc[rr][cc]);
          } else {
            for (int64_t cc = 0; cc < width; ++cc) u[cc * p.u_cs] = static_cast<float>(acc[rr][cc]);
          }
        }
      }
    }
  }
  if (reortho) {
    orthonormalize_rows(Ut, n, m);
    for (int64_t i = 0; i < m; ++i) {
      float* u = p.u + i * p.u_rs;
      for (int64_t c = 0; c < k; ++c) {
        const float f = static_cast<float>(Ut[c * m + i]);
        u[c * p.u_cs] = f;
        if (track_u) track_pivot(best, pivot, c, f);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    float* v = p.v + j * p.v_rs;
    for (int64_t c = 0; c < k; ++c) {
      const float f = static_cast<float>(Zt[c * n + j]);
      v[c * p.v_cs] = f;
      if (!track_u) track_pivot(best, pivot, c, f);
    }
  }
  bool flip = false;
  double* sign = best;  // ±1 per column
  for (int64_t c = 0; c < k; ++c) {
    p.s[c] = static_cast<float>(sv[c]);
    sign[c] = pivot[c] < 0.0 ? -1.0 : 1.0;
    flip = flip || pivot[c] < 0.0;
  }
  if (flip) {
    flip_columns(p.u, m, p.u_rs, p.u_cs, k, sign);
    flip_columns(p.v, n, p.v_rs, p.v_cs, k, sign);
  }
  return kGramSvdOk;
}

}  // namespace
}  // namespace unisub::detail
#endif  // UNISUB_GRAM_SVD_KERNEL_BODY
