// Report fields shared by the mode Grams and the LoRA deltas, in the format of unisub/metrics.py
// (without the null spectra the Python report adds for its plots).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

namespace unisub_tool {

std::vector<double> to_vec(const torch::Tensor& t);

// Descending eigenvalues clamped at 0 (negatives are rounding) and eigenvectors with each column's
// largest-magnitude entry positive: unisub.accumulator.sorted_eigh.
std::pair<torch::Tensor, torch::Tensor> sorted_eigh(const torch::Tensor& G);

int64_t rank_for_energy(const torch::Tensor& eigenvalues, double tau);

// Principal angles (ascending, radians) between the column spans of two orthonormal bases.
torch::Tensor principal_angles(const torch::Tensor& U1, const torch::Tensor& U2);

// The "split_half" entry: principal angles theta (ascending, radians) between the two halves' spans.
nlohmann::json split_half_report(const torch::Tensor& theta, int64_t models_a, int64_t models_b);

// The spectrum fields of one mode: ev descending, r kept, (p, N) the matched Gaussian null's shape,
// uncentred the energy of the whole stack (for the errors of mean + rank-k reconstructions).
nlohmann::json spectrum_report(const torch::Tensor& ev, int64_t r, int64_t p, double N, double uncentred);

}  // namespace unisub_tool
