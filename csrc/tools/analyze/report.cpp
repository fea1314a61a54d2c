#include "report.h"

#include <fmt/core.h>

#include <cmath>
#include <limits>

namespace unisub_tool {

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kDouble);
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

std::pair<torch::Tensor, torch::Tensor> sorted_eigh(const torch::Tensor& G) {
  auto [evals, evecs] = torch::linalg_eigh(G);
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

torch::Tensor principal_angles(const torch::Tensor& U1, const torch::Tensor& U2) {
  const int64_t k = std::min(U1.size(1), U2.size(1));
  auto cos = torch::linalg_svdvals(U1.t().mm(U2)).slice(0, 0, k).clamp(0, 1);
  auto R = U2.size(1) <= U1.size(1) ? U2 - U1.mm(U1.t().mm(U2)) : U1 - U2.mm(U2.t().mm(U1));
  auto sin = torch::linalg_svdvals(R).flip(0).slice(0, 0, k).clamp(0, 1);
  auto theta = torch::where(cos > std::sqrt(0.5), torch::arcsin(sin), torch::arccos(cos.flip(0)).flip(0));
  return std::get<0>(theta.sort());
}

nlohmann::json split_half_report(const torch::Tensor& theta, int64_t models_a, int64_t models_b) {
  return {{"models", {models_a, models_b}},
          {"principal_angles_deg", to_vec(torch::rad2deg(theta))},
          {"max_sin", theta.numel() ? theta.max().sin().item<double>() : 0.0},
          {"mean_cos2", theta.numel() ? theta.cos().pow(2).mean().item<double>() : 1.0}};
}

nlohmann::json spectrum_report(const torch::Tensor& ev, int64_t r, int64_t p, double N, double uncentred) {
  const int64_t d = ev.numel();
  const double tot = ev.sum().item<double>();
  auto cum = tot > 0 ? ev.cumsum(0) / tot : torch::zeros_like(ev);
  nlohmann::json rep;
  rep["dim"] = d;
  rep["rank"] = r;
  rep["singular_values"] = to_vec(ev.sqrt());
  rep["explained_variance_ratio"] = to_vec(tot > 0 ? ev / tot : torch::zeros_like(ev));
  rep["cumulative_explained_variance"] = to_vec(cum);
  for (double t : {0.5, 0.8, 0.9, 0.95, 0.99}) rep["rank_at_tau"][fmt::format("{}", t)] = rank_for_energy(ev, t);
  for (int64_t k : {1, 2, 4, 8, 16, 32, 64}) {
    if (k > d) break;
    rep["reconstruction_error"][std::to_string(k)] = tot > 0 ? std::sqrt(std::max(0.0, 1 - cum[k - 1].item<double>())) : 0.0;
    // mean + rank-k part rebuilds the whole stack up to the discarded eigenvalues ev[k:]
    rep["reconstruction_error_with_mean"][std::to_string(k)] =
        uncentred > 0 ? std::sqrt(std::max(0.0, ev.slice(0, k, d).sum().item<double>()) / uncentred) : 0.0;
  }
  const double lr = ev[r - 1].item<double>(), lnext = r < d ? ev[r].item<double>() : 0.0;
  rep["eigengap"] = {{"at_rank", r}, {"abs", r < d ? lr - lnext : lr},
                     {"sigma_ratio", r < d && lnext > 0 ? std::sqrt(lr) / std::sqrt(lnext) : INFINITY}};
  const double edge = N > 0 && tot > 0 ? tot / (static_cast<double>(p) * N) * std::pow(std::sqrt(double(p)) + std::sqrt(N), 2) : 0.0;
  rep["null"] = {{"shape", {p, static_cast<int64_t>(N)}}, {"mp_upper_edge", edge},
                 {"components_above_mp_edge", tot > 0 ? (ev > edge).sum().item<int64_t>() : 0}};
  return rep;
}

}  // namespace unisub_tool
