// mode_svd and hosvd: leading singular vectors of mode unfoldings of a model stack, by the float64
// Gram + eigh, or by a randomized sketch that touches X only through products with thin matrices
// (the unfolding and its Gram are never formed).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "ops/checks.h"
#include "ops/decompositions.h"
#include "ops/matrix_checks.h"
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

// X_c,(dim) seen as X3[outer, d, inner] minus mean3[o % period, r or 0, i] (see Unfolding).
struct CentredUnfolding {
  at::Tensor X3, mean3;  // mean3 undefined when not centred; both in the compute dtype
  Unfolding u;
  int64_t models_per_period() const { return u.outer / u.period; }

  int64_t block_outer() const {
    const int64_t per = std::max<int64_t>(1, u.rows * u.inner * X3.element_size());
    return std::max<int64_t>(1, kSketchBlockBytes / per);
  }

  // X_c,(dim) · Ω for Ω [outer, inner, s]  →  [d, s]
  at::Tensor times(const at::Tensor& omega) const {
    auto Y = at::zeros({u.rows, omega.size(2)}, omega.options());
    const int64_t blk = block_outer();
    for (int64_t o0 = 0; o0 < u.outer; o0 += blk) {
      const int64_t n = std::min(blk, u.outer - o0);
      Y.add_(at::einsum("odi,ois->ds", {X3.narrow(0, o0, n), omega.narrow(0, o0, n)}));
    }
    if (mean3.defined()) {
      const auto per_period = omega.reshape({models_per_period(), u.period, u.inner, omega.size(2)}).sum(0);
      if (u.mean_per_row) {
        Y.sub_(at::einsum("pdi,pis->ds", {mean3, per_period}));
      } else {  // mode 0: every row (model) loses the same mean
        Y.sub_(at::matmul(mean3.reshape({1, u.inner}), per_period.reshape({u.inner, -1})));
      }
    }
    return Y;
  }

  // X_c,(dim)ᵀ · Q for Q [d, s]  →  [outer, inner, s]
  at::Tensor transposed_times(const at::Tensor& Q) const {
    auto Z = at::empty({u.outer, u.inner, Q.size(1)}, Q.options());
    const int64_t blk = block_outer();
    for (int64_t o0 = 0; o0 < u.outer; o0 += blk) {
      const int64_t n = std::min(blk, u.outer - o0);
      Z.narrow(0, o0, n).copy_(at::einsum("odi,ds->ois", {X3.narrow(0, o0, n), Q}));
    }
    if (mean3.defined()) {
      if (u.mean_per_row) {
        const auto correction = at::einsum("pdi,ds->pis", {mean3, Q});  // [period, inner, s]
        Z.view({models_per_period(), u.period, u.inner, Q.size(1)}).sub_(correction.unsqueeze(0));
      } else {
        Z.sub_(at::outer(mean3.reshape({u.inner}), Q.sum(0)).unsqueeze(0));
      }
    }
    return Z;
  }
};

at::Tensor orthonormal_basis(const at::Tensor& Y) { return std::get<0>(at::linalg_qr(Y)); }

std::tuple<at::Tensor, at::Tensor> sketched_leading(const CentredUnfolding& cu, int64_t k) {
  const int64_t width = cu.u.columns(), s = std::min(k + kSketchOversample, std::min(cu.u.rows, width));
  auto gen = at::detail::createCPUGenerator(kSketchSeed);
  auto omega = at::randn({cu.u.outer, cu.u.inner, s}, gen, at::TensorOptions().dtype(at::kDouble))
                   .to(cu.X3.options());
  auto Q = orthonormal_basis(cu.times(omega));
  for (int it = 0; it < kSketchPowerIterations; ++it) {  // re-orthonormalised every half step
    const auto Z = orthonormal_basis(cu.transposed_times(Q).reshape({width, -1}));
    Q = orthonormal_basis(cu.times(Z.reshape({cu.u.outer, cu.u.inner, -1})));
  }
  // X_cᵀQ = Uz Sz Vzᵀ  ⇒  X_c ≈ Q Vz Sz Uzᵀ.
  auto [Uz, Sz, Vzh] = at::linalg_svd(cu.transposed_times(Q).reshape({width, -1}), /*full_matrices=*/false);
  return {at::matmul(Q, Vzh.mT()).narrow(1, 0, k), Sz.narrow(0, 0, k)};
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

std::tuple<at::Tensor, at::Tensor> mode_svd_impl(const at::Tensor& X, int64_t dim, int64_t rank,
                                                 double energy, bool center, std::string_view method_name,
                                                 const GramKernels& kernels) {
  constexpr std::string_view op = "mode_svd";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_stack(X, op);
  dim = wrap_dim(dim, X.dim(), op, "dim");
  const Unfolding u = describe_unfolding(X, dim);
  const int64_t full = std::min(u.rows, u.columns());
  TORCH_CHECK(full > 0, "unisub.mode_svd: the mode-", dim, " unfolding of X (shape ", X.sizes(), ") is empty");
  TORCH_CHECK(rank == -1 || (rank > 0 && rank <= full), "unisub.mode_svd: rank must be -1 or in [1, ", full,
              "] = [1, min(d_dim, product of the other dims)], got ", rank);
  TORCH_CHECK(energy == 0.0 || (energy > 0.0 && energy <= 1.0),
              "unisub.mode_svd: energy must be 0 (off) or in (0, 1], got ", energy);
  const SvdMethod method = parse_svd_method(method_name, op);
  TORCH_CHECK(method == SvdMethod::Auto || method == SvdMethod::Gram || method == SvdMethod::Randomized,
              "unisub.mode_svd: method must be 'auto', 'gram' or 'randomized', got '", method_name, "'");
  TORCH_CHECK(method != SvdMethod::Randomized || rank > 0,
              "unisub.mode_svd: method='randomized' needs a rank in [1, ", full, "], got rank = ", rank);
  check_finite(X, op, "X");
  const auto out_dtype = result_dtype(X);

  const bool sketch = method == SvdMethod::Randomized ||
                      (method == SvdMethod::Auto && rank > 0 && u.rows >= kAutoSketchMinRows &&
                       rank + kSketchOversample <= u.rows / 4);
  at::Tensor U, S;
  if (sketch) {
    CentredUnfolding cu{X.reshape({u.outer, u.rows, u.inner}).to(out_dtype), at::Tensor(), u};
    std::optional<at::Tensor> mean;
    if (center) {
      mean = model_mean_for_pack(X, u, kernels);
      cu.mean3 = mean->to(out_dtype);
    }
    std::tie(U, S) = sketched_leading(cu, rank);
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
