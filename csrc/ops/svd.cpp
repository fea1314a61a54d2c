// svd: schema, checks, method selection and the device-independent methods.
#include "ops/svd.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu/gram_svd_cpu.h"
#include "ops/checks.h"
#include "ops/decompositions.h"
#include "ops/matrix_checks.h"
#include "unisub/decompositions.h"
#include "cpu/blas_threads.h"

namespace unisub::detail {
namespace {

constexpr std::string_view kOp = "svd";
constexpr uint64_t kSketchSeed = 0x756e69737562ULL;  // fixed: same sketch, same answer, any device

// CPU batches are processed in groups of about this many bytes of float64 input (see svd_impl).
constexpr int64_t kGroupBytes = 8LL << 20;

// Largest min(m, n) that `auto` and `gram` send to the fused CPU kernel (float32 output). It solves
// one matrix per task with an unblocked tridiagonalisation: it wins on batches of small matrices,
// blocked multithreaded LAPACK on single and large ones. Measured on 2 threads
// (benchmarks/svd_crossover.py, RESULTS.md; fused time / torch.linalg.svd time, batches of 1, 16
// and 128, square and 4:1): 96: 0.37-0.75; 128: 0.54-1.04; 160: 0.65-1.20 (one matrix loses);
// 256: 0.90-1.81. The rule looks at the matrix shape only, not at the batch size or thread count,
// so a matrix gets the same result alone, in any batch, on any number of threads.
constexpr int64_t kFusedCpuMaxDim = 128;

// UNISUB_CPU_FUSED_SVD_MAX_DIM (read once) overrides it, so that benchmarks/svd_crossover.py can
// measure both sides of the crossover on the machine at hand.
bool use_fused_cpu(int64_t m, int64_t n) {
  static const int64_t max_dim = [] {
    const char* env = std::getenv("UNISUB_CPU_FUSED_SVD_MAX_DIM");
    return env && *env ? std::max<int64_t>(0, std::atoll(env)) : kFusedCpuMaxDim;
  }();
  return std::min(m, n) <= max_dim;
}

at::Tensor safe_inverse(const at::Tensor& S, const at::Tensor& floor) {
  return at::where(S > floor, S.reciprocal(), at::zeros_like(S));
}

struct Factors {
  at::Tensor U, S, Vh;  // [B, m, k], [B, k], [B, k, n]
};

Factors lapack_svd(const at::Tensor& A3, at::ScalarType compute) {
  auto [U, S, Vh] = at::linalg_svd(A3.to(compute), /*full_matrices=*/false);
  return {U, S, Vh};
}

// m ≥ n required; A float64. `float32_output` lets well-conditioned results skip the final
// re-orthonormalisation: A V / σ is orthonormal to ε₆₄·cond², far below float32 rounding there.
Factors gram_svd_tall(const at::Tensor& A, bool float32_output) {
  const int64_t m = A.size(-2), n = A.size(-1);
  const auto G = at::matmul(A.mT(), A);
  // Any NaN/inf in A reaches the diagonal of AᵀA: a check on n values instead of m·n.
  TORCH_CHECK(at::isfinite(G.diagonal(0, -2, -1)).all().item<bool>(),
              "unisub.svd: A contains NaN or infinity; decompositions need finite input");
  auto [lambda, V] = at::linalg_eigh(G);
  lambda = lambda.flip(-1);
  V = V.flip(-1);
  // Eigenvalues within rounding of zero (|λ| ≤ max(m, n) ε λ_max) carry no information about
  // σ: they become exact zeros, and their U columns are completed instead of amplified noise.
  const double floor = std::numeric_limits<double>::epsilon() * static_cast<double>(std::max(m, n));
  const auto lambda_max = lambda.narrow(-1, 0, 1);
  lambda = at::where(lambda > lambda_max * floor, lambda, at::zeros_like(lambda));
  auto S = lambda.sqrt();
  auto U = at::matmul(A, V * safe_inverse(S, at::zeros_like(lambda_max)).unsqueeze(-2));
  const bool well_conditioned =
      float32_output && (lambda.narrow(-1, n - 1, 1) >= lambda_max * kSkipReorthoMinLambdaRatio).all().item<bool>();
  if (!well_conditioned) U = orthonormal_completion(U);
  return {U, S, V.mT()};
}

Factors jacobi_svd_tall(const at::Tensor& A, JacobiFn jacobi) {
  const int64_t batch = A.size(0), m = A.size(1), n = A.size(2);
  auto opts = A.options().dtype(at::kDouble);
  auto U = at::empty({batch, m, n}, opts), S = at::empty({batch, n}, opts), V = at::empty({batch, n, n}, opts);
  if (!jacobi(A.contiguous(), U, S, V)) {
    TORCH_WARN("unisub.svd: one-sided Jacobi did not converge within its sweep limit for at least "
               "one matrix; the result may be less accurate than usual");
  }
  if (S.eq(0).any().item<bool>()) {  // σ = 0: both singular vectors are free; complete both bases
    U = orthonormal_completion(U);
    V = orthonormal_completion(V);
  }
  return {U, S, V.mT()};
}

// Gram and Jacobi work on the tall orientation; float64 input is scaled to max|a| = 1 first
// (squares of 1e±200 would overflow or underflow; float32's range squared fits in float64).
template <typename Method>
Factors oriented_and_scaled(const at::Tensor& A3, Method&& method) {
  auto A = A3.to(at::kDouble);
  at::Tensor scale;
  if (A3.scalar_type() == at::kDouble) {
    scale = A.abs().amax({-2, -1}, /*keepdim=*/true);
    scale = at::where(scale > 0, scale, at::ones_like(scale));
    A = A / scale;
  }
  const bool wide = A.size(-2) < A.size(-1);
  Factors f = method(wide ? A.mT().contiguous() : A.contiguous());
  if (scale.defined()) f.S = f.S * scale.squeeze(-1);
  if (wide) return {f.Vh.mT(), f.S, f.U.mT()};
  return f;
}

Factors randomized_svd(const at::Tensor& A3, int64_t k, at::ScalarType compute) {
  const int64_t m = A3.size(-2), n = A3.size(-1);
  const int64_t s = std::min(k + kSketchOversample, std::min(m, n));
  auto A = A3.to(compute);
  auto gen = at::detail::createCPUGenerator(kSketchSeed);
  auto omega = at::randn({n, s}, gen, at::TensorOptions().dtype(at::kDouble)).to(A.options());
  auto Q = std::get<0>(at::linalg_qr(at::matmul(A, omega)));
  for (int it = 0; it < kSketchPowerIterations; ++it) {  // re-orthonormalised every half step
    auto Z = std::get<0>(at::linalg_qr(at::matmul(A.mT(), Q)));
    Q = std::get<0>(at::linalg_qr(at::matmul(A, Z)));
  }
  auto [Ub, S, Vh] = at::linalg_svd(at::matmul(Q.mT(), A), /*full_matrices=*/false);
  return {at::matmul(Q, Ub), S, Vh};
}

bool gram_is_accurate_enough(const at::Tensor& S, int64_t k) {
  auto ratio = S.narrow(-1, k - 1, 1) / S.narrow(-1, 0, 1).clamp_min(std::numeric_limits<double>::min());
  return (ratio >= kAutoGramMinRatio).logical_or(S.narrow(-1, 0, 1).eq(0)).all().item<bool>();
}

}  // namespace

SvdMethod parse_svd_method(std::string_view method, std::string_view op) {
  if (method == "auto") return SvdMethod::Auto;
  if (method == "gram") return SvdMethod::Gram;
  if (method == "jacobi") return SvdMethod::Jacobi;
  if (method == "randomized") return SvdMethod::Randomized;
  if (method == "lapack") return SvdMethod::Lapack;
  TORCH_CHECK(false, "unisub.", op, ": method must be one of 'auto', 'gram', 'jacobi', 'randomized', "
              "'lapack', got '", method, "'");
}

void apply_sign_rule(at::Tensor& U, at::Tensor& Vh, std::optional<at::ScalarType> out_dtype) {
  // One pass: the largest |u| is positive iff max(u) ≥ −min(u). Exact ties (max = −min) need
  // the first-occurrence rule, which only the rarer argmax pass can decide.
  const auto [lo, hi] = at::aminmax(U, -2, /*keepdim=*/true);
  auto sign = at::where(hi >= -lo, 1.0, -1.0).to(U.scalar_type());
  if (hi.eq(-lo).logical_and(hi.ne(0)).any().item<bool>()) {
    const auto pivot = U.gather(-2, U.abs().argmax(-2, /*keepdim=*/true));
    sign = at::where(pivot < 0, -1.0, 1.0).to(U.scalar_type());
  }
  // Multiply, cast and make contiguous in a single pass per factor.
  auto signed_copy = [&](const at::Tensor& T, const at::Tensor& factor) {
    auto out = at::empty(T.sizes(), T.options().dtype(out_dtype.value_or(T.scalar_type())));
    return at::mul_out(out, T, factor);
  };
  U = signed_copy(U, sign);
  if (Vh.defined()) Vh = signed_copy(Vh, sign.mT());
}

at::Tensor orthonormal_completion(const at::Tensor& A) {
  auto [Q, R] = at::linalg_qr(A.to(at::kDouble));
  const auto d = R.diagonal(0, -2, -1);
  return Q * at::where(d < 0, -1.0, 1.0).to(at::kDouble).unsqueeze(-2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_impl(const at::Tensor& A, int64_t rank,
                                                        std::string_view method_name, JacobiFn jacobi) {
  check_matrix_batch(A, kOp, "A");
  const int64_t m = A.size(-2), n = A.size(-1), full = std::min(m, n);
  TORCH_CHECK(rank == -1 || (rank > 0 && rank <= full), "unisub.svd: rank must be -1 (all) or in [1, ",
              full, "] = [1, min(m, n)] for A of shape ", A.sizes(), ", got ", rank);
  SvdMethod method = parse_svd_method(method_name, kOp);
  const int64_t k = rank < 0 ? full : rank;
  const auto out_dtype = result_dtype(A);
  const auto A3 = A.reshape({-1, m, n});
  const bool float32_output = out_dtype != at::kDouble;
  auto gram = [&](const at::Tensor& T) {
    return oriented_and_scaled(T, [&](const at::Tensor& C) { return gram_svd_tall(C, float32_output); });
  };
  auto jacobi_route = [&](const at::Tensor& T) {
    return oriented_and_scaled(T, [&](const at::Tensor& C) { return jacobi_svd_tall(C, jacobi); });
  };

  // The whole pipeline for a group of matrices, down to the signed, cast, truncated factors.
  auto solve = [&](const at::Tensor& C, SvdMethod chosen) -> Factors {
    Factors f;
    // auto, float32 output: the Gram route where it is as accurate as LAPACK (see
    // kAutoGramMinRatio). On CPU that is the fused kernel below for the batches use_fused_cpu
    // picks, and LAPACK for the others; here it is the batched route for CUDA.
    // float64 takes LAPACK.
    const bool auto_gram = chosen == SvdMethod::Auto && float32_output && !C.is_cpu();
    // The Gram route finds non-finite input itself (on the Gram's diagonal, n values).
    if (chosen != SvdMethod::Gram && !auto_gram) check_finite(C, kOp, "A");
    if (chosen == SvdMethod::Auto) {
      chosen = SvdMethod::Lapack;
      if (auto_gram) {
        f = gram(C);
        if (gram_is_accurate_enough(f.S, k)) chosen = SvdMethod::Gram;
      }
    }
    switch (chosen) {
      case SvdMethod::Gram:
        if (!f.U.defined()) f = gram(C);
        break;
      case SvdMethod::Jacobi:
        f = jacobi_route(C);
        break;
      case SvdMethod::Randomized:
        f = randomized_svd(C, k, out_dtype);
        break;
      default:
        try {
          f = lapack_svd(C, out_dtype);
        } catch (const c10::Error& e) {
          // Never fail on finite input: Jacobi converges where LAPACK's divide and conquer may not.
          TORCH_WARN("unisub.svd: LAPACK failed (", e.what_without_backtrace(),
                     "); falling back to one-sided Jacobi");
          f = jacobi_route(C);
        }
    }
    auto U = f.U.narrow(-1, 0, k), Vh = f.Vh.narrow(-2, 0, k);
    apply_sign_rule(U, Vh, out_dtype);
    return {U, f.S.narrow(-1, 0, k).to(out_dtype), Vh};
  };

  // On CPU, cache-sized groups of matrices go through the whole pipeline one group per task:
  // every intermediate (float64 copy, Gram, U) stays in cache instead of streaming the batch
  // through memory once per step. The grouping is fixed by size, not by thread count, so
  // results do not depend on the number of threads. Jacobi parallelises inside its kernel.
  const int64_t batch = A3.size(0);
  const int64_t group = std::max<int64_t>(1, kGroupBytes / (8 * m * n));
  Factors f;
  if (A3.is_cpu() && float32_output && (method == SvdMethod::Auto || method == SvdMethod::Gram) &&
      use_fused_cpu(m, n)) {
    // The fused CPU kernel (cpu/gram_svd_cpu.h): one pass per matrix, no per-call overhead.
    // auto hands the matrices where the Gram route is less accurate than LAPACK (σ_k below
    // kAutoGramMinRatio·σ_1) to LAPACK, in one batched call; a matrix whose eigensolver did not
    // converge takes the batched route of its method.
    auto fused = gram_svd_cpu(A3, k, method == SvdMethod::Auto ? kAutoGramMinRatio : 0.0);
    f = {fused.U, fused.S, fused.Vh};
    if (!fused.redo.empty()) {
      const auto idx = at::tensor(fused.redo, at::TensorOptions().dtype(at::kLong));
      const Factors part =
          solve(A3.index_select(0, idx), method == SvdMethod::Auto ? SvdMethod::Lapack : SvdMethod::Gram);
      f.U.index_copy_(0, idx, part.U);
      f.S.index_copy_(0, idx, part.S);
      f.Vh.index_copy_(0, idx, part.Vh);
    }
  } else if (A3.is_cpu() && method != SvdMethod::Jacobi && batch > group) {
    const auto opts = A3.options().dtype(out_dtype);
    f = {at::empty({batch, m, k}, opts), at::empty({batch, k}, opts), at::empty({batch, k, n}, opts)};
    const int64_t groups = (batch + group - 1) / group;
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      const SequentialBlas one_thread;
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t b0 = g * group, nb = std::min(group, batch - b0);
        const Factors part = solve(A3.narrow(0, b0, nb), method);
        f.U.narrow(0, b0, nb).copy_(part.U);
        f.S.narrow(0, b0, nb).copy_(part.S);
        f.Vh.narrow(0, b0, nb).copy_(part.Vh);
      }
    });
  } else {
    f = solve(A3, method);
  }
  auto U = f.U, S = f.S, Vh = f.Vh;
  const auto batch_dims = A.sizes().slice(0, A.dim() - 2).vec();
  auto shaped = [&](const at::Tensor& t, std::initializer_list<int64_t> tail) {
    auto sizes = batch_dims;
    sizes.insert(sizes.end(), tail);
    return t.reshape(sizes).contiguous();  // already cast and contiguous: views
  };
  return {shaped(U, {m, k}), shaped(S, {k}), shaped(Vh, {k, n})};
}

at::Tensor orthonormalize_impl(const at::Tensor& A) {
  constexpr std::string_view op = "orthonormalize";
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_matrix_batch(A, op, "A");
  TORCH_CHECK(A.size(-1) <= A.size(-2), "unisub.orthonormalize: A[*, m, k] must have k <= m (at most m ",
              "orthonormal columns exist in dimension m), got shape ", A.sizes());
  check_finite(A, op, "A");
  auto Q = orthonormal_completion(A);
  at::Tensor no_vh;
  apply_sign_rule(Q, no_vh, result_dtype(A));
  return Q;
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("svd(Tensor A, int rank=-1, str method=\"auto\") -> (Tensor U, Tensor S, Tensor Vh)");
  m.def("orthonormalize(Tensor A) -> Tensor");
}

namespace unisub {

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd(const at::Tensor& A, int64_t rank, std::string_view method) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::svd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, c10::string_view)>();
  return op.call(A, rank, method);
}

at::Tensor orthonormalize(const at::Tensor& A) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::orthonormalize", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op.call(A);
}

}  // namespace unisub
