#include "accumulator.h"

#include <fmt/core.h>

#include "unisub/analysis.h"
#include "unisub/gram.h"

namespace unisub_tool {
namespace {
torch::Tensor outer(const torch::Tensor& d, const std::string& mode) {
  return mode == "out" ? d.mm(d.t()) : d.t().mm(d);
}
}  // namespace

Accumulator::Accumulator(int64_t m_, int64_t n_, std::vector<std::string> modes_)
    : modes(std::move(modes_)), m(m_), n(n_) {
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  mean = torch::zeros({m, n}, opts);
  for (const auto& mo : modes) grams[mo] = mo == "out" ? torch::zeros({m, m}, opts) : torch::zeros({n, n}, opts);
}

void Accumulator::update(const torch::Tensor& X0) {
  if (X0.size(0) == 0) return;
  auto X = X0.to(torch::kDouble);
  Accumulator batch(m, n, modes);
  batch.count = X.size(0);
  batch.mean = X.mean(0);
  auto D = X - batch.mean;
  for (const auto& mo : modes) unisub::gram_update_(batch.grams[mo], D, mo == "out" ? 1 : 2);
  merge(batch);
}

void Accumulator::merge(const Accumulator& o) {
  if (o.count == 0) return;
  const double na = static_cast<double>(count), nb = static_cast<double>(o.count), total = na + nb;
  auto delta = o.mean - mean;
  for (const auto& mo : modes) {
    grams[mo] += o.grams.at(mo);
    if (count) grams[mo] += (na * nb / total) * outer(delta, mo);
  }
  mean += (nb / total) * delta;
  count += o.count;
}

std::pair<torch::Tensor, torch::Tensor> Accumulator::eigh(const std::string& mode) const {
  return unisub::analysis::sorted_eigh(grams.at(mode));
}

}  // namespace unisub_tool
