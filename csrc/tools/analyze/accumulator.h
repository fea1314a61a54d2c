// Streaming centred mode Grams of one slot: per-batch centring, gram_update_, and the pairwise
// (Chan) merge, in float64 -- the same arithmetic as unisub.SubspaceAccumulator.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace unisub_tool {

struct Accumulator {
  std::vector<std::string> modes;
  int64_t m = 0, n = 0, count = 0;
  torch::Tensor mean;
  std::map<std::string, torch::Tensor> grams;

  Accumulator(int64_t m, int64_t n, std::vector<std::string> modes);
  void update(const torch::Tensor& X);  // X[b, m, n], any float dtype
  void merge(const Accumulator& other);
  // descending eigenvalues (clamped at 0) and eigenvectors with the largest entry of each positive
  std::pair<torch::Tensor, torch::Tensor> eigh(const std::string& mode) const;
};

}  // namespace unisub_tool
