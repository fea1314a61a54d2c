// The analysis job's streaming accumulators, the one implementation behind unisub.SubspaceAccumulator /
// unisub.LoraDeltaAccumulator (Python, through torch.classes.unisub.*) and unisub-analyze (C++).
//
// ModeAccumulator: for a slot of m × n matrices, the model count, the mean and the centred Gram of
// each requested mode ("out": m × m, "in": n × n), in float64. Centring is exact and stable: each
// batch is centred on its own mean, its Gram taken with gram_update_, and parts are combined with
// the pairwise update of Chan, Golub and LeVeque: for parts a, b with counts n_a, n_b, means μ_a, μ_b
// and δ = μ_b − μ_a,
//     G = G_a + G_b + (n_a n_b / n) · δ δᵀ   (mode out; δᵀ δ for mode in),  μ = μ_a + (n_b / n) δ.
// Nothing is subtracted from a large uncentred sum, so a stack with a large common offset loses no
// more than its own rounding.
//
// DeltaAccumulator: mode 0 (the model axis) of LoRA deltas ΔW_i = s_i·B_i·A_i of one module. Its
// Gram K_ij = ⟨ΔW_i, ΔW_j⟩ couples every pair of models, so the factors are kept (as read: their own
// dtype and rank) and K is computed once by lora_gram, in float64 with s folded into B in float64.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace unisub::analysis {

// 1 for "out", 2 for "in" (the dim of gram_update_ on a [1, m, n] model); an error otherwise.
int64_t mode_dim(const std::string& mode);

class ModeAccumulator {
 public:
  // modes: a non-empty subset of {"out", "in"} without repeats.
  ModeAccumulator(int64_t m, int64_t n, std::vector<std::string> modes, bool center, at::Device device);

  // Adds a batch of [m, n] models of any floating dtype and device. A NaN or infinity anywhere is
  // refused (naming the model's index in the batch) before this accumulator changes.
  void update(at::TensorList models);
  // Folds `other` (same shape, modes and centring) into this one.
  void merge(const ModeAccumulator& other);
  // Replaces the state (resume, all-reduce): count, mean [m, n] and one Gram per mode, in modes'
  // order, each checked for its shape; values are copied.
  void load(int64_t count, const at::Tensor& mean, at::TensorList grams);

  int64_t rows() const { return m_; }
  int64_t cols() const { return n_; }
  int64_t count() const { return count_; }
  bool center() const { return center_; }
  const std::vector<std::string>& modes() const { return modes_; }
  at::Device device() const { return mean_.device(); }
  const at::Tensor& mean() const { return mean_; }
  const at::Tensor& gram(const std::string& mode) const;
  const std::vector<at::Tensor>& grams() const { return grams_; }

 private:
  // δ-buffer: float64 [m, n] scratch for μ_b − μ_a (nullopt: a fresh one).
  void merge_parts(int64_t other_count, const at::Tensor& other_mean, const std::vector<at::Tensor>& other_grams,
                   std::optional<at::Tensor> delta_buffer);
  void check_compatible(const ModeAccumulator& other, const char* what) const;

  int64_t m_, n_;
  std::vector<std::string> modes_;
  bool center_;
  int64_t count_ = 0;
  at::Tensor mean_;
  std::vector<at::Tensor> grams_;
  // update()'s float64 buffers, allocated on first use and kept: one batch mean, one Gram per mode
  // and one model. Without them every batch allocated and freed slot-sized blocks, and glibc's
  // heap kept their pages resident (the streamed job's peak grew with its number of batches).
  at::Tensor batch_mean_, model_;
  std::vector<at::Tensor> batch_grams_;
};

class DeltaAccumulator {
 public:
  // (m, n): ΔW's shape; m, n >= 1.
  DeltaAccumulator(int64_t m, int64_t n, bool center, at::Device device);

  // One model: B [m, r], A [r, n] (floating, finite), ΔW = scaling · B · A; id distinct from the
  // ids held (negative: one after the largest so far).
  void add(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id = -1);
  // Appends `other`'s models (ids must be disjoint).
  void merge(const DeltaAccumulator& other);
  // Orders the models by id (what all-reduce and resume need to equal one process in id order).
  void sort_by_id();

  int64_t rows() const { return m_; }
  int64_t cols() const { return n_; }
  int64_t count() const { return static_cast<int64_t>(B_.size()); }
  bool center() const { return center_; }
  at::Device device() const { return device_; }
  const std::vector<at::Tensor>& B() const { return B_; }
  const std::vector<at::Tensor>& A() const { return A_; }
  const std::vector<double>& scalings() const { return scalings_; }
  const std::vector<int64_t>& ids() const { return ids_; }
  std::vector<int64_t> ranks() const;

  // All models' factors stacked, zero-padded to the largest rank (no B·A changes), the scaling
  // folded into B in float64 before any cast: B [M, m, r_max], A [M, r_max, n] of `dtype`.
  std::pair<at::Tensor, at::Tensor> factors(at::ScalarType dtype = at::kDouble) const;
  // K [M, M] (float64) over the models in their current order, double centred (H K H) when
  // `center`; the uncentred K is computed once (lora_gram) and cached until the models change.
  at::Tensor gram(bool center);
  // Σ_i w_ik ΔW_i for each column k of weights [M, k]: the low-rank product
  // [w_1k s_1 B_1 … w_Mk s_M B_M] · [A_1; …; A_M], float64 [k, m, n].
  at::Tensor combine(const at::Tensor& weights) const;

 private:
  int64_t m_, n_;
  bool center_;
  at::Device device_;
  std::vector<at::Tensor> B_, A_;
  std::vector<double> scalings_;
  std::vector<int64_t> ids_;
  at::Tensor K_;  // uncentred, cached
};

// H K H with H = I − 11ᵀ/M: the Gram of the rows minus their mean, from their Gram.
at::Tensor double_center(const at::Tensor& K);

}  // namespace unisub::analysis
