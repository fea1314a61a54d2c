// mode_svd and hosvd: leading singular vectors of mode unfoldings of a model stack, by the float64
// Gram + eigh, or by a randomized sketch that touches X only through products with thin matrices
// (the unfolding and its Gram are never formed).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <numeric>

#include "ops/checks.h"
#include "ops/decompositions.h"
#include "ops/matrix_checks.h"
#include "ops/square_range.h"
#include "ops/svd.h"
#include "unisub/analysis.h"
#include "unisub/decompositions.h"

namespace unisub::detail {
namespace {

constexpr uint64_t kSketchSeed = 0x6d6f64655f737664ULL;
// `auto` sketches only when the Gram would be large and few components are wanted.
constexpr int64_t kAutoSketchMinRows = 512;
// Peak extra memory of one block of the sketch products.
constexpr int64_t kSketchBlockBytes = 64LL << 20;

// X_c,(dim) seen as X3[outer, d, inner] minus mean3[o % period, r or 0, i] (see Unfolding). X3
// keeps X's dtype; each block is converted and centred before it is multiplied, so a large
// common offset cancels in the subtraction, not in the products.
struct CentredUnfolding {
  at::Tensor X3, mean3;  // mean3: float64, undefined when not centred
  Unfolding u;

  int64_t block_outer() const {
    const int64_t per = std::max<int64_t>(1, u.rows * u.inner * 8);
    return std::max<int64_t>(1, kSketchBlockBytes / per);
  }

  at::Tensor block(int64_t o0, int64_t n, at::ScalarType dtype) const {
    auto b = X3.narrow(0, o0, n).to(dtype);
    if (!mean3.defined()) return b;
    const auto which = at::arange(o0, o0 + n, at::TensorOptions().dtype(at::kLong).device(X3.device()))
                           .remainder(u.period);
    return b - mean3.index_select(0, which).to(dtype);
  }

  // X_c,(dim) · Ω for Ω [outer, inner, s]  →  [d, s]
  at::Tensor times(const at::Tensor& omega) const {
    auto Y = at::zeros({u.rows, omega.size(2)}, omega.options());
    const int64_t blk = block_outer();
    for (int64_t o0 = 0; o0 < u.outer; o0 += blk) {
      const int64_t n = std::min(blk, u.outer - o0);
      Y.add_(at::einsum("odi,ois->ds", {block(o0, n, omega.scalar_type()), omega.narrow(0, o0, n)}));
    }
    return Y;
  }

  // X_c,(dim)ᵀ · Q for Q [d, s]  →  [outer, inner, s]
  at::Tensor transposed_times(const at::Tensor& Q) const {
    auto Z = at::empty({u.outer, u.inner, Q.size(1)}, Q.options());
    const int64_t blk = block_outer();
    for (int64_t o0 = 0; o0 < u.outer; o0 += blk) {
      const int64_t n = std::min(blk, u.outer - o0);
      Z.narrow(0, o0, n).copy_(at::einsum("odi,ds->ois", {block(o0, n, Q.scalar_type()), Q}));
    }
    return Z;
  }
};

at::Tensor orthonormal_basis(const at::Tensor& Y) { return std::get<0>(at::linalg_qr(Y)); }

int64_t sketch_width(const CentredUnfolding& cu, int64_t k) {
  return std::min(k + kSketchOversample, std::min(cu.u.rows, cu.u.columns()));
}

at::Tensor gaussian_start(const CentredUnfolding& cu, int64_t s, at::ScalarType dtype) {
  auto gen = at::detail::createCPUGenerator(kSketchSeed);
  return at::randn({cu.u.outer, cu.u.inner, s}, gen, at::TensorOptions().dtype(at::kDouble))
      .to(cu.X3.options().dtype(dtype));
}

// method="randomized": a fixed number of power iterations, approximate (docs/decompositions.md).
std::tuple<at::Tensor, at::Tensor> sketched_leading(const CentredUnfolding& cu, int64_t k, at::ScalarType dtype) {
  const int64_t width = cu.u.columns(), s = sketch_width(cu, k);
  auto Q = orthonormal_basis(cu.times(gaussian_start(cu, s, dtype)));
  for (int it = 0; it < kSketchPowerIterations; ++it) {  // re-orthonormalised every half step
    const auto Z = orthonormal_basis(cu.transposed_times(Q).reshape({width, -1}));
    Q = orthonormal_basis(cu.times(Z.reshape({cu.u.outer, cu.u.inner, -1})));
  }
  // X_cᵀQ = Uz Sz Vzᵀ  ⇒  X_c ≈ Q Vz Sz Uzᵀ.
  auto [Uz, Sz, Vzh] = at::linalg_svd(cu.transposed_times(Q).reshape({width, -1}), /*full_matrices=*/false);
  return {at::matmul(Q, Vzh.mT()).narrow(1, 0, k), Sz.narrow(0, 0, k)};
}

// method="auto": subspace iteration on H = X_c X_cᵀ in float64 with a Rayleigh–Ritz step, kept
// only with an a-posteriori certificate. For a unit Ritz vector q with value θ and residual
// ρ = ‖Hq − θq‖, some eigenvalue of H lies within ρ of θ; each of the k kept pairs must have
// ρ ≤ kCertifiedRelativeError·θ, or ρ within the Gram route's own resolution (ε·max(d, columns)·λ₁).
// A spectrum whose tail does not fall away from the kept values (a flat noise floor, a cluster
// at the cut) never meets it within the budget, and the caller takes the exact Gram route.
// The budget keeps a failed attempt below about half the cost of that Gram.
constexpr double kCertifiedRelativeError = 1e-10;

std::optional<std::tuple<at::Tensor, at::Tensor>> certified_leading(const CentredUnfolding& cu, int64_t k) {
  // Half again as many columns as kept: residuals shrink by about (λ_{s+1}/λ_j) per iteration, and
  // on a LoRA-like 500 × 16 × 4096 stack at k = 32 this certifies in 4 iterations instead of 7
  // with k + 10 columns, 30 % fewer multiply-adds in all.
  const int64_t d = cu.u.rows, width = cu.u.columns();
  const int64_t s = std::min(std::max(k + kSketchOversample, k + k / 2), std::min(d, width));
  // Each pass over X costs d·width·s multiply-adds; the Gram costs d²·width / 2.
  const int64_t budget = std::max<int64_t>(2, (d / (4 * s) - 1) / 2);
  const double eps = std::numeric_limits<double>::epsilon();
  auto Q = orthonormal_basis(cu.times(gaussian_start(cu, s, at::kDouble)));
  double last_worst = std::numeric_limits<double>::infinity();
  for (int64_t it = 1; it <= budget; ++it) {
    const auto Y = cu.times(cu.transposed_times(Q));  // H Q
    auto T = at::matmul(Q.mT(), Y);
    auto [theta, W] = at::linalg_eigh((T + T.mT()) * 0.5);
    theta = theta.flip(0);
    W = W.flip(1);
    const auto ritz = at::matmul(Q, W);
    const auto rho = at::linalg_vector_norm(at::matmul(Y, W) - ritz * theta.unsqueeze(0), 2, {0});
    const auto lambda1 = theta.narrow(0, 0, 1).clamp_min(0);
    const auto resolution = lambda1 * (eps * static_cast<double>(std::max(d, width)));
    const auto allowed = at::maximum(theta.narrow(0, 0, k).clamp_min(0) * kCertifiedRelativeError, resolution);
    const double worst = (rho.narrow(0, 0, k) / allowed).max().item<double>();
    if (worst <= 1.0) {
      auto lambda = theta.narrow(0, 0, k);
      lambda = at::where(lambda > resolution, lambda, at::zeros_like(lambda));  // as the Gram route does
      return std::tuple{ritz.narrow(1, 0, k), lambda.sqrt()};
    }
    // Residuals shrink geometrically while the tail falls away; stop early when the rate seen
    // cannot reach the target within the budget.
    const double rate = worst / last_worst;
    if (it >= 2 && (!(rate < 1.0) || worst * std::pow(rate, static_cast<double>(budget - it)) > 1.0)) break;
    last_worst = worst;
    Q = orthonormal_basis(Y);
  }
  return std::nullopt;
}

double centred_energy(const at::Tensor& X, const std::optional<at::Tensor>& mean) {
  const int64_t models = X.size(0);
  const auto flat = X.reshape({models, -1});
  const int64_t blk = std::max<int64_t>(1, kSketchBlockBytes / std::max<int64_t>(1, 8 * flat.size(1)));
  double total = 0.0;
  for (int64_t m0 = 0; m0 < models; m0 += blk) {
    auto part = flat.narrow(0, m0, std::min(blk, models - m0)).to(at::kDouble);
    if (mean) part = part - mean->reshape({1, -1});
    total += part.square().sum().item<double>();
  }
  return total;
}

int64_t components_for_energy(const at::Tensor& lambda, double total, double energy) {
  // The analysis job's one rule (unisub/analysis.h): reaching τ within 8·d·ε counts as reaching it;
  // a zero stack keeps one direction.
  return unisub::analysis::rank_for_energy(lambda, energy, total);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> mode_svd_impl(const at::Tensor& X_in, int64_t dim, int64_t rank,
                                                 double energy, bool center, std::string_view method_name,
                                                 const GramKernels& kernels) {
  constexpr std::string_view op = "mode_svd";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_stack(X_in, op);
  dim = wrap_dim(dim, X_in.dim(), op, "dim");
  const Unfolding u = describe_unfolding(X_in, dim);
  const int64_t full = std::min(u.rows, u.columns());
  TORCH_CHECK(full > 0, "unisub.mode_svd: the mode-", dim, " unfolding of X (shape ", X_in.sizes(), ") is empty");
  TORCH_CHECK(rank == -1 || (rank > 0 && rank <= full), "unisub.mode_svd: rank must be -1 or in [1, ", full,
              "] = [1, min(d_dim, product of the other dims)], got ", rank);
  TORCH_CHECK(energy == 0.0 || (energy > 0.0 && energy <= 1.0),
              "unisub.mode_svd: energy must be 0 (off) or in (0, 1], got ", energy);
  const SvdMethod method = parse_svd_method(method_name, op);
  TORCH_CHECK(method == SvdMethod::Auto || method == SvdMethod::Gram || method == SvdMethod::Randomized,
              "unisub.mode_svd: method must be 'auto', 'gram' or 'randomized', got '", method_name, "'");
  TORCH_CHECK(method != SvdMethod::Randomized || rank > 0,
              "unisub.mode_svd: method='randomized' needs a rank in [1, ", full, "], got rank = ", rank);
  check_finite(X_in, op, "X");
  const auto out_dtype = result_dtype(X_in);
  const auto [X, exponent] = into_square_range(X_in);  // S is scaled back at the end

  // auto sketches only when the Gram would be large and few components are wanted, and keeps
  // the sketch only when certified_leading can vouch for it.
  const bool try_sketch = method == SvdMethod::Randomized ||
                          (method == SvdMethod::Auto && rank > 0 && u.rows >= kAutoSketchMinRows &&
                           rank + kSketchOversample <= u.rows / 4);
  at::Tensor U, S;
  std::optional<std::tuple<at::Tensor, at::Tensor>> sketched;
  std::optional<at::Tensor> mean;
  if (try_sketch) {
    CentredUnfolding cu{X.reshape({u.outer, u.rows, u.inner}), at::Tensor(), u};
    if (center) {
      mean = model_mean_for_pack(X, u, kernels);
      cu.mean3 = *mean;
    }
    sketched = method == SvdMethod::Randomized ? sketched_leading(cu, rank, out_dtype) : certified_leading(cu, rank);
  }
  if (sketched) {
    std::tie(U, S) = *sketched;
    U = U.to(at::kDouble);
    S = S.to(at::kDouble);
    if (energy > 0) {
      const int64_t r = components_for_energy(S.square(), centred_energy(X, mean), energy);
      U = U.narrow(1, 0, r);
      S = S.narrow(0, 0, r);
    }
  } else {
    const auto G = gram_f64(X, dim, center, kernels);
    auto [lambda, V] = at::linalg_eigh(G);
    lambda = lambda.flip(0);
    V = V.flip(1);
    // As in svd's Gram route: eigenvalues within rounding of zero are zero.
    const double floor = std::numeric_limits<double>::epsilon() * static_cast<double>(u.rows);
    lambda = at::where(lambda > lambda.narrow(0, 0, 1) * floor, lambda, at::zeros_like(lambda));
    int64_t r = rank > 0 ? rank : full;
    if (energy > 0) r = std::min(r, components_for_energy(lambda, G.trace().item<double>(), energy));
    U = V.narrow(1, 0, r);
    S = lambda.narrow(0, 0, r).sqrt();
  }
  at::Tensor no_vh;
  apply_sign_rule(U, no_vh, out_dtype);
  if (exponent != 0) S = S * std::ldexp(1.0, exponent);
  return {U, S.to(out_dtype).contiguous()};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> hosvd_impl(const at::Tensor& X,
                                                                       at::IntArrayRef ranks, bool center,
                                                                       const GramKernels& kernels) {
  constexpr std::string_view op = "hosvd";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_stack(X, op);
  TORCH_CHECK(X.numel() > 0, "unisub.hosvd: X must not have a dimension of size 0, got shape ", X.sizes());
  TORCH_CHECK(static_cast<int64_t>(ranks.size()) == X.dim(), "unisub.hosvd: ranks must give one rank per mode of X (",
              X.dim(), " for shape ", X.sizes(), "), got ", ranks.size());
  for (int64_t j = 0; j < X.dim(); ++j) {
    TORCH_CHECK(ranks[j] == -1 || (ranks[j] > 0 && ranks[j] <= X.size(j)), "unisub.hosvd: ranks[", j,
                "] must be -1 (keep the mode whole) or in [1, ", X.size(j), "], got ", ranks[j]);
  }
  check_finite(X, op, "X");
  const auto out_dtype = result_dtype(X);
  const Unfolding whole = describe_unfolding(X, 0);
  auto mean = center ? model_mean_for_pack(X, whole, kernels).reshape(X.sizes().slice(1))
                     : at::zeros(X.sizes().slice(1), X.options().dtype(at::kDouble));
  auto core = center ? X.to(at::kDouble) - mean : X.to(at::kDouble);

  // Sequential truncation: shrink the tensor mode by mode, largest reduction first, so every
  // later Gram is formed from an already smaller core.
  std::vector<int64_t> order(X.dim());
  std::iota(order.begin(), order.end(), 0);
  auto kept = [&](int64_t j) { return ranks[j] < 0 ? X.size(j) : ranks[j]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return static_cast<double>(kept(a)) / X.size(a) < static_cast<double>(kept(b)) / X.size(b);
  });
  std::vector<at::Tensor> factors(X.dim());
  for (const int64_t j : order) {
    const int64_t r = kept(j);
    const int64_t width = core.numel() / core.size(j);
    auto U = std::get<0>(mode_svd_impl(core, j, std::min(r, width), 0.0, false, "gram", kernels));
    if (U.size(1) < r) {  // the unfolding has lower rank: complete the basis to r columns
      U = orthonormal_completion(at::cat({U, at::zeros({U.size(0), r - U.size(1)}, U.options())}, 1));
    }
    factors[j] = U.to(out_dtype);
    core = at::tensordot(core, U, {j}, {0}).movedim(-1, j);
  }
  return {core.to(out_dtype).contiguous(), factors, mean.to(out_dtype)};
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("mode_svd(Tensor X, int dim, int rank=-1, float energy=0.0, bool center=False, str method=\"auto\") -> (Tensor U, Tensor S)");
  m.def("hosvd(Tensor X, int[] ranks, bool center=False) -> (Tensor core, Tensor[] factors, Tensor mean)");
}

namespace unisub {

std::tuple<at::Tensor, at::Tensor> mode_svd(const at::Tensor& X, int64_t dim, int64_t rank, double energy,
                                            bool center, std::string_view method) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::mode_svd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, double, bool, c10::string_view)>();
  return op.call(X, dim, rank, energy, center, method);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> hosvd(const at::Tensor& X, at::IntArrayRef ranks,
                                                                  bool center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::hosvd", "")
                       .typed<std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>(const at::Tensor&, at::IntArrayRef, bool)>();
  return op.call(X, ranks, center);
}

}  // namespace unisub
