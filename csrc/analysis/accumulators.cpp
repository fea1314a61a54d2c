#include "analysis/accumulators.h"

#include <ATen/ops/addmm.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "analysis/profile.h"
#include "unisub/decompositions.h"
#include "unisub/gram.h"

namespace unisub::analysis {
namespace {

const auto kF64 = at::TensorOptions().dtype(at::kDouble);

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

int64_t mode_dim(const std::string& mode) {
  if (mode == "out") return 1;
  if (mode == "in") return 2;
  TORCH_CHECK_VALUE(false, "unisub: mode must be \"out\" or \"in\", got \"", mode,
                    "\" (the model axis of LoRA deltas is DeltaAccumulator's job)");
}

at::Tensor double_center(const at::Tensor& K) {
  const auto row = K.mean(1, /*keepdim=*/true);
  return K - (row + row.t()) + K.mean();
}

// ---- ModeAccumulator ----------------------------------------------------------------------------

ModeAccumulator::ModeAccumulator(int64_t m, int64_t n, std::vector<std::string> modes, bool center,
                                 at::Device device)
    : m_(m), n_(n), modes_(std::move(modes)), center_(center) {
  TORCH_CHECK_VALUE(m >= 1 && n >= 1, "ModeAccumulator: shape must be (m, n) with m, n >= 1, got (", m, ", ", n, ")");
  TORCH_CHECK_VALUE(!modes_.empty(), "ModeAccumulator: modes must be a non-empty subset of [\"out\", \"in\"]");
  std::set<std::string> seen;
  for (const auto& mo : modes_) {
    mode_dim(mo);
    TORCH_CHECK_VALUE(seen.insert(mo).second, "ModeAccumulator: mode \"", mo, "\" is given twice");
  }
  const auto opts = kF64.device(device);
  mean_ = at::zeros({m, n}, opts);
  for (const auto& mo : modes_) {
    const int64_t d = mo == "out" ? m : n;
    grams_.push_back(at::zeros({d, d}, opts));
  }
}

const at::Tensor& ModeAccumulator::gram(const std::string& mode) const {
  for (size_t i = 0; i < modes_.size(); ++i)
    if (modes_[i] == mode) return grams_[i];
  TORCH_CHECK_VALUE(false, "ModeAccumulator: mode \"", mode, "\" was not accumulated");
}

void ModeAccumulator::update(at::TensorList models) {
  if (models.empty()) return;
  for (size_t i = 0; i < models.size(); ++i) {
    const auto& x = models[i];
    TORCH_CHECK_TYPE(x.defined() && x.is_floating_point(), "ModeAccumulator.update: model ", i,
                     " of the batch must be floating point, got ",
                     x.defined() ? std::string(c10::toString(x.scalar_type())) : std::string("None"));
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) == m_ && x.size(1) == n_, "ModeAccumulator.update: expected models of shape [",
                      m_, ", ", n_, "], got ", shape_text(x.sizes()), " (model ", i, " of the batch)");
  }
  at::NoGradGuard no_grad;
  if (!model_.defined()) {
    const auto opts = kF64.device(mean_.device());
    batch_mean_ = at::empty({m_, n_}, opts);
    model_ = at::empty({m_, n_}, opts);
    for (const auto& G : grams_) batch_grams_.push_back(at::empty_like(G));
  }
  // One model at a time in float64: the batch is never copied to float64 as a whole (for a float16
  // batch that copy alone was 4x its size), and one model's unfolding is a plain view that
  // gram_update_ hands to BLAS without packing.
  {
    ScopedStage stage("convert");
    batch_mean_.zero_();
    for (const auto& x : models) {
      model_.copy_(x);
      batch_mean_ += model_;
    }
    batch_mean_ /= static_cast<double>(models.size());
  }
  if (!at::isfinite(batch_mean_).all().item<bool>()) {
    // Any NaN or infinity reaches the batch mean: caught before this accumulator changes, rather
    // than as an eigensolver failure at finalisation.
    for (size_t i = 0; i < models.size(); ++i)
      TORCH_CHECK_VALUE(at::isfinite(models[i]).all().item<bool>(), "ModeAccumulator.update: model ", i,
                        " of the batch holds NaN or infinity; every model must be finite");
    TORCH_CHECK_VALUE(false, "ModeAccumulator.update: the batch's mean overflows float64");
  }
  // the unavoidable work: each mode's Gram of each model, d(d+1)/2 · (the other size) multiply-adds
  double madds = 0;
  for (const auto& mo : modes_) {
    const double d = mo == "out" ? m_ : n_, other = mo == "out" ? n_ : m_;
    madds += d * (d + 1) / 2 * other * static_cast<double>(models.size());
  }
  for (auto& G : batch_grams_) G.zero_();
  for (const auto& x : models) {
    {
      ScopedStage stage("convert");
      model_.copy_(x);  // a copy: centring must never touch the caller's tensor
      if (center_) model_ -= batch_mean_;
    }
    ScopedStage stage("gram");
    const auto one = model_.unsqueeze(0);
    for (size_t k = 0; k < modes_.size(); ++k) unisub::gram_update_(batch_grams_[k], one, mode_dim(modes_[k]));
  }
  ScopedStage stage("gram", 0, madds);  // the merge's rank-1 updates count as Gram time, not work
  merge_parts(static_cast<int64_t>(models.size()), batch_mean_, batch_grams_, model_);
}

void ModeAccumulator::check_compatible(const ModeAccumulator& o, const char* what) const {
  TORCH_CHECK_VALUE(o.m_ == m_ && o.n_ == n_ && o.modes_ == modes_ && o.center_ == center_, "ModeAccumulator.", what,
                    ": incompatible accumulators: shape (", o.m_, ", ", o.n_, ") vs (", m_, ", ", n_, "), modes ",
                    c10::Join(",", o.modes_), " vs ", c10::Join(",", modes_), ", center ", o.center_, " vs ", center_);
}

void ModeAccumulator::merge(const ModeAccumulator& other) {
  check_compatible(other, "merge");
  at::NoGradGuard no_grad;
  merge_parts(other.count_, other.mean_, other.grams_, std::nullopt);
}

void ModeAccumulator::merge_parts(int64_t nb, const at::Tensor& mean_b, const std::vector<at::Tensor>& grams_b,
                                  std::optional<at::Tensor> delta_buffer) {
  if (nb == 0) return;
  const int64_t na = count_, n = na + nb;
  const auto dev = mean_.device();
  at::Tensor delta = delta_buffer ? *delta_buffer : at::empty_like(mean_);
  at::sub_out(delta, mean_b.to(dev), mean_);
  for (size_t k = 0; k < modes_.size(); ++k) grams_[k] += grams_b[k].to(dev);
  double mean_step = static_cast<double>(nb) / n;
  if (center_ && na) {
    // G += c·δδᵀ as the Gram of √c·δ through gram_update_: its in-place route computes the lower
    // triangle only (the Grams stay exactly symmetric: sums of mirrored Grams), half the work of
    // a full product, which cost as much as one more model's Gram per batch
    const double scale = std::sqrt(static_cast<double>(na) * static_cast<double>(nb) / n);
    delta.mul_(scale);
    const auto scaled = delta.unsqueeze(0);
    for (size_t k = 0; k < modes_.size(); ++k) unisub::gram_update_(grams_[k], scaled, mode_dim(modes_[k]));
    mean_step /= scale;
  }
  mean_ += delta.mul_(mean_step);
  count_ = n;
}

void ModeAccumulator::load(int64_t count, const at::Tensor& mean, at::TensorList grams) {
  TORCH_CHECK_VALUE(count >= 0, "ModeAccumulator.load: count must be >= 0, got ", count);
  TORCH_CHECK_VALUE(grams.size() == modes_.size(), "ModeAccumulator.load: need one Gram per mode (",
                    modes_.size(), "), got ", grams.size());
  // copy_ would broadcast a wrong-shaped tensor into the buffer without a word
  TORCH_CHECK_VALUE(mean.defined() && mean.sizes() == mean_.sizes(), "ModeAccumulator.load: mean must have shape ",
                    shape_text(mean_.sizes()), ", got ", mean.defined() ? shape_text(mean.sizes()) : "None");
  for (size_t k = 0; k < modes_.size(); ++k)
    TORCH_CHECK_VALUE(grams[k].defined() && grams[k].sizes() == grams_[k].sizes(), "ModeAccumulator.load: the Gram of mode ",
                      modes_[k], " must have shape ", shape_text(grams_[k].sizes()), ", got ",
                      grams[k].defined() ? shape_text(grams[k].sizes()) : "None");
  at::NoGradGuard no_grad;
  mean_.copy_(mean);
  for (size_t k = 0; k < modes_.size(); ++k) grams_[k].copy_(grams[k]);
  count_ = count;
}

// ---- DeltaAccumulator ---------------------------------------------------------------------------

DeltaAccumulator::DeltaAccumulator(int64_t m, int64_t n, bool center, at::Device device)
    : m_(m), n_(n), center_(center), device_(device) {
  TORCH_CHECK_VALUE(m >= 1 && n >= 1, "DeltaAccumulator: shape must be (m, n) with m, n >= 1, got (", m, ", ", n, ")");
}

std::vector<int64_t> DeltaAccumulator::ranks() const {
  std::vector<int64_t> r;
  for (const auto& b : B_) r.push_back(b.size(1));
  return r;
}

void DeltaAccumulator::add(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id) {
  TORCH_CHECK_VALUE(B.defined() && A.defined() && B.dim() == 2 && A.dim() == 2,
                    "DeltaAccumulator.add: B must be [m, r] and A [r, n], got shapes ",
                    B.defined() ? shape_text(B.sizes()) : "None", " and ", A.defined() ? shape_text(A.sizes()) : "None");
  TORCH_CHECK_TYPE(B.is_floating_point() && A.is_floating_point(), "DeltaAccumulator.add: factors must be floating point, got ",
                   B.scalar_type(), " and ", A.scalar_type());
  TORCH_CHECK_VALUE(B.size(1) == A.size(0), "DeltaAccumulator.add: the LoRA rank must agree: B is ", shape_text(B.sizes()),
                    ", A is ", shape_text(A.sizes()));
  TORCH_CHECK_VALUE(B.size(0) == m_ && A.size(1) == n_, "DeltaAccumulator.add: expected ΔW of shape [", m_, ", ", n_,
                    "], got B ", shape_text(B.sizes()), " · A ", shape_text(A.sizes()));
  TORCH_CHECK_VALUE(std::isfinite(scaling), "DeltaAccumulator.add: scaling must be finite, got ", scaling);
  TORCH_CHECK_VALUE(at::isfinite(B).all().item<bool>() && at::isfinite(A).all().item<bool>(),
                    "DeltaAccumulator.add: the factors hold NaN or infinity; every model must be finite");
  if (id < 0) id = ids_.empty() ? 0 : *std::max_element(ids_.begin(), ids_.end()) + 1;
  TORCH_CHECK_VALUE(std::find(ids_.begin(), ids_.end(), id) == ids_.end(), "DeltaAccumulator.add: model id ", id,
                    " is already in this accumulator; give each model a distinct id");
  at::NoGradGuard no_grad;
  B_.push_back(B.detach().to(device_, /*non_blocking=*/false, /*copy=*/true));
  A_.push_back(A.detach().to(device_, /*non_blocking=*/false, /*copy=*/true));
  scalings_.push_back(scaling);
  ids_.push_back(id);
  K_ = at::Tensor();
}

void DeltaAccumulator::merge(const DeltaAccumulator& o) {
  if (o.count() == 0) return;
  TORCH_CHECK_VALUE(o.m_ == m_ && o.n_ == n_ && o.center_ == center_, "DeltaAccumulator.merge: incompatible accumulators: shape (",
                    o.m_, ", ", o.n_, ") vs (", m_, ", ", n_, "), center ", o.center_, " vs ", center_);
  for (auto id : o.ids_)
    TORCH_CHECK_VALUE(std::find(ids_.begin(), ids_.end(), id) == ids_.end(), "DeltaAccumulator.merge: model id ", id,
                      " is in both accumulators; give each model a distinct id");
  for (int64_t i = 0; i < o.count(); ++i) {
    B_.push_back(o.B_[i].to(device_));
    A_.push_back(o.A_[i].to(device_));
  }
  scalings_.insert(scalings_.end(), o.scalings_.begin(), o.scalings_.end());
  ids_.insert(ids_.end(), o.ids_.begin(), o.ids_.end());
  K_ = at::Tensor();
}

void DeltaAccumulator::sort_by_id() {
  std::vector<size_t> order(ids_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids_[a] < ids_[b]; });
  if (std::is_sorted(order.begin(), order.end())) return;
  auto permute = [&](auto& v) {
    auto old = v;
    for (size_t i = 0; i < order.size(); ++i) v[i] = old[order[i]];
  };
  permute(B_), permute(A_), permute(scalings_), permute(ids_);
  K_ = at::Tensor();
}

std::pair<at::Tensor, at::Tensor> DeltaAccumulator::factors(at::ScalarType dtype) const {
  TORCH_CHECK_VALUE(count() > 0, "DeltaAccumulator: no models were accumulated");
  const auto ranks_ = ranks();
  const int64_t M = count(), r = *std::max_element(ranks_.begin(), ranks_.end());
  const auto opts = at::TensorOptions().dtype(dtype).device(device_);
  auto B = at::zeros({M, m_, r}, opts), A = at::zeros({M, r, n_}, opts);
  for (int64_t i = 0; i < M; ++i) {
    // s·B in float64, then cast: s·B rounded to B's own (e.g. float32) precision lost 1.7e-8
    B[i].narrow(1, 0, ranks_[i]).copy_(B_[i].to(at::kDouble) * scalings_[i]);
    A[i].narrow(0, 0, ranks_[i]).copy_(A_[i]);
  }
  return {B, A};
}

at::Tensor DeltaAccumulator::gram(bool center) {
  if (!K_.defined()) {
    at::NoGradGuard no_grad;
    at::Tensor B, A;
    {
      ScopedStage stage("convert");
      std::tie(B, A) = factors(at::kDouble);
    }
    // the unavoidable work: K = Σ-blocks of (BᵀB)∘(AAᵀ) over the stored ranks, (Σr)²(m+n)/2
    double rank_sum = 0;
    for (auto r : ranks()) rank_sum += static_cast<double>(r);
    ScopedStage stage("gram", 0, rank_sum * rank_sum * static_cast<double>(m_ + n_) / 2);
    K_ = unisub::lora_gram(B, A, /*center=*/false);
  }
  return center ? double_center(K_) : K_.clone();
}

at::Tensor DeltaAccumulator::combine(const at::Tensor& weights) const {
  TORCH_CHECK_VALUE(weights.dim() == 2 && weights.size(0) == count(), "DeltaAccumulator.combine: weights must be [",
                    count(), ", k], got ", shape_text(weights.sizes()));
  at::NoGradGuard no_grad;
  auto [B, A] = factors(at::kDouble);
  const auto w = weights.to(B.device(), at::kDouble);
  const int64_t M = B.size(0), r = B.size(2), k = w.size(1);
  const auto Bw = at::einsum("imr,ik->kmir", {B, w}).reshape({k, m_, M * r});
  return Bw.matmul(A.reshape({M * r, n_}));
}

}  // namespace unisub::analysis
