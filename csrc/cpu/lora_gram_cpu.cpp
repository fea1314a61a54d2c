// lora_gram on CPU (see lora_gram_cpu.h and ops/lora_gram.cpp for the algebra).
//
// Why tiles shared out by the threads rather than one multithreaded GEMM per row panel (the
// device-independent route in ops/lora_gram.cpp): measured on 2 cores at M = 200, r = 16,
// m = n = 1024, a 2-thread BLAS call on a machine where another process holds one core is no
// faster than a 1-thread call (its threads wait for each other at every step), while independent
// 1-thread GEMMs on tiles, taken from a shared counter, keep both cores busy whatever the load.
// Why a reduction of our own: ATen's (P ∘ Q).reshape(ni, r, nj, r).sum({1, 3}, float64)
// materialises P ∘ Q, converts it and reduces over two strided axes, which took about a third of
// lora_gram's time; here each tile of P and Q is read once, contiguously, while it is still in
// cache: the r rows of a block row are accumulated column by column into a float64 vector (an
// elementwise update the compiler vectorises, no reassociation needed), then each group of r
// columns is summed.
#include "cpu/lora_gram_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace unisub::detail {
namespace {

struct Tile {
  int64_t i0, ni, j0, nj;  // models [i0, i0 + ni) × [j0, j0 + nj), j0 ≤ i0
};

// K[i0 + a, j0 + b] for every b with j0 + b ≤ i0 + a, from the [ni·r, nj·r] tiles P and Q.
template <typename T>
void reduce_tile(const T* P, const T* Q, int64_t r, const Tile& t, double* K, int64_t ldk, double* acc) {
  const int64_t ld = t.nj * r;
  for (int64_t a = 0; a < t.ni; ++a) {
    const int64_t nb = std::min(t.nj, t.i0 + a - t.j0 + 1);  // lower triangle only
    const int64_t cols = nb * r;
    double* __restrict s = acc;
    for (int64_t c = 0; c < cols; ++c) s[c] = 0.0;
    for (int64_t k = 0; k < r; ++k) {
      const T* __restrict p = P + (a * r + k) * ld;
      const T* __restrict q = Q + (a * r + k) * ld;
      for (int64_t c = 0; c < cols; ++c) s[c] += static_cast<double>(p[c]) * static_cast<double>(q[c]);
    }
    double* row = K + (t.i0 + a) * ldk + t.j0;
    for (int64_t b = 0; b < nb; ++b) {
      double sum = 0.0;
      for (int64_t l = 0; l < r; ++l) sum += s[b * r + l];
      row[b] = sum;
    }
  }
}

}  // namespace

void lora_gram_lower_cpu(const at::Tensor& Bt, const at::Tensor& Ac, int64_t r, const at::Tensor& K,
                         at::ScalarType compute, int64_t panel_rows, int64_t panel_cols, int64_t diagonal_rows) {
  TORCH_CHECK(r > 0 && Bt.dim() == 2 && Ac.dim() == 2 && Bt.size(0) == Ac.size(0) && Bt.size(0) % r == 0,
              "unisub.lora_gram: internal error: factor panels ", Bt.sizes(), " and ", Ac.sizes(),
              " do not hold whole rank-", r, " models");
  TORCH_CHECK(Bt.device().is_cpu() && Ac.device().is_cpu() && K.device().is_cpu(),
              "unisub.lora_gram: internal error: the CPU route got tensors on ", Bt.device(), ", ", Ac.device(),
              " and ", K.device());
  TORCH_CHECK(compute == at::kFloat || compute == at::kDouble,
              "unisub.lora_gram: internal error: the CPU route computes in float32 or float64, got ", compute);
  const int64_t M = Bt.size(0) / r;
  TORCH_CHECK(K.scalar_type() == at::kDouble && K.dim() == 2 && K.size(0) == M && K.size(1) == M &&
                  K.is_contiguous(),
              "unisub.lora_gram: internal error: K must be a contiguous float64 [", M, ", ", M, "], got ",
              K.sizes(), " ", K.scalar_type());
  const auto B = Bt.contiguous(), A = Ac.contiguous();
  // Factors stored in another dtype (16-bit adapters, or float32 ones computed in float64) are
  // converted a panel at a time by the worker that needs it, never as a whole: a full float32 copy
  // of 500 rank-16 factors of 4096 × 4096 modules is 262 MB, twice the float16 factors themselves.
  const bool convert = B.scalar_type() != compute || A.scalar_type() != compute;
  const int64_t ti = std::max<int64_t>(1, panel_rows / r), tj = std::max<int64_t>(1, panel_cols / r);
  const int64_t td = std::max<int64_t>(1, std::min(ti, diagonal_rows / r));

  // The lower block triangle: row panels of ti models; left of the panel's diagonal block, tiles
  // of ti × tj models; the diagonal block itself in strips of td models that stop at the diagonal,
  // so the work thrown away (above the diagonal) is about td·r/(M·r) of the whole, not ti·r/(M·r)
  // (M = 50, r = 16: 8 % instead of 32 %).
  std::vector<Tile> tiles;
  for (int64_t i0 = 0; i0 < M; i0 += ti) {
    const int64_t ni = std::min(ti, M - i0);
    for (int64_t j0 = 0; j0 < i0; j0 += tj) tiles.push_back({i0, ni, j0, std::min(tj, i0 - j0)});
    for (int64_t s = 0; s < ni; s += td) {
      const int64_t ns = std::min(td, ni - s);
      tiles.push_back({i0 + s, ns, i0, s + ns});
    }
  }
  // Largest tiles first, so the last ones taken are small and the threads finish together; among
  // tiles of one size, by column panel, so that a worker converting panels keeps its (wider) column
  // panel from one tile to the next and converts only the row panel.
  std::stable_sort(tiles.begin(), tiles.end(), [](const Tile& x, const Tile& y) {
    const int64_t ax = x.ni * x.nj, ay = y.ni * y.nj;
    return ax != ay ? ax > ay : (x.j0 != y.j0 ? x.j0 < y.j0 : x.i0 < y.i0);
  });

  // Each worker's buffers fit the largest tile and the widest row it reduces, whatever the sizes.
  int64_t tile_elems = 0, tile_cols = 0, tile_rows = 0;
  for (const Tile& t : tiles) {
    tile_elems = std::max(tile_elems, t.ni * r * t.nj * r);
    tile_cols = std::max(tile_cols, t.nj * r);
    tile_rows = std::max(tile_rows, t.ni * r);
  }
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles.size()));
  std::atomic<int64_t> next{0};
  double* k = K.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(compute, "unisub_lora_gram_lower_cpu", [&] {
    at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
      // Inside at::parallel_for, ATen runs its own parallel loops inline and the BLAS (OpenMP,
      // inside a parallel region) runs single-threaded: each GEMM stays on this thread. Buffers
      // once per worker (fresh multi-megabyte tensors per tile would cost their page faults every
      // time).
      const auto opts = B.options().dtype(compute);
      const auto bufP = at::empty({tile_elems}, opts), bufQ = at::empty({tile_elems}, opts);
      std::vector<double> acc(static_cast<size_t>(tile_cols));
      // the converted panels and the model ranges they hold (-1: none yet)
      at::Tensor rowB, rowA, colB, colA;
      if (convert) {
        rowB = at::empty({tile_rows, B.size(1)}, opts), rowA = at::empty({tile_rows, A.size(1)}, opts);
        colB = at::empty({tile_cols, B.size(1)}, opts), colA = at::empty({tile_cols, A.size(1)}, opts);
      }
      int64_t row_start = -1, row_models = 0, col_start = -1, col_models = 0;
      // rows [start, start + models) of the factors, in the compute dtype
      auto panel = [&](const at::Tensor& F, at::Tensor& buf, int64_t start, int64_t models) {
        const auto src = F.narrow(0, start * r, models * r);
        if (!convert) return src;
        auto dst = buf.narrow(0, 0, models * r);
        dst.copy_(src);
        return dst;
      };
      for (int64_t w = w0; w < w1; ++w) {
        for (int64_t t = next.fetch_add(1); t < static_cast<int64_t>(tiles.size()); t = next.fetch_add(1)) {
          const Tile& tile = tiles[t];
          const int64_t rows = tile.ni * r, cols = tile.nj * r;
          at::Tensor Bi, Ai, Bj, Aj;
          if (!convert || tile.i0 != row_start || tile.ni != row_models) {
            Bi = panel(B, rowB, tile.i0, tile.ni), Ai = panel(A, rowA, tile.i0, tile.ni);
            row_start = tile.i0, row_models = tile.ni;
          } else {
            Bi = rowB.narrow(0, 0, rows), Ai = rowA.narrow(0, 0, rows);
          }
          if (!convert || tile.j0 != col_start || tile.nj != col_models) {
            Bj = panel(B, colB, tile.j0, tile.nj), Aj = panel(A, colA, tile.j0, tile.nj);
            col_start = tile.j0, col_models = tile.nj;
          } else {
            Bj = colB.narrow(0, 0, cols), Aj = colA.narrow(0, 0, cols);
          }
          auto P = bufP.narrow(0, 0, rows * cols).view({rows, cols});
          auto Q = bufQ.narrow(0, 0, rows * cols).view({rows, cols});
          at::mm_out(P, Bi, Bj.t());  // BᵢᵀBⱼ
          at::mm_out(Q, Ai, Aj.t());  // AᵢAⱼᵀ
          reduce_tile(P.const_data_ptr<scalar_t>(), Q.const_data_ptr<scalar_t>(), r, tile, k, M, acc.data());
        }
      }
    });
  });
}

}  // namespace unisub::detail
