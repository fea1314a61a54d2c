// The analysis finalisation as ops over plain tensors, so that Python (torch.ops.unisub.*) calls
// the same code as unisub-analyze. Report entries are returned as strict JSON text.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "unisub/analysis.h"

namespace unisub::analysis {
namespace {

ReportOptions options_of(at::ArrayRef<double> taus, at::IntArrayRef error_ranks) {
  for (double t : taus) TORCH_CHECK(t > 0 && t <= 1, "unisub: taus must lie in (0, 1], got ", t);
  return {taus.vec(), error_ranks.vec()};
}

int64_t rank_for_energy_op(const at::Tensor& eigenvalues, double tau, std::optional<double> total) {
  return rank_for_energy(eigenvalues, tau, total);
}

std::tuple<at::Tensor, at::Tensor> sorted_eigh_op(const at::Tensor& G) {
  auto [ev, V] = sorted_eigh(G);
  return {ev, V};
}

std::string spectrum_report_op(const at::Tensor& ev, int64_t r, int64_t p, int64_t N, double uncentred,
                               int64_t null_seed, int64_t null_pad, at::ArrayRef<double> taus,
                               at::IntArrayRef error_ranks) {
  return spectrum_report(ev, r, p, N, uncentred, null_seed, null_pad, options_of(taus, error_ranks));
}

std::string slot_report_op(std::string slot, const at::Tensor& mean, int64_t models, bool center,
                           std::vector<std::string> modes, at::TensorList eigenvalues, at::IntArrayRef ranks,
                           at::TensorList half_grams, at::IntArrayRef half_counts, int64_t null_seed,
                           at::ArrayRef<double> taus, at::IntArrayRef error_ranks) {
  return slot_report(slot, mean, models, center, modes, eigenvalues.vec(), ranks.vec(), half_grams.vec(),
                     half_counts.vec(), null_seed, options_of(taus, error_ranks));
}

std::string delta_report_op(std::string slot, const at::Tensor& gram, const at::Tensor& eigenvalues,
                            const at::Tensor& eigenvectors, at::IntArrayRef ids, int64_t m, int64_t n, bool center,
                            at::IntArrayRef lora_ranks, const at::Tensor& scalings,
                            std::optional<std::vector<std::string>> factors, int64_t null_seed,
                            at::ArrayRef<double> taus, at::IntArrayRef error_ranks) {
  return delta_report(slot, gram, eigenvalues, eigenvectors, ids.vec(), m, n, center, lora_ranks.vec(), scalings,
                      factors, null_seed, options_of(taus, error_ranks));
}

}  // namespace
}  // namespace unisub::analysis

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  using namespace unisub::analysis;
  m.def("rank_for_energy(Tensor eigenvalues, float tau, float? total=None) -> int", &rank_for_energy_op);
  m.def("sorted_eigh(Tensor G) -> (Tensor, Tensor)");  // kernel below, fake kernel in unisub/accumulator.py
  m.def("marchenko_pastur_null(int p, int N, float total) -> Tensor", &marchenko_pastur_null);
  m.def("gaussian_null(int p, int N, float total, int seed=0) -> Tensor", &gaussian_null);
  m.def("mp_upper_edge(int p, int N, float total) -> float", &mp_upper_edge);
  // tensor inputs: real kernels below, fake kernels in unisub/nulls.py (torch.compile, opcheck)
  m.def("null_model_variances(Tensor diag, bool center) -> Tensor");
  m.def("norm_matched_null(Tensor variances, int dim, bool center, int draws, int seed=0) -> Tensor");
  m.def("spectrum_report(Tensor ev, int r, int p, int N, float uncentred, int null_seed, int null_pad, "
        "float[] taus, int[] error_ranks) -> str",
        &spectrum_report_op);
  m.def("slot_report(str slot, Tensor mean, int models, bool center, str[] modes, Tensor[] eigenvalues, "
        "int[] ranks, Tensor[] half_grams, int[] half_counts, int null_seed, float[] taus, int[] error_ranks) -> str",
        &slot_report_op);
  m.def("delta_report(str slot, Tensor gram, Tensor eigenvalues, Tensor eigenvectors, int[] ids, int m, int n, "
        "bool center, int[] lora_ranks, Tensor scalings, str[]? factors, int null_seed, float[] taus, "
        "int[] error_ranks) -> str",
        &delta_report_op);
}

// The nulls' results are float64 CPU tensors whatever the input's device: the inputs are M numbers.
TORCH_LIBRARY_IMPL(unisub, CompositeExplicitAutograd, m) {
  m.impl("sorted_eigh", &unisub::analysis::sorted_eigh_op);
  m.impl("null_model_variances", &unisub::analysis::null_model_variances);
  m.impl("norm_matched_null", static_cast<at::Tensor (*)(const at::Tensor&, int64_t, bool, int64_t, int64_t)>(
                                  &unisub::analysis::norm_matched_null));
}
