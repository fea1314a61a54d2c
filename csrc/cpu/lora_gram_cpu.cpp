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

#include "cpu/amx_split_gemm.h"
#include "cpu/blas_threads.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <utility>
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

// Whether the tiles can run on AMX: 16-bit factors, float32 GEMMs, even widths (m columns of Bt, n
// of Ac), a CPU with AMX bfloat16 tiles.
bool amx_route(at::ScalarType b, at::ScalarType a, int64_t m, int64_t n, at::ScalarType compute) {
  const auto is16 = [](at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; };
  return compute == at::kFloat && is16(b) && is16(a) && amx_split_supports(m) && amx_split_supports(n) &&
         amx_bf16_available();
}

}  // namespace

bool lora_gram_lower_cpu(const at::Tensor& Bt, const at::Tensor& Ac, int64_t r, const at::Tensor& K,
                         at::ScalarType compute, int64_t panel_rows, int64_t panel_cols, int64_t diagonal_rows,
                         bool allow_amx) {
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
  // The tiles left of the diagonal column stripe by column stripe (then by row), the diagonal strips
  // last (they are the small ones, so the threads finish together), by row: a worker converting
  // panels keeps its column stripe from one tile to the next and converts each row panel once, and
  // the strips of one diagonal block use that block's row panel for their columns too.
  const bool amx = allow_amx && amx_route(B.scalar_type(), A.scalar_type(), B.size(1), A.size(1), compute);
  auto on_diagonal = [](const Tile& t) { return t.j0 + t.nj > t.i0; };
  std::stable_sort(tiles.begin(), tiles.end(), [&](const Tile& x, const Tile& y) {
    if (amx) {
      // Splitting a panel for AMX costs more than converting it, so the diagonal strips go with the
      // column stripe that holds their columns (first in it, by row), not after every stripe: the
      // stripe's split columns serve them, instead of each diagonal block's row panel being split
      // into columns again.
      const int64_t sx = x.j0 / tj, sy = y.j0 / tj;
      if (sx != sy) return sx < sy;
    }
    if (on_diagonal(x) != on_diagonal(y)) return amx ? on_diagonal(x) : !on_diagonal(x);
    if (on_diagonal(x)) return x.i0 < y.i0;
    return x.j0 != y.j0 ? x.j0 < y.j0 : x.i0 < y.i0;
  });

  // Each worker's buffers fit the largest tile and the widest row it reduces, whatever the sizes.
  int64_t tile_elems = 0, tile_cols = 0;
  for (const Tile& t : tiles) {
    tile_elems = std::max(tile_elems, t.ni * r * t.nj * r);
    tile_cols = std::max(tile_cols, t.nj * r);
  }
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tiles.size()));
  std::atomic<int64_t> next{0};
  double* k = K.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(compute, "unisub_lora_gram_lower_cpu", [&] {
    at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
      const SequentialBlas one_thread;
      // Inside at::parallel_for, ATen runs its own parallel loops inline and the BLAS (OpenMP,
      // inside a parallel region) runs single-threaded: each GEMM stays on this thread. Buffers
      // once per worker (fresh multi-megabyte tensors per tile would cost their page faults every
      // time).
      const auto opts = B.options().dtype(compute);
      const auto bufP = at::empty({tile_elems}, opts), bufQ = at::empty({tile_elems}, opts);
      std::vector<double> acc(static_cast<size_t>(tile_cols));
      // The converted panels: a whole row panel (ti models) and a whole column stripe (tj models),
      // with the model ranges they hold (none yet: start -1).
      at::Tensor rowB, rowA, colB, colA;
      if (convert && !amx) {
        const int64_t row_cap = std::min(ti, M) * r, col_cap = std::min(tj, M) * r;
        rowB = at::empty({row_cap, B.size(1)}, opts), rowA = at::empty({row_cap, A.size(1)}, opts);
        colB = at::empty({col_cap, B.size(1)}, opts), colA = at::empty({col_cap, A.size(1)}, opts);
      }
      int64_t row_start = -1, row_models = 0, col_start = -1, col_models = 0;
      auto holds = [](int64_t start, int64_t models, int64_t from, int64_t count) {
        return start >= 0 && from >= start && from + count <= start + models;
      };
      if (amx) {  // the same walk over the tiles, the panels split for AMX instead of converted
        SplitPanel rowSplit, colSB, colSA;  // the tile's rows are split a block at a time as they are multiplied
        for (int64_t w = w0; w < w1; ++w) {
          for (int64_t t = next.fetch_add(1); t < static_cast<int64_t>(tiles.size()); t = next.fetch_add(1)) {
            const Tile& tile = tiles[t];
            const int64_t rows = tile.ni * r, cols = tile.nj * r;
            // The tile's columns from the split column stripe that holds them, where they begin on a
            // block of kAmxBlockColumns (a diagonal strip's columns begin at its row panel, inside a
            // stripe); else from a panel split starting at the tile's first model.
            auto aligned = [&](int64_t start) { return (tile.j0 - start) * r % kAmxBlockColumns == 0; };
            if (!holds(col_start, col_models, tile.j0, tile.nj) || !aligned(col_start)) {
              col_start = tile.j0 / tj * tj, col_models = std::min(tj, M - col_start);
              if (!holds(col_start, col_models, tile.j0, tile.nj) || !aligned(col_start))
                col_start = tile.j0, col_models = std::max(tile.nj, std::min(tj, M - col_start));
              colSB.load_columns(B.narrow(0, col_start * r, col_models * r));
              colSA.load_columns(A.narrow(0, col_start * r, col_models * r));
            }
            auto P = bufP.narrow(0, 0, rows * cols).view({rows, cols});
            auto Q = bufQ.narrow(0, 0, rows * cols).view({rows, cols});
            const int64_t b0 = (tile.j0 - col_start) * r;
            amx_split_product(B.narrow(0, tile.i0 * r, rows), rowSplit, colSB, b0, cols, P.data_ptr<float>(), cols);
            amx_split_product(A.narrow(0, tile.i0 * r, rows), rowSplit, colSA, b0, cols, Q.data_ptr<float>(), cols);
            reduce_tile(P.const_data_ptr<float>(), Q.const_data_ptr<float>(), r, tile, k, M, acc.data());
          }
        }
        return;
      }
      // models [from, from + count) of both factors in the compute dtype: the factors themselves, or
      // a slice of a converted panel (converting the panel of `unit` models holding them first)
      auto slices = [&](at::Tensor& bufB, at::Tensor& bufA, int64_t& start, int64_t& models, int64_t unit,
                        int64_t from, int64_t count) -> std::pair<at::Tensor, at::Tensor> {
        if (!convert) return {B.narrow(0, from * r, count * r), A.narrow(0, from * r, count * r)};
        if (!holds(start, models, from, count)) {
          start = from / unit * unit, models = std::min(unit, M - start);
          bufB.narrow(0, 0, models * r).copy_(B.narrow(0, start * r, models * r));
          bufA.narrow(0, 0, models * r).copy_(A.narrow(0, start * r, models * r));
        }
        return {bufB.narrow(0, (from - start) * r, count * r), bufA.narrow(0, (from - start) * r, count * r)};
      };
      for (int64_t w = w0; w < w1; ++w) {
        for (int64_t t = next.fetch_add(1); t < static_cast<int64_t>(tiles.size()); t = next.fetch_add(1)) {
          const Tile& tile = tiles[t];
          const int64_t rows = tile.ni * r, cols = tile.nj * r;
          const auto [Bi, Ai] = slices(rowB, rowA, row_start, row_models, ti, tile.i0, tile.ni);
          at::Tensor Bj, Aj;
          if (convert && on_diagonal(tile)) {  // a strip's columns lie in its own row panel
            std::tie(Bj, Aj) = slices(rowB, rowA, row_start, row_models, ti, tile.j0, tile.nj);
          } else {
            std::tie(Bj, Aj) = slices(colB, colA, col_start, col_models, tj, tile.j0, tile.nj);
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
  return amx;
}

}  // namespace unisub::detail
