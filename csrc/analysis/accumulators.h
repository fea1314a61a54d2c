// The analysis job's streaming accumulators, the one implementation behind unisub.SubspaceAccumulator /
// unisub.LoraDeltaAccumulator (Python, through torch.classes.unisub.*) and unisub-analyze (C++).
//
// ModeAccumulator: for a slot of m × n matrices, the model count, the mean and the centred Gram of
// each requested mode ("out": m × m, "in": n × n), summed in float64. Centring is exact and stable
// without a merge per batch (whose correction costs one model's Gram): models are centred on a
// shift μ₀ (the first batch's mean; the mean itself after a merge or load), and the accumulator
// keeps S = Σ (xᵢ − μ₀) beside G₀ = Σ (xᵢ − μ₀)(xᵢ − μ₀)ᵀ. When read, the mean is μ₀ + S/n and the
// centred Gram G₀ − S Sᵀ/n (mode out; Sᵀ S for in): one correction per read, not per batch. μ₀ lies
// within a batch mean of the data, so the correction is small beside G₀ and nothing is subtracted
// from a large uncentred sum: a stack with a large common offset loses no more than its rounding.
// Accumulators are combined with the pairwise update of Chan, Golub and LeVeque: for parts a, b with
// counts n_a, n_b, means μ_a, μ_b and δ = μ_b − μ_a,
//     G = G_a + G_b + (n_a n_b / n) · δ δᵀ   (mode out; δᵀ δ for mode in),  μ = μ_a + (n_b / n) δ.
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
#include "analysis/store_reuse.h"

namespace unisub::analysis {

// How a Gram's multiply-adds run (docs/analysis.md, "Precision of the Grams"):
//   Float64: float64 GEMMs throughout;
//   Float32: float32 GEMMs, each over at most kFloat32Columns columns, summed in float64;
//   Auto:    Float32 where it cannot change what the inputs hold (16-bit inputs: the Gram's added
//            error stays under 1/16 of what their own rounding can put there), Float64 otherwise.
enum class GramPrecision { Float64, Float32, Auto };
GramPrecision parse_gram_precision(const std::string& name);  // "float64", "float32" or "auto"
std::string gram_precision_name(GramPrecision p);
// Columns per float32 GEMM of a mode Gram: the Gram's error is then at most (kFloat32Columns + 2)·u₃₂
// = 2.7e-5 of Σ‖xᵢ − μ₀‖² (μ₀ the shift), under kAutoTolerance16 = u₁₆ / 8 = 6.1e-5 of the centred
// trace while that sum is below 2.27 times the trace (the first batch's mean as μ₀ gives about
// 1 + 1/batch). u₁₆ / 8 is a sixteenth of 2·u₁₆·trace, what rounding the models to float16 can
// already move the centred Gram by.
constexpr int64_t kFloat32Columns = 448;
constexpr double kAutoTolerance16 = 1.0 / (8 * 2048);
// Auto keeps float64 for a batch with fewer columns than this in a mode's unfolding: a float32 GEMM
// that short costs less than adding its float32 Gram into the float64 one (measured: 4096 × 128
// columns of LoRA factors took 1.17 s in float32 against 0.16 s in float64).
constexpr int64_t kFloat32MinColumns = 256;
// The unit roundoff of a floating dtype (2⁻¹¹ for float16, 2⁻⁸ bfloat16, 2⁻²⁴ float32, 2⁻⁵³ float64).
double unit_roundoff(at::ScalarType dtype);

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
  // Replaces the state (all-reduce, a state dict): count, mean [m, n] and one centred Gram per
  // mode, in modes' order, each checked for its shape; values are copied. float32_models /
  // float32_energy: how many of the count went through float32 GEMMs and their Σ‖xᵢ − μ₀‖² (what
  // the report's bound on the Gram's error is relative to).
  void load(int64_t count, const at::Tensor& mean, at::TensorList grams, int64_t float32_models = 0,
            double float32_energy = 0);

  // The state as accumulated (partial states of a run: a resumed run continues bit for bit as one
  // that never stopped, which a state read through mean()/grams() would not give).
  struct RawState {
    int64_t count = 0, float32_models = 0;
    double float32_energy = 0;
    at::Tensor shift, shift_sum;   // μ₀ and S, float64 [m, n]
    std::vector<at::Tensor> grams;  // G₀ per mode, float64, symmetric
  };
  RawState raw_state() const;
  void load_raw(const RawState& state);

  // Float64 unless set. With Auto each batch takes float32 GEMMs when all its models are
  // float16 / bfloat16 (see kFloat32Columns) and it gives each mode at least kFloat32MinColumns
  // columns, float64 otherwise; Float32 forces them.
  void set_gram_precision(GramPrecision p) { precision_ = p; }
  GramPrecision gram_precision() const { return precision_; }
  int64_t float32_models() const { return float32_models_; }
  double float32_energy() const { return float32_energy_; }
  // The slot's Gram precision as a report field (JSON object): GEMM precision, models, bound.
  std::string precision_json() const;

  int64_t rows() const { return m_; }
  int64_t cols() const { return n_; }
  int64_t count() const { return count_; }
  bool center() const { return center_; }
  const std::vector<std::string>& modes() const { return modes_; }
  at::Device device() const { return shift_.device(); }
  // The mean and the centred Grams (formed on first read after a change, then kept until the next).
  const at::Tensor& mean() const;
  const at::Tensor& gram(const std::string& mode) const;
  const std::vector<at::Tensor>& grams() const;

 private:
  // Adds Σ (x − μ₀)(x − μ₀)ᵀ of this batch's models to the lower triangles of G₀.
  void accumulate_shifted(at::TensorList models, bool float32, const char* gram_stage);
  // The folded mean and Grams into the caches (aliases of the state when S is zero).
  void fold() const;
  void invalidate();
  void check_compatible(const ModeAccumulator& other, const char* what) const;

  int64_t m_, n_;
  std::vector<std::string> modes_;
  bool center_;
  GramPrecision precision_ = GramPrecision::Float64;
  int64_t count_ = 0, float32_models_ = 0;
  double float32_energy_ = 0;
  at::Tensor shift_, shift_sum_;
  bool sum_is_zero_ = true;
  // G₀: between reads only the lower triangles are current (a batch adds to them in place).
  std::vector<at::Tensor> grams_;
  mutable bool folded_ = false;
  mutable at::Tensor mean_cache_;
  mutable std::vector<at::Tensor> grams_cache_;
  // update()'s buffers, allocated on first use and kept: the batch mean, the shifted models of a
  // chunk laid out [m, models, n] (both unfoldings are plain views of it) and, for float32 GEMMs,
  // one block row of float32 partial Gram per mode. Without them every batch allocated and freed slot-sized blocks,
  // and glibc's heap kept their pages resident (the streamed job's peak grew with its batches).
  at::Tensor batch_mean_, chunk_;
  std::vector<at::Tensor> grams32_;
};

class DeltaAccumulator {
 public:
  // (m, n): ΔW's shape; m, n >= 1.
  DeltaAccumulator(int64_t m, int64_t n, bool center, at::Device device);
  // Hands its store to a DeltaStoreReuse where one is alive.
  ~DeltaAccumulator();
  DeltaAccumulator(const DeltaAccumulator&) = default;
  DeltaAccumulator& operator=(const DeltaAccumulator&) = default;
  DeltaAccumulator(DeltaAccumulator&&) = default;
  DeltaAccumulator& operator=(DeltaAccumulator&&) = default;

  // One model: B [m, r], A [r, n] (floating, finite), ΔW = scaling · B · A; id distinct from the
  // ids held (negative: one after the largest so far).
  void add(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id = -1);
  // Appends `other`'s models (ids must be disjoint).
  void merge(const DeltaAccumulator& other);
  // Room for `models` models in all, so that the store is allocated once (adding beyond it grows
  // the store by doubling, which copies it).
  void reserve(int64_t models);
  // Orders the models by id (what all-reduce and resume need to equal one process in id order).
  void sort_by_id();
  // Frees the factor store, computing K first where it is not cached: what a finished slot needs
  // afterwards (K, ids, scalings, ranks) stays. The store is most of a delta slot's memory, and the
  // report after the Gram does not read it. The factors are gone after it: B(), A(), factors(),
  // combine(), add(), merge() and sort_by_id() refuse, saying so.
  void release_factors();
  bool factors_released() const { return released_; }

  int64_t rows() const { return m_; }
  int64_t cols() const { return n_; }
  int64_t count() const { return static_cast<int64_t>(ids_.size()); }
  bool center() const { return center_; }
  at::Device device() const { return device_; }
  // Each model's factors in the dtype it was given: views of the store (read-only) where that is
  // the store's dtype, exact casts back where the store is wider.
  std::vector<at::Tensor> B() const;
  std::vector<at::Tensor> A() const;
  const std::vector<double>& scalings() const { return scalings_; }
  const std::vector<int64_t>& ids() const { return ids_; }
  std::vector<int64_t> ranks() const;

  // All models' factors stacked, zero-padded to the largest rank (no B·A changes), the scaling
  // folded into B in float64 before any cast (unless fold_scaling is false: B as stored):
  // B [M, m, r_max], A [M, r_max, n] of `dtype`. Unscaled in the store's own dtype they are views of
  // the store, read-only to the caller.
  std::pair<at::Tensor, at::Tensor> factors(at::ScalarType dtype = at::kDouble, bool fold_scaling = true) const;
  // K [M, M] (float64) over the models in their current order, double centred (H K H) when
  // `center`; the uncentred K is computed once (lora_gram) and cached until the models change.
  // Its GEMMs follow gram_precision(): Float64 unless set; Auto takes float32 GEMMs for 16-bit
  // factors when the error they leave in the centred spectrum, estimated from the diagonal
  // against an exact float64 one, is under u_in / 8 of its trace (else float64).
  at::Tensor gram(bool center);
  void set_gram_precision(GramPrecision p) {
    precision_ = p;
    K_ = at::Tensor();
  }
  GramPrecision gram_precision() const { return precision_; }
  // How the cached K was computed, as a report field (JSON object); empty before gram().
  const std::string& precision_json() const { return precision_json_; }
  // Σ_i w_ik ΔW_i for each column k of weights [M, k]: the low-rank product
  // [w_1k s_1 B_1 … w_Mk s_M B_M] · [A_1; …; A_M], float64 [k, m, n].
  at::Tensor combine(const at::Tensor& weights) const;

 private:
  int64_t m_, n_;
  bool center_;
  at::Device device_;
  // One store per factor, [capacity, rank capacity, m] (Bᵀ) and [capacity, rank capacity, n] (A),
  // model i in row i, zero-padded past its rank, in the widest dtype given (a cast of 16-bit
  // factors to float32 is exact); B_ / A_ are each model's views into them, types_ the dtypes each
  // model's factors came in (the Gram's precision rule is about those).
  at::Tensor Bt_store_, A_store_;
  // On the CPU, both stores are views of this one block of bytes (A's at a 64-byte boundary), which
  // a DeltaStoreReuse can keep for the next accumulator.
  at::Tensor store_bytes_;
  int64_t reserved_ = 0;
  std::vector<at::Tensor> B_, A_;
  std::vector<std::pair<at::ScalarType, at::ScalarType>> types_;
  std::vector<double> scalings_;
  std::vector<int64_t> ids_;
  GramPrecision precision_ = GramPrecision::Float64;
  at::Tensor K_;  // uncentred, cached
  std::string precision_json_;
  bool released_ = false;
  std::vector<int64_t> released_ranks_;  // ranks() once the views into the store are gone

  void check_factors(const char* what) const;
  // Drops the views into the store and the store, handing its bytes to a DeltaStoreReuse.
  void drop_store();

  void grow(int64_t capacity, int64_t rank_capacity, at::ScalarType dtype);
  void append(const at::Tensor& B, const at::Tensor& A, double scaling, int64_t id);
};

// H K H with H = I − 11ᵀ/M: the Gram of the rows minus their mean, from their Gram.
at::Tensor double_center(const at::Tensor& K);

}  // namespace unisub::analysis
