#include "accumulator.h"

#include <fmt/core.h>

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
  auto [evals, evecs] = torch::linalg_eigh(grams.at(mode));
  evals = evals.flip(0).clamp_min(0);
  evecs = evecs.flip(1);
  auto idx = evecs.abs().argmax(0);
  auto signs = torch::sign(evecs.gather(0, idx.unsqueeze(0)));
  signs.masked_fill_(signs == 0, 1);
  return {evals, evecs * signs};
}

int64_t rank_for_energy(const torch::Tensor& ev, double tau) {
  const double total = ev.sum().item<double>();
  if (total <= 0) return 1;
  auto cum = ev.cumsum(0) / total;
  auto hit = (cum >= tau * (1 - 8 * std::numeric_limits<double>::epsilon())).nonzero();
  return hit.numel() ? hit[0][0].item<int64_t>() + 1 : ev.numel();
}

}  // namespace unisub_tool
