#include "analysis/accumulators.h"

#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include "analysis/json_writer.h"
#include "analysis/profile.h"
#include "cpu/blas_threads.h"
#include "cpu/serial_copy.h"
#include "cpu/shifted_copy.h"
#include "ops/checks.h"
#include "unisub/decompositions.h"
#include "ops/decompositions.h"
#include "ops/gram.h"
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

GramPrecision parse_gram_precision(const std::string& name) {
  if (name == "float64") return GramPrecision::Float64;
  if (name == "float32") return GramPrecision::Float32;
  if (name == "auto") return GramPrecision::Auto;
  TORCH_CHECK_VALUE(false, "gram_precision must be \"auto\", \"float64\" or \"float32\", got \"", name, "\"");
}

std::string gram_precision_name(GramPrecision p) {
  switch (p) {
    case GramPrecision::Float64: return "float64";
    case GramPrecision::Float32: return "float32";
    case GramPrecision::Auto: return "auto";
  }
  return "float64";
}

double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return std::ldexp(1.0, -11);
    case at::kBFloat16: return std::ldexp(1.0, -8);
    case at::kFloat: return std::ldexp(1.0, -24);
    default: return std::ldexp(1.0, -53);
  }
}

// ---- ModeAccumulator ----------------------------------------------------------------------------

namespace {
bool is_16_bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// The shifted unfolding whose Gram is a mode's: S itself for "out" ([m, n] · ᵀ), Sᵀ for "in".
at::Tensor unfolding(const at::Tensor& x, const std::string& mode) { return mode == "out" ? x : x.t(); }
}  // namespace

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
  shift_ = at::zeros({m, n}, opts);
  shift_sum_ = at::zeros({m, n}, opts);
  for (const auto& mo : modes_) {
    const int64_t d = mo == "out" ? m : n;
    grams_.push_back(at::zeros({d, d}, opts));
  }
}

void ModeAccumulator::invalidate() {
  folded_ = false;
  mean_cache_ = at::Tensor();  // frees a folded copy until it is read again
  grams_cache_.clear();
}

void ModeAccumulator::fold() const {
  if (folded_) return;
  at::NoGradGuard no_grad;
  const bool plain = sum_is_zero_ || count_ == 0;
  mean_cache_ = plain ? shift_ : shift_ + shift_sum_ / static_cast<double>(count_);
  grams_cache_.clear();
  for (size_t k = 0; k < modes_.size(); ++k) {
    unisub::detail::mirror_lower_(grams_[k]);  // the upper triangle is free to rewrite: not state
    if (plain || !center_) {
      grams_cache_.push_back(grams_[k]);
      continue;
    }
    // G = G₀ − S Sᵀ/n: the lower triangle, then mirrored
    auto G = grams_[k].clone();
    unisub::detail::syrk_lower(G, unfolding(shift_sum_, modes_[k]), 1.0, -1.0 / static_cast<double>(count_));
    unisub::detail::mirror_lower_(G);
    grams_cache_.push_back(std::move(G));
  }
  folded_ = true;
}

const at::Tensor& ModeAccumulator::mean() const {
  fold();
  return mean_cache_;
}

const std::vector<at::Tensor>& ModeAccumulator::grams() const {
  fold();
  return grams_cache_;
}

const at::Tensor& ModeAccumulator::gram(const std::string& mode) const {
  for (size_t i = 0; i < modes_.size(); ++i)
    if (modes_[i] == mode) return grams()[i];
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
  const auto dev = shift_.device();
  if (!batch_mean_.defined()) batch_mean_ = at::empty({m_, n_}, kF64.device(dev));
  {
    ScopedStage stage("convert");
    batch_mean_.zero_();
    for (const auto& x : models) unisub::detail::add_to_float64(x.to(dev), batch_mean_);  // in float64
    batch_mean_ /= static_cast<double>(models.size());
  }
  if (!unisub::detail::all_finite(batch_mean_)) {
    // Any NaN or infinity reaches the batch mean: caught before this accumulator changes, rather
    // than as an eigensolver failure at finalisation.
    for (size_t i = 0; i < models.size(); ++i)
      TORCH_CHECK_VALUE(unisub::detail::all_finite(models[i]), "ModeAccumulator.update: model ", i,
                        " of the batch holds NaN or infinity; every model must be finite");
    TORCH_CHECK_VALUE(false, "ModeAccumulator.update: the batch's mean overflows float64");
  }
  invalidate();
  if (center_ && count_ == 0) shift_.copy_(batch_mean_);  // μ₀: the first batch's mean
  bool all_16_bit = true;
  for (const auto& x : models) all_16_bit = all_16_bit && is_16_bit(x.scalar_type());
  // A thin batch (LoRA factors: 16 columns a model) gives float32 GEMMs too short an inner
  // dimension to pay for adding their float32 Gram into the float64 one: float64 then.
  const int64_t columns = static_cast<int64_t>(models.size()) * std::min(m_, n_);
  const bool float32 = precision_ == GramPrecision::Float32 ||
                       (precision_ == GramPrecision::Auto && all_16_bit && columns >= kFloat32MinColumns);
  // the unavoidable work: each mode's Gram of each model, d(d+1)/2 · (the other size) multiply-adds
  double madds = 0;
  for (const auto& mo : modes_) {
    const double d = mo == "out" ? m_ : n_, other = mo == "out" ? n_ : m_;
    madds += d * (d + 1) / 2 * other * static_cast<double>(models.size());
  }
  // float32 and float64 Grams are timed apart, each against the GEMM rate of its precision
  const char* gram_stage = float32 ? "gram_float32" : "gram";
  accumulate_shifted(models, float32, gram_stage);
  ScopedStage stage(gram_stage, 0, madds);
  // S += Σ (x − μ₀) = b·(batch mean − μ₀), centred or not: the mean is μ₀ + S/n either way (μ₀ is
  // 0 for an uncentred accumulator until a load or merge sets it to the mean so far)
  const auto b = static_cast<double>(models.size());
  shift_sum_.add_(batch_mean_.sub_(shift_), b);
  sum_is_zero_ = false;
  count_ += static_cast<int64_t>(models.size());
  if (float32) float32_models_ += static_cast<int64_t>(models.size());
}

void ModeAccumulator::accumulate_shifted(at::TensorList models, bool float32, const char* gram_stage) {
  const auto dev = shift_.device();
  const auto dtype = float32 ? at::kFloat : at::kDouble;
  const int64_t size = m_ * n_, elem = float32 ? 4 : 8;
  // Models per chunk: enough that a thin slot's GEMMs get a long inner dimension, few enough that
  // the chunk stays small next to the batch itself (one model at least).
  constexpr int64_t kChunkBytes = 32LL << 20;
  const int64_t per_chunk = std::clamp<int64_t>(kChunkBytes / (size * elem), 1, static_cast<int64_t>(models.size()));
  if (!chunk_.defined() || chunk_.scalar_type() != dtype || chunk_.numel() < per_chunk * size)
    chunk_ = unisub::detail::page_aligned_empty({per_chunk * size}, dtype, dev);  // see gram.h
  if (float32 && grams32_.empty())  // one block row of float32 partial Gram per mode
    for (const auto& G : grams_) grams32_.push_back(unisub::detail::syrk_lower_float32_scratch(G.size(0), dev));
  for (size_t first = 0; first < models.size(); first += per_chunk) {
    const int64_t g = std::min<int64_t>(per_chunk, static_cast<int64_t>(models.size() - first));
    // [m, g, n]: the "out" unfolding [m, g·n] and the rows of the "in" one [m·g, n] are plain views
    const auto chunk = chunk_.narrow(0, 0, g * size).view({m_, g, n_});
    {
      ScopedStage stage("convert");
      // shifted in float64 (a 16-bit model minus the float64 μ₀), then stored: a float32 chunk
      // holds each shifted entry to its own relative rounding, whatever the common offset
      for (int64_t i = 0; i < g; ++i)
        unisub::detail::shifted_copy(models[first + i].to(dev), center_ ? shift_ : at::Tensor(), chunk.select(1, i));
    }
    ScopedStage stage(gram_stage);
    // what the float32 part's error bound is relative to, Σ‖x − μ₀‖²: what this chunk adds to the
    // first mode's trace (d reads before and after, instead of a pass over the chunk)
    const double trace_before = float32 ? grams_[0].diagonal().sum().item<double>() : 0.0;
    for (size_t k = 0; k < modes_.size(); ++k) {
      const auto A = modes_[k] == "out" ? chunk.view({m_, g * n_}) : chunk.view({m_ * g, n_}).t();
      if (!float32) {
        unisub::detail::syrk_lower(grams_[k], A);
        continue;
      }
      // float32 GEMMs over at most kFloat32Columns columns each, every partial Gram summed in float64
      unisub::detail::syrk_lower_float32(grams_[k], A, kFloat32Columns, grams32_[k]);
    }
    if (float32) float32_energy_ += grams_[0].diagonal().sum().item<double>() - trace_before;
  }
}

std::string ModeAccumulator::precision_json() const {
  Json j = Json::object();
  j["rule"] = gram_precision_name(precision_);
  j["gemm"] = float32_models_ == 0 ? "float64" : float32_models_ == count_ ? "float32" : "float32+float64";
  j["reduction"] = "float64";
  j["float32_models"] = float32_models_;
  // Weyl: every eigenvalue moves by at most ‖E‖₂ <= ‖E‖_F <= (k + 2)·u₃₂·Σ‖xᵢ − μ₀‖² over the
  // float32 part (|E_ij| <= (k + 2)·u₃₂·‖x_i‖‖x_j‖ for rows of its shifted unfolding, k columns per
  // GEMM, one rounding of the shifted entries), given relative to the centred Gram's trace
  double bound = 0;
  if (float32_models_ > 0) {
    const double trace = grams().front().trace().item<double>();
    bound = trace > 0 ? (kFloat32Columns + 2) * unit_roundoff(at::kFloat) * float32_energy_ / trace
                      : std::numeric_limits<double>::infinity();
  }
  j["relative_error_bound"] = bound;
  // "auto" runs float32 GEMMs on 16-bit models only: rounding them to float16 already moves the
  // centred Gram by up to 2·u₁₆·Σ‖xᵢ − μ‖‖xᵢ‖ >= 2·u₁₆·trace (first order; Cauchy–Schwarz), and the
  // rule is to add under a sixteenth of that
  if (precision_ == GramPrecision::Auto && float32_models_ > 0) j["tolerance"] = kAutoTolerance16;
  return j.dump();
}

void ModeAccumulator::check_compatible(const ModeAccumulator& o, const char* what) const {
  TORCH_CHECK_VALUE(o.m_ == m_ && o.n_ == n_ && o.modes_ == modes_ && o.center_ == center_, "ModeAccumulator.", what,
                    ": incompatible accumulators: shape (", o.m_, ", ", o.n_, ") vs (", m_, ", ", n_, "), modes ",
                    c10::Join(",", o.modes_), " vs ", c10::Join(",", modes_), ", center ", o.center_, " vs ", center_);
}

void ModeAccumulator::merge(const ModeAccumulator& other) {
  // the other's folded Grams are read while this one's state changes: they must not be the same
  TORCH_CHECK_VALUE(&other != this, "ModeAccumulator.merge: cannot merge an accumulator into itself");
  check_compatible(other, "merge");
  if (other.count_ == 0) return;
  at::NoGradGuard no_grad;
  const auto dev = shift_.device();
  const auto mean_b = other.mean().to(dev);
  const auto& grams_b = other.grams();
  if (count_ == 0) {
    load(other.count_, mean_b, grams_b, other.float32_models_, other.float32_energy_);
    return;
  }
  // this part folded in place (μ₀ := its mean, S := 0), then the pairwise update
  fold();
  const auto mean_a = mean_cache_.clone();
  for (size_t k = 0; k < modes_.size(); ++k)
    if (!grams_cache_[k].is_same(grams_[k])) grams_[k].copy_(grams_cache_[k]);
  invalidate();
  const int64_t na = count_, nb = other.count_, n = na + nb;
  const auto delta = mean_b - mean_a;
  for (size_t k = 0; k < modes_.size(); ++k) {
    grams_[k] += grams_b[k].to(dev);
    if (center_)
      unisub::detail::syrk_lower(grams_[k], unfolding(delta, modes_[k]), 1.0,
                                 static_cast<double>(na) * static_cast<double>(nb) / static_cast<double>(n));
  }
  shift_.copy_(mean_a.add_(delta, static_cast<double>(nb) / static_cast<double>(n)));
  shift_sum_.zero_();
  sum_is_zero_ = true;
  count_ = n;
  float32_models_ += other.float32_models_;
  float32_energy_ += other.float32_energy_;
}

void ModeAccumulator::load(int64_t count, const at::Tensor& mean, at::TensorList grams, int64_t float32_models,
                           double float32_energy) {
  TORCH_CHECK_VALUE(count >= 0, "ModeAccumulator.load: count must be >= 0, got ", count);
  TORCH_CHECK_VALUE(float32_models >= 0 && float32_models <= count, "ModeAccumulator.load: float32_models must lie in [0, ",
                    count, "], got ", float32_models);
  TORCH_CHECK_VALUE(float32_energy >= 0, "ModeAccumulator.load: float32_energy must be >= 0, got ", float32_energy);
  TORCH_CHECK_VALUE(grams.size() == modes_.size(), "ModeAccumulator.load: need one Gram per mode (",
                    modes_.size(), "), got ", grams.size());
  // copy_ would broadcast a wrong-shaped tensor into the buffer without a word
  TORCH_CHECK_VALUE(mean.defined() && mean.sizes() == shift_.sizes(), "ModeAccumulator.load: mean must have shape ",
                    shape_text(shift_.sizes()), ", got ", mean.defined() ? shape_text(mean.sizes()) : "None");
  for (size_t k = 0; k < modes_.size(); ++k)
    TORCH_CHECK_VALUE(grams[k].defined() && grams[k].sizes() == grams_[k].sizes(), "ModeAccumulator.load: the Gram of mode ",
                      modes_[k], " must have shape ", shape_text(grams_[k].sizes()), ", got ",
                      grams[k].defined() ? shape_text(grams[k].sizes()) : "None");
  at::NoGradGuard no_grad;
  invalidate();
  shift_.copy_(mean);
  shift_sum_.zero_();
  sum_is_zero_ = true;
  for (size_t k = 0; k < modes_.size(); ++k) grams_[k].copy_(grams[k]);
  count_ = count;
  float32_models_ = float32_models;
  float32_energy_ = float32_energy;
}

ModeAccumulator::RawState ModeAccumulator::raw_state() const {
  RawState s;
  s.count = count_, s.float32_models = float32_models_, s.float32_energy = float32_energy_;
  s.shift = shift_, s.shift_sum = shift_sum_;
  for (const auto& G : grams_) {
    unisub::detail::mirror_lower_(G);  // symmetric on disk; the upper triangle is not state
    s.grams.push_back(G);
  }
  return s;
}

void ModeAccumulator::load_raw(const RawState& s) {
  load(s.count, s.shift, s.grams, s.float32_models, s.float32_energy);
  TORCH_CHECK_VALUE(s.shift_sum.defined() && s.shift_sum.sizes() == shift_.sizes(),
                    "ModeAccumulator.load_raw: the shift sum must have shape ", shape_text(shift_.sizes()));
  shift_sum_.copy_(s.shift_sum);
  sum_is_zero_ = false;
}

// ---- DeltaAccumulator ---------------------------------------------------------------------------

DeltaAccumulator::DeltaAccumulator(int64_t m, int64_t n, bool center, at::Device device)
    : m_(m), n_(n), center_(center), device_(device) {
  TORCH_CHECK_VALUE(m >= 1 && n >= 1, "DeltaAccumulator: shape must be (m, n) with m, n >= 1, got (", m, ", ", n, ")");
}

void DeltaAccumulator::check_factors(const char* what) const {
  TORCH_CHECK_VALUE(!released_, "DeltaAccumulator.", what,
                    ": the factors were released (release_factors, which a finished slot calls); only K, the ids, "
                    "scalings and ranks remain");
}

DeltaAccumulator::~DeltaAccumulator() { drop_store(); }

void DeltaAccumulator::drop_store() {
  B_.clear(), A_.clear();
  Bt_store_ = at::Tensor(), A_store_ = at::Tensor();
  detail::keep_store_bytes(std::move(store_bytes_));  // leaves store_bytes_ undefined
}

void DeltaAccumulator::release_factors() {
  if (released_) return;
  if (count() > 0) gram(/*center=*/false);  // cached
  released_ranks_ = ranks();
  drop_store();
  released_ = true;
}

std::vector<int64_t> DeltaAccumulator::ranks() const {
  if (released_) return released_ranks_;
  std::vector<int64_t> r;
  for (const auto& b : B_) r.push_back(b.size(1));
  return r;
}

std::vector<at::Tensor> DeltaAccumulator::B() const {
  check_factors("B");
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < B_.size(); ++i) out.push_back(B_[i].to(types_[i].first));
  return out;
}

std::vector<at::Tensor> DeltaAccumulator::A() const {
  check_factors("A");
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < A_.size(); ++i) out.push_back(A_[i].to(types_[i].second));
  return out;
}

void DeltaAccumulator::add(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id) {
  check_factors("add");
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
  TORCH_CHECK_VALUE(unisub::detail::all_finite(B) && unisub::detail::all_finite(A),
                    "DeltaAccumulator.add: the factors hold NaN or infinity; every model must be finite");
  if (id < 0) id = ids_.empty() ? 0 : *std::max_element(ids_.begin(), ids_.end()) + 1;
  TORCH_CHECK_VALUE(std::find(ids_.begin(), ids_.end(), id) == ids_.end(), "DeltaAccumulator.add: model id ", id,
                    " is already in this accumulator; give each model a distinct id");
  at::NoGradGuard no_grad;
  // the copy into the store (and a cast where it is wider), B laid out as Bᵀ
  ScopedStage stage("convert", static_cast<uint64_t>(B.nbytes() + A.nbytes()));
  append(B.detach(), A.detach(), scaling, id);
  K_ = at::Tensor();
}

void DeltaAccumulator::reserve(int64_t models) {
  TORCH_CHECK_VALUE(models >= 0, "DeltaAccumulator.reserve: models must be >= 0, got ", models);
  reserved_ = std::max(reserved_, models);
  if (Bt_store_.defined() && reserved_ > Bt_store_.size(0))
    grow(reserved_, Bt_store_.size(1), Bt_store_.scalar_type());
}

void DeltaAccumulator::grow(int64_t capacity, int64_t rank_capacity, at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(dtype).device(device_);
  // empty, not zeros: rows past the count are never read, so their pages are never touched (nor
  // cleared, where the bytes are a kept store's)
  at::Tensor Bt, A, bytes;
  if (device_.is_cpu()) {
    const int64_t size = static_cast<int64_t>(c10::elementSize(dtype));
    const int64_t bt_bytes = capacity * rank_capacity * m_ * size, a_bytes = capacity * rank_capacity * n_ * size;
    const int64_t a_offset = (bt_bytes + 63) / 64 * 64;
    bytes = detail::take_store_bytes(a_offset + a_bytes);
    Bt = bytes.narrow(0, 0, bt_bytes).view(dtype).view({capacity, rank_capacity, m_});
    A = bytes.narrow(0, a_offset, a_bytes).view(dtype).view({capacity, rank_capacity, n_});
  } else {
    Bt = at::empty({capacity, rank_capacity, m_}, opts), A = at::empty({capacity, rank_capacity, n_}, opts);
  }
  const int64_t M = count();
  if (M > 0) {
    const int64_t old_rank = Bt_store_.size(1);
    Bt.narrow(0, 0, M).narrow(1, 0, old_rank).copy_(Bt_store_.narrow(0, 0, M));
    A.narrow(0, 0, M).narrow(1, 0, old_rank).copy_(A_store_.narrow(0, 0, M));
    if (rank_capacity > old_rank) {
      Bt.narrow(0, 0, M).narrow(1, old_rank, rank_capacity - old_rank).zero_();
      A.narrow(0, 0, M).narrow(1, old_rank, rank_capacity - old_rank).zero_();
    }
  }
  Bt_store_ = std::move(Bt), A_store_ = std::move(A);
  for (int64_t i = 0; i < M; ++i) {
    const int64_t r = B_[i].size(1);
    B_[i] = Bt_store_[i].narrow(0, 0, r).t(), A_[i] = A_store_[i].narrow(0, 0, r);
  }
  store_bytes_ = std::move(bytes);  // the old block freed (not kept: it is smaller)
}

void DeltaAccumulator::append(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id) {
  const int64_t M = count(), r = B.size(1);
  const auto stored = at::promote_types(B.scalar_type(), A.scalar_type());
  if (!Bt_store_.defined()) {
    grow(std::max<int64_t>({M + 1, reserved_, 16}), r, stored);
  } else {
    const auto dtype = at::promote_types(Bt_store_.scalar_type(), stored);
    const int64_t rank_capacity = std::max(Bt_store_.size(1), r), capacity = Bt_store_.size(0);
    if (M + 1 > capacity || rank_capacity > Bt_store_.size(1) || dtype != Bt_store_.scalar_type())
      grow(M + 1 > capacity ? std::max(2 * capacity, M + 1) : capacity, rank_capacity, dtype);
  }
  auto Bt_i = Bt_store_[M], A_i = A_store_[M];
  unisub::detail::transpose_copy(B, Bt_i.narrow(0, 0, r));  // a cast where the store is wider: exact
  unisub::detail::serial_copy(A, A_i.narrow(0, 0, r));
  if (r < Bt_store_.size(1)) {  // zero padding: no B·A changes
    Bt_i.narrow(0, r, Bt_store_.size(1) - r).zero_();
    A_i.narrow(0, r, A_store_.size(1) - r).zero_();
  }
  B_.push_back(Bt_i.narrow(0, 0, r).t());
  A_.push_back(A_i.narrow(0, 0, r));
  types_.emplace_back(B.scalar_type(), A.scalar_type());
  scalings_.push_back(scaling);
  ids_.push_back(id);
}

void DeltaAccumulator::merge(const DeltaAccumulator& o) {
  check_factors("merge");
  o.check_factors("merge");
  if (o.count() == 0) return;
  TORCH_CHECK_VALUE(o.m_ == m_ && o.n_ == n_ && o.center_ == center_, "DeltaAccumulator.merge: incompatible accumulators: shape (",
                    o.m_, ", ", o.n_, ") vs (", m_, ", ", n_, "), center ", o.center_, " vs ", center_);
  for (auto id : o.ids_)
    TORCH_CHECK_VALUE(std::find(ids_.begin(), ids_.end(), id) == ids_.end(), "DeltaAccumulator.merge: model id ", id,
                      " is in both accumulators; give each model a distinct id");
  at::NoGradGuard no_grad;
  reserve(count() + o.count());
  for (int64_t i = 0; i < o.count(); ++i) {
    // o's store may be wider than the factors it was given: cast back to them, exactly
    append(o.B_[i].to(device_, o.types_[i].first), o.A_[i].to(device_, o.types_[i].second), o.scalings_[i],
           o.ids_[i]);
  }
  K_ = at::Tensor();
}

void DeltaAccumulator::sort_by_id() {
  std::vector<size_t> order(ids_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids_[a] < ids_[b]; });
  if (std::is_sorted(order.begin(), order.end())) return;
  check_factors("sort_by_id");
  auto permute = [&](auto& v) {
    auto old = v;
    for (size_t i = 0; i < order.size(); ++i) v[i] = old[order[i]];
  };
  permute(types_), permute(scalings_), permute(ids_);
  // the store itself in the new order (model i's factors in row i), so that factors() stays a view
  at::NoGradGuard no_grad;
  const int64_t M = count();
  std::vector<int64_t> index(order.begin(), order.end());
  const auto idx = at::tensor(index, at::TensorOptions().dtype(at::kLong).device(device_));
  std::vector<int64_t> old_ranks = ranks();
  Bt_store_.narrow(0, 0, M).copy_(Bt_store_.narrow(0, 0, M).index_select(0, idx));
  A_store_.narrow(0, 0, M).copy_(A_store_.narrow(0, 0, M).index_select(0, idx));
  for (int64_t i = 0; i < M; ++i) {
    const int64_t r = old_ranks[order[i]];
    B_[i] = Bt_store_[i].narrow(0, 0, r).t(), A_[i] = A_store_[i].narrow(0, 0, r);
  }
  K_ = at::Tensor();
}

std::pair<at::Tensor, at::Tensor> DeltaAccumulator::factors(at::ScalarType dtype, bool fold_scaling) const {
  check_factors("factors");
  TORCH_CHECK_VALUE(count() > 0, "DeltaAccumulator: no models were accumulated");
  const auto ranks_ = ranks();
  const int64_t M = count(), r = *std::max_element(ranks_.begin(), ranks_.end());
  // The store holds B laid out [M, r, m], returned as its [M, m, r] view: lora_gram's concatenated
  // Bᵀ is then a view of it. In the store's dtype and unscaled, both are views (no copy at all).
  const auto Bt = Bt_store_.narrow(0, 0, M).narrow(1, 0, r), A = A_store_.narrow(0, 0, M).narrow(1, 0, r);
  if (!fold_scaling && dtype == Bt.scalar_type()) return {Bt.transpose(1, 2), A};
  if (!fold_scaling) return {Bt.to(dtype).transpose(1, 2), A.to(dtype)};
  // s·B in float64, then cast: s·B rounded to B's own (e.g. float32) precision lost 1.7e-8
  const auto s = at::tensor(scalings_, kF64).to(device_).view({M, 1, 1});
  return {(Bt.to(at::kDouble) * s).to(dtype).transpose(1, 2), A.to(dtype)};
}

namespace {

// K's diagonal without the scalings, exactly: K⁰_ii = ⟨B_i A_i, B_i A_i⟩ = Σ (B_iᵀB_i)∘(A_iA_iᵀ) in
// float64 from the stacked factors (Bt [M, r, m], A [M, r, n]); on a GPU 8 models a batched
// product.
at::Tensor exact_unscaled_diagonal(const at::Tensor& Bt, const at::Tensor& A) {
  const int64_t M = Bt.size(0), r = Bt.size(1);
  auto d = at::empty({M}, kF64.device(Bt.device()));
  if (!Bt.device().is_cpu()) {
    constexpr int64_t chunk = 8;
    for (int64_t i = 0; i < M; i += chunk) {
      const int64_t c = std::min(chunk, M - i);
      const auto b = Bt.narrow(0, i, c).to(at::kDouble), a = A.narrow(0, i, c).to(at::kDouble);
      d.narrow(0, i, c).copy_((b.bmm(b.transpose(1, 2)) * a.bmm(a.transpose(1, 2))).sum({1, 2}));
    }
    return d;
  }
  // On the CPU one model at a time per thread, into buffers of the thread's own: a model's float64
  // copy (1 MiB at r = 16, m = n = 4096) stays in the core's L2 for its two products, and nothing is
  // allocated per model (the batched version's fresh 4 MiB copies faulted their pages in every
  // time: 62 ms a module, against the 15 ms its multiply-adds take). The buffers are page-aligned
  // because MKL's single-threaded products round according to where their operands lie (see
  // gram.cpp), and the diagonal must be the same in every run.
  double* out = d.data_ptr<double>();
  const auto cpu = at::Device(at::kCPU);
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    const unisub::detail::SequentialBlas one_thread;
    using unisub::detail::page_aligned_empty;
    const auto b = page_aligned_empty({r, Bt.size(2)}, at::kDouble, cpu);
    const auto a = page_aligned_empty({r, A.size(2)}, at::kDouble, cpu);
    auto gb = page_aligned_empty({r, r}, at::kDouble, cpu), ga = page_aligned_empty({r, r}, at::kDouble, cpu);
    for (int64_t i = begin; i < end; ++i) {
      unisub::detail::shifted_copy(Bt[i], at::Tensor(), b);
      unisub::detail::shifted_copy(A[i], at::Tensor(), a);
      at::mm_out(gb, b, b.t());
      at::mm_out(ga, a, a.t());
      const double* x = gb.const_data_ptr<double>();
      const double* y = ga.const_data_ptr<double>();
      double sum = 0;
      for (int64_t t = 0; t < r * r; ++t) sum += x[t] * y[t];
      out[i] = sum;
    }
  });
  return d;
}

}  // namespace

at::Tensor DeltaAccumulator::gram(bool center) {
  if (!K_.defined()) {
    check_factors("gram");  // K was dropped (set_gram_precision) after the factors were
    at::NoGradGuard no_grad;
    // the unavoidable work: K = Σ-blocks of (BᵀB)∘(AAᵀ) over the stored ranks, (Σr)²(m+n)/2
    double rank_sum = 0;
    for (auto r : ranks()) rank_sum += static_cast<double>(r);
    const double madds = rank_sum * rank_sum * static_cast<double>(m_ + n_) / 2;
    bool all_16_bit = true;
    double u_in = 0;  // the coarsest rounding among the factors
    for (const auto& [tb, ta] : types_) {  // as given, whatever the store widened them to
      all_16_bit = all_16_bit && is_16_bit(tb) && is_16_bit(ta);
      u_in = std::max({u_in, unit_roundoff(tb), unit_roundoff(ta)});
    }
    Json info = Json::object();
    info["rule"] = gram_precision_name(precision_);
    info["reduction"] = "float64";
    const bool try_float32 = precision_ == GramPrecision::Float32 || (precision_ == GramPrecision::Auto && all_16_bit);
    if (try_float32) {
      // The factors as they are, the scalings applied to K afterwards in float64 (K_ij = s_i s_j
      // K⁰_ij): no s·B is ever rounded. The store itself, in its own dtype (the GEMM tiles convert
      // panels to float32 as they go, exactly for 16-bit factors): no working copy, where a float32
      // one was twice the factors (262 MB for 500 rank-16 float16 adapters of a 4096 × 4096 module).
      const auto [B, A] = factors(Bt_store_.scalar_type(), /*fold_scaling=*/false);
      const auto s = at::tensor(scalings_, kF64).to(device_);
      bool amx = false;  // whether the tiles ran on AMX (said in the report)
      {
        ScopedStage stage("gram_float32", 0, madds);
        // lora_gram's float64 K (the op casts it to the factors' float32)
        K_ = unisub::detail::lora_gram_f64(B, A, /*center=*/false, at::kFloat, &amx);
        K_.mul_(s.unsqueeze(1) * s.unsqueeze(0));
      }
      if (precision_ == GramPrecision::Auto) {
        // The float32 GEMMs' error, measured where an exact value is cheap (the diagonal: M·r²(m+n)
        // multiply-adds, 2/M of K's), taken 4× as the error of every K_ij relative to
        // √(K_ii K_jj); then ‖E‖₂ <= ‖E‖_F <= est·trace K bounds what every centred eigenvalue
        // moves (Weyl). Centring cancels what the models share, so trace K / trace HKH amplifies it.
        ScopedStage stage("gram_check");
        const auto exact = exact_unscaled_diagonal(B.transpose(1, 2), A) * s.square();
        const auto diag = K_.diagonal();
        const double rel = ((diag - exact).abs() / exact.clamp_min(std::numeric_limits<double>::min())).max().item<double>();
        const double est = std::max(4 * rel, unit_roundoff(at::kFloat));
        const double trace = exact.sum().item<double>();
        diag.copy_(exact);
        const double trace_c = trace - K_.sum().item<double>() / static_cast<double>(count());
        const double relative = trace_c > 0 ? est * trace / trace_c : std::numeric_limits<double>::infinity();
        info["estimated_relative_error"] = relative;
        info["tolerance"] = u_in / 8;
        if (!(relative <= u_in / 8)) K_ = at::Tensor();  // not good enough for these inputs: float64
      }
      if (K_.defined()) {
        info["gemm"] = "float32";
        // which float32 GEMMs: exact split products on AMX tiles, or the BLAS on converted panels
        if (device_.is_cpu()) info["float32_kernel"] = amx ? "amx_bfloat16_split" : "blas";
      }
    }
    if (!K_.defined()) {
      // The store as it is, float64 GEMMs (the tiles convert panels as they go; no float64 copy of
      // every factor), the scalings applied to K afterwards as on the float32 route.
      const auto [B, A] = factors(Bt_store_.scalar_type(), /*fold_scaling=*/false);
      const auto s = at::tensor(scalings_, kF64).to(device_);
      ScopedStage stage("gram", 0, madds);
      K_ = unisub::detail::lora_gram_f64(B, A, /*center=*/false, at::kDouble);
      K_.mul_(s.unsqueeze(1) * s.unsqueeze(0));
      info["gemm"] = "float64";
    }
    precision_json_ = info.dump();
  }
  return center ? double_center(K_) : K_.clone();
}

at::Tensor DeltaAccumulator::combine(const at::Tensor& weights) const {
  check_factors("combine");
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
