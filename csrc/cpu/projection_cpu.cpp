// CPU kernels of the projection ops. Single tensors are GEMM chains through ATen's BLAS (see
// ops/projection.cpp); a list is one parallel pass over its tensors, each thread running its
// tensors' GEMMs single-threaded, which beats multi-threading each small GEMM in turn.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "ops/projection.h"
#include "cpu/blas_threads.h"

namespace unisub::detail {
namespace {

double entry_cost(const ListEntry& e) {
  double cost = static_cast<double>(e.G.numel());
  return cost * ((e.U ? e.U->size(-1) : 0) + (e.V ? e.V->size(-1) : 0) + 1);
}

void project_list_cpu(const std::vector<ListEntry>& entries, bool complement) {
  // Largest first, handed out dynamically: a model's parameters range from bias vectors to the
  // embedding, and a static split would leave threads idle behind the one holding the embedding.
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return entry_cost(entries[a]) > entry_cost(entries[b]); });
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(entries.size()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const SequentialBlas one_thread;
    for (size_t i = next++; i < order.size(); i = next++) project_entry(entries[order[i]], complement);
  });
}

constexpr ProjectionKernels kCpuKernels{project_list_cpu};

}  // namespace
}  // namespace unisub::detail

TORCH_LIBRARY_IMPL(unisub, CPU, m) {
  using namespace unisub::detail;
  m.impl("project", &project_impl);
  m.impl("project_", &project_inplace_impl);
  m.impl("project_list_", [](at::TensorList Gs, const c10::List<OptTensor>& Us, const c10::List<OptTensor>& Vs,
                             bool complement, bool check_basis) {
    project_list_impl(Gs, Us, Vs, complement, check_basis, kCpuKernels);
  });
  m.impl("coefficients", &coefficients_impl);
  m.impl("reconstruct", &reconstruct_impl);
  m.impl("subspace_energy", &subspace_energy_impl);
}
