// Gram ops: schemas, input checks, the device-independent driver and the C++ API entries.
#include "ops/gram.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/blas_threads.h"
#include "ops/checks.h"
#include "ops/overlap_checks.h"
#include "unisub/gram.h"

namespace unisub::detail {
namespace {

// Bytes of float64 workspace one packed column block may take. Large enough that each GEMM has
// a long inner dimension, small enough to stay far below the input's own size.
// On CPU the block is kept small: it is reused across blocks while still in cache, and a large
// fresh allocation costs more in page faults than the pack itself.
int64_t workspace_bytes(const at::Tensor& X) { return X.is_cuda() ? (256LL << 20) : (4LL << 20); }

}  // namespace

void check_stack(const at::Tensor& X, std::string_view op) {
  check_float_input(X, op, "X");
  check_min_dim(X, 2, op, "X", "a model axis and at least one weight axis: [M, d1, ...]");
  TORCH_CHECK(X.size(0) > 0, "unisub.", op,
              ": X must hold at least one model (size of dim 0 > 0), got shape ", X.sizes());
}

namespace {

// True when the unfolding is a plain 2-D view of X that GEMM can read as it is: no centring,
// already float64, and `dim` is the first or the last axis.
bool unfolding_is_a_view(const at::Tensor& X, const Unfolding& u, bool center) {
  return !center && X.scalar_type() == at::kDouble && (u.outer == 1 || u.inner == 1);
}

}  // namespace

Unfolding describe_unfolding(const at::Tensor& X, int64_t dim) {
  Unfolding u;
  for (int64_t k = 0; k < dim; ++k) u.outer *= X.size(k);
  u.rows = X.size(dim);
  for (int64_t k = dim + 1; k < X.dim(); ++k) u.inner *= X.size(k);
  u.mean_per_row = dim != 0;
  u.period = dim == 0 ? 1 : u.outer / X.size(0);
  return u;
}

at::Tensor model_mean_for_pack(const at::Tensor& X, const Unfolding& u, const GramKernels& k) {
  const int64_t models = X.size(0);
  const auto flat = X.reshape({models, -1});
  auto mean = at::empty({flat.size(1)}, X.options().dtype(at::kDouble));
  k.spread_sum(flat, mean);
  mean.div_(static_cast<double>(models)).add_(flat.select(0, 0));
  return mean.reshape({u.period, u.mean_per_row ? u.rows : 1, u.inner});
}

// acc = beta·acc + alpha·A Aᵀ, computing only the block lower triangle (about half the flops of one
// GEMM for wide Grams); mirror_lower() later fills the upper triangle.
void syrk_lower(const at::Tensor& acc, const at::Tensor& A, double beta, double alpha) {
  const int64_t d = A.size(0);
  const int64_t tile = A.is_cuda() ? 1024 : 256;
  if (d <= tile) {
    acc.addmm_(A, A.t(), beta, alpha);
    return;
  }
  for (int64_t i0 = 0; i0 < d; i0 += tile) {
    const int64_t ni = std::min(tile, d - i0);
    const auto Ai = A.narrow(0, i0, ni);
    // One GEMM per block row: all tiles left of and on the diagonal at once.
    auto left = acc.narrow(0, i0, ni).narrow(1, 0, i0 + ni);
    left.addmm_(Ai, A.narrow(0, 0, i0 + ni).t(), beta, alpha);
  }
}

namespace {
// acc += part for two [rows, cols] blocks (acc float64, part float32) with unit column strides
void add_block_f32(const at::Tensor& acc, const at::Tensor& part) {
  if (!acc.is_cpu() || acc.stride(1) != 1 || part.stride(1) != 1) {
    acc.add_(part);
    return;
  }
  double* a = acc.data_ptr<double>();
  const float* b = part.const_data_ptr<float>();
  const int64_t rows = acc.size(0), cols = acc.size(1), sa = acc.stride(0), sb = part.stride(0);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) a[r * sa + c] += static_cast<double>(b[r * sb + c]);
  });
}
}  // namespace

namespace {
// Block rows of syrk_lower_float32. 128 on CPU: measured 10 % faster than 256 for float32 GEMMs of
// 768 rows.
int64_t float32_tile(const at::Device& device) { return device.is_cuda() ? 1024 : 128; }
}  // namespace

namespace {

// Runs block_row(b, worker) for every block row b < blocks: on the CPU with more than one thread the
// block rows are shared out among the threads, each block row's GEMMs on its own thread
// (SequentialBlas), instead of the BLAS splitting every few-hundred-row GEMM across the threads and
// joining them (the float32 route of the full-weight case: 15.7 -> 12.4 s). Which worker takes
// which block row is fixed before they start (the widest first, each to the worker with the least
// work so far; block row b's work ∝ its width b + 1), not taken from a shared counter as they come
// free: MKL's single-threaded GEMMs here gave different last bits on one worker than on the other
// (2 runs in 30 of a test differed), so the bits must not depend on timing.
template <class BlockRow>
void for_each_block_row(int64_t blocks, int64_t max_workers, bool on_cpu, const BlockRow& block_row) {
  const int64_t workers = std::min({max_workers, static_cast<int64_t>(at::get_num_threads()), blocks});
  if (!on_cpu || workers <= 1 || at::in_parallel_region()) {
    for (int64_t b = 0; b < blocks; ++b) block_row(b, 0);
    return;
  }
  std::vector<std::vector<int64_t>> assigned(static_cast<size_t>(workers));
  std::vector<int64_t> load(static_cast<size_t>(workers), 0);
  for (int64_t b = blocks - 1; b >= 0; --b) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    assigned[least].push_back(b);
    load[least] += b + 1;
  }
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    const SequentialBlas one_thread;
    for (int64_t w = w0; w < w1; ++w)
      for (const int64_t b : assigned[w]) block_row(b, w);
  });
}

}  // namespace

at::Tensor page_aligned_empty(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device& device) {
  if (!device.is_cpu()) return at::empty(sizes, at::TensorOptions().dtype(dtype).device(device));
  // MKL's single-threaded GEMMs on these shapes read their operands in place, and how they round
  // depends on where the operands lie relative to a page: blocks that sit at the same offset in
  // every run give the same bits in every run (and in both front ends)
  constexpr int64_t kPage = 4096;
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(dtype));
  auto raw = at::empty({bytes + kPage}, at::TensorOptions().dtype(at::kByte));
  const auto address = reinterpret_cast<uintptr_t>(raw.data_ptr());
  const int64_t offset = static_cast<int64_t>((kPage - address % kPage) % kPage);
  return raw.narrow(0, offset, bytes).view(dtype).view(sizes);
}

at::Tensor syrk_lower_float32_scratch(int64_t d, const at::Device& device) {
  // one block row of float32 partial Gram per thread that may take block rows (CPU)
  const int64_t workers = device.is_cuda() ? 1 : std::max(1, at::get_num_threads());
  const int64_t rows = std::min(d, float32_tile(device));
  // each worker's block row starts on a page of its own
  const int64_t row_stride = ((rows * d * 4 + 4095) / 4096 * 4096) / 4;
  return page_aligned_empty({workers, row_stride}, at::kFloat, device);
}

void syrk_lower_float32(const at::Tensor& acc, const at::Tensor& A, int64_t columns, const at::Tensor& scratch) {
  const int64_t d = A.size(0), k = A.size(1);
  const int64_t tile = float32_tile(A.device());
  const int64_t rows = std::min(d, tile);
  for_each_block_row((d + tile - 1) / tile, scratch.size(0), A.is_cpu(), [&](int64_t b, int64_t worker) {
    const int64_t i0 = b * tile, ni = std::min(tile, d - i0);
    const auto row = acc.narrow(0, i0, ni).narrow(1, 0, i0 + ni);
    const auto part = scratch.select(0, worker).narrow(0, 0, rows * d).view({rows, d}).narrow(0, 0, ni).narrow(1, 0, i0 + ni);
    // this block row's float32 partial Grams, each added while it is still in cache
    for (int64_t c0 = 0; c0 < k; c0 += columns) {
      const int64_t c = std::min(columns, k - c0);
      part.addmm_(A.narrow(0, i0, ni).narrow(1, c0, c), A.narrow(0, 0, i0 + ni).narrow(1, c0, c).t(), 0.0, 1.0);
      add_block_f32(row, part);
    }
  });
}

namespace {
// Only the lower triangle is accumulated; an exactly symmetric result is what eigensolvers expect.
at::Tensor mirror_lower(const at::Tensor& G) {
  const auto lower = G.tril(-1);
  return (lower + lower.t()).add_(G.diagonal().diag());
}

}  // namespace

// The same in place, for a contiguous float64 G: the strict upper triangle becomes the lower's
// transpose (on CPU without any temporary; elsewhere the caching allocator makes one cheap).
void mirror_lower_(const at::Tensor& G) {
  if (!G.is_cpu()) {
    G.copy_(mirror_lower(G));
    return;
  }
  const int64_t d = G.size(0);
  double* g = G.data_ptr<double>();
  // Blocks of rows of the upper triangle, each written from the matching columns of the lower.
  at::parallel_for(0, d, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = r + 1; c < d; ++c) g[r * d + c] = g[c * d + r];
  });
}

void accumulate_gram(at::Tensor& acc, const at::Tensor& X, int64_t dim, bool center, const GramKernels& k) {
  const Unfolding u = describe_unfolding(X, dim);
  if (u.rows == 0 || u.columns() == 0) return;
  const auto X3 = X.reshape({u.outer, u.rows, u.inner});
  if (unfolding_is_a_view(X, u, center)) {
    syrk_lower(acc, u.outer == 1 ? X3.select(0, 0) : X3.select(2, 0).t());
    return;
  }
  std::optional<at::Tensor> mean3;
  if (center) mean3 = model_mean_for_pack(X, u, k);

  const int64_t total = u.columns();
  const int64_t budget_cols = workspace_bytes(X) / (8 * u.rows);
  const int64_t block = std::min(total, std::max<int64_t>(256, budget_cols));
  // When the rows are X's contiguous axis (dim is last), store the block column-major so the
  // pack kernel reads X in order; otherwise row-major, reading along `inner`.
  const bool column_major = u.inner == 1;
  auto storage = column_major ? at::empty({block, u.rows}, X.options().dtype(at::kDouble))
                              : at::empty({u.rows, block}, X.options().dtype(at::kDouble));
  for (int64_t c0 = 0; c0 < total; c0 += block) {
    const int64_t cols = std::min(block, total - c0);
    at::Tensor buf = column_major ? storage.narrow(0, 0, cols).t() : storage.narrow(1, 0, cols);
    k.pack(X3, mean3, u, c0, buf);
    syrk_lower(acc, buf);
  }
}


namespace {
// The in-place route below rebuilds G's upper triangle from its lower one, which is G + XXᵀ only
// for a symmetric G (every Gram is; a caller's G need not be). A CPU check costs one read of G,
// far less than the accumulation; elsewhere the in-place route saves nothing (mirror_lower_
// makes Gram-sized temporaries there) and the general route is taken.
bool is_symmetric_cpu(const at::Tensor& G) {
  if (!G.is_cpu()) return false;
  const int64_t d = G.size(0);
  const double* g = G.const_data_ptr<double>();
  constexpr int64_t kTile = 64;  // tile pairs, so that the transposed reads stay in cache
  for (int64_t r0 = 0; r0 < d; r0 += kTile)
    for (int64_t c0 = 0; c0 <= r0; c0 += kTile)
      for (int64_t r = r0; r < std::min(d, r0 + kTile); ++r)
        for (int64_t c = c0; c < std::min(r, c0 + kTile); ++c)
          if (!(g[r * d + c] == g[c * d + r])) return false;
  return true;
}
}  // namespace

at::Tensor gram_f64(const at::Tensor& X, int64_t dim, bool center, const GramKernels& k) {
  const int64_t d = X.size(dim);
  auto acc = at::zeros({d, d}, X.options().dtype(at::kDouble));
  accumulate_gram(acc, X, dim, center, k);
  return mirror_lower(acc);
}

at::Tensor mode_gram_impl(const at::Tensor& X, int64_t dim, bool center, const GramKernels& k) {
  check_stack(X, "mode_gram");
  dim = wrap_dim(dim, X.dim(), "mode_gram", "dim");
  return gram_f64(X, dim, center, k).to(result_dtype(X));
}

void gram_update_impl(const at::Tensor& G, const at::Tensor& X, int64_t dim, const GramKernels& k) {
  constexpr std::string_view op = "gram_update_";
  check_not_in_graph(G, op, "G", "use unisub.mode_gram (differentiable) and add");
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  check_stack(X, op);
  check_defined(G, op, "G");
  dim = wrap_dim(dim, X.dim(), op, "dim");
  TORCH_CHECK(G.scalar_type() == at::kFloat || G.scalar_type() == at::kDouble, "unisub.", op,
              ": G must be float32 or float64 (float64 recommended for streaming), got ",
              G.scalar_type());
  check_same_device(G, "G", X, "X", op);
  const int64_t d = X.size(dim);
  TORCH_CHECK(G.dim() == 2 && G.size(0) == d && G.size(1) == d, "unisub.", op,
              ": G must have shape [", d, ", ", d, "] (size of X along dim ", dim, "), got ",
              G.sizes());
  check_no_internal_overlap(G, op, "G");
  check_no_overlap(G, "G", X, "X", op);
  if (G.scalar_type() == at::kDouble && G.is_contiguous() && is_symmetric_cpu(G)) {
    // Accumulate straight into G's lower triangle, then mirror it: no Gram-sized temporaries. A
    // streamed analysis calls this once per model and slot; on CPU every temporary was a fresh
    // heap block whose freed pages glibc keeps resident, so they, not the live data, set the
    // job's peak memory (docs/analysis.md).
    auto target = G;
    accumulate_gram(target, X, dim, /*center=*/false, k);
    mirror_lower_(target);
    return;
  }
  auto acc = at::zeros({d, d}, X.options().dtype(at::kDouble));
  accumulate_gram(acc, X, dim, /*center=*/false, k);
  G.add_(mirror_lower(acc));
}


}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("mode_gram(Tensor X, int dim, bool center=False) -> Tensor");
  m.def("gram_update_(Tensor(a!) G, Tensor X, int dim) -> ()");
}

namespace unisub {

at::Tensor mode_gram(const at::Tensor& X, int64_t dim, bool center) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::mode_gram", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
  return op.call(X, dim, center);
}

const at::Tensor& gram_update_(const at::Tensor& G, const at::Tensor& X, int64_t dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("unisub::gram_update_", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, int64_t)>();
  op.call(G, X, dim);
  return G;
}

}  // namespace unisub
