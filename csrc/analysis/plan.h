#pragma once
// The slot plan: which tensors an analysis takes, which it skips and why, and what each costs,
// decided once for both front ends (`unisub analyze` passes every model's slot table as JSON
// through torch.ops.unisub.plan_slots; `unisub-analyze` calls plan_slots directly).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "analysis/json_writer.h"

namespace unisub::analysis {

struct PlanTensor {
  std::string dtype;           // safetensors name: F32, BF16, ... (or another name: not analysable)
  std::vector<int64_t> shape;
};

// One model's slot table as its reader gives it.
struct PlanModel {
  std::string name;                                // the file or folder, as errors name the model
  std::map<std::string, PlanTensor> tensors;       // name as analysed -> dtype, shape
  std::map<std::string, std::string> files;        // name as analysed -> the file holding it (optional)
  bool adapter = false;                            // a PEFT adapter (its config gives the LoRA scalings)
  bool dora = false;                               // ... with use_dora
  std::string peft_type;                           // ... its config's peft_type ("" when not said)
  const std::string& file_of(const std::string& key) const;
};

// A Gram above this many bytes (8·d² for a d × d float64 Gram) is not computed unless raised
// (--max-gram-bytes): 2 GiB is d = 16384, an eigh of minutes; BERT's 30522 × 384 word embedding's
// "out" Gram (7.5 GB, ~2.8e13 multiply-adds for its eigh) is beyond it.
constexpr int64_t kDefaultMaxGramBytes = int64_t{2} << 30;
// The rough rate the time estimate assumes (float64 multiply-adds per second, one core; measured
// ~6.5e9 for the Grams of 512-wide slots on the 2-core development machine).
constexpr double kMultiplyAddsPerSecond = 5e9;

struct PlanOptions {
  std::optional<std::vector<std::string>> patterns;  // --slots; nullopt: every analysable tensor
  bool include_1d = false;
  std::vector<std::string> modes{"out", "in"};       // "out", "in", "delta"
  int64_t max_gram_bytes = kDefaultMaxGramBytes;
  int64_t batch_size = 8;
};

struct ModeCost {
  std::string mode;
  int64_t dim = 0;          // the Gram is dim × dim
  int64_t gram_bytes = 0;   // 8·dim²
  double multiply_adds = 0; // M Gram updates (dim²·other each) and three eighs (total, two halves: ~dim³ each)
};

struct PlannedSlot {
  std::string key;
  std::vector<int64_t> shape;   // as stored
  int64_t m = 0, n = 0;         // the matrix it is analysed as
  std::vector<ModeCost> modes;  // the factor modes that run (within the budget)
  int64_t batch = 0;            // models per batch (mode_slot_batch): what both front ends read at a time
  int64_t peak_bytes = 0;       // while this slot runs
  double multiply_adds = 0;
};

// Models per batch of a slot analysed as m × n (itemsize bytes an element as stored): batch_size,
// raised where the models are thin and a Gram large. Each batch adds (its models in one half) ×
// min(m, n) columns to each half's max(m, n)² Gram, and an update of a few dozen columns is bound by
// reading and writing that Gram, not by its multiply-adds (rank-16 LoRA factors of 4096, batches of
// 8: 40 % of the GEMM rate). So where max(m, n) >= 1024 a batch gives each half at least
// kMinHalfUpdateColumns columns, unless that would read more than 64 MiB at a time.
constexpr int64_t kMinHalfUpdateColumns = 512;
int64_t mode_slot_batch(int64_t m, int64_t n, int64_t itemsize, int64_t batch_size);

// A --modes delta module's cost: its factors are kept, K is M × M.
struct PlannedDelta {
  std::string module;
  int64_t m = 0, n = 0;
  int64_t rank_sum = 0;      // Σ over models of the LoRA rank
  int64_t peak_bytes = 0;    // the factor store, lora_gram's buffers, K's and the null's draws
  double multiply_adds = 0;  // (Σr)²(m + n)/2 for K, ~M³ for its eigh and the nulls
};

struct SlotPlan {
  int64_t models = 0;
  std::vector<std::string> selected;           // every tensor taken (the delta modules are found among these)
  std::vector<PlannedSlot> slots;              // those analysed along out / in (empty without those modes)
  std::vector<PlannedDelta> deltas;            // with --modes delta: the modules (their errors are plan_deltas')
  std::map<std::string, std::string> skipped;  // tensor (or "tensor [mode]") -> why
  int64_t peak_bytes = 0;                      // the largest slot's
  double multiply_adds = 0, seconds = 0;       // all slots; seconds at kMultiplyAddsPerSecond
  std::optional<std::string> split_half_note;  // set when the models are too few for split halves
  int64_t max_gram_bytes = 0;
  Json to_json() const;       // the plan (what report.json's "plan" holds)
  std::string json() const { return to_json().dump(); }
  std::string text() const;   // the lines both front ends print before starting
  // report.json's "plan": models, max_gram_bytes, peak_bytes, multiply_adds, seconds, split_half
  std::string totals_json() const;
};

// Bad input found while planning (a named slot missing, of another shape or dtype in some model;
// nothing selected; fewer than 2 models): `path` names the file, `slot` the tensor.
struct PlanError {
  std::string path, message, slot;
  std::string what() const;  // "PATH: slot 'KEY': MESSAGE" or "PATH: MESSAGE", as ReadError
};

// The plan, or the error. Models are taken in the order given (models[0] is the reference). With
// no modes it is the selection alone (`selected` and `skipped` of models[0]; one model will do).
// Throws std::invalid_argument for bad options (an invalid pattern, an unknown mode).
struct PlanResult {
  std::optional<SlotPlan> plan;
  std::optional<PlanError> error;
};
PlanResult plan_slots(const std::vector<PlanModel>& models, const PlanOptions& options);

// module -> (lora_A key, lora_B key) for every module whose two LoRA factors are both among `keys`
// (`<module>.lora_A[.weight]` with `<module>.lora_B[.weight]`, or lora_embedding_A / _B), sorted by
// module name: the rule unisub.io.lora_pairs and the tool both follow.
std::map<std::string, std::pair<std::string, std::string>> lora_pairs(const std::vector<std::string>& keys);

// --modes delta: the modules of which a selected tensor is a LoRA factor, with ΔW's shape (m, n).
// Every model must be a PEFT adapter, not a DoRA one, holding both factors with analysable dtypes,
// equal ranks within a model and the same (m, n) across models (the rank may differ between models).
struct DeltaModulePlan {
  std::string module, a_key, b_key;
  int64_t m = 0, n = 0;
};
struct DeltaPlanResult {
  std::vector<DeltaModulePlan> modules;
  std::map<std::string, std::string> skipped;  // "<module>.delta" -> why (default selections only)
  std::optional<PlanError> error;
};
// `named`: the selection came from --slots patterns. A module that is missing from a model, or
// whose ΔW has another shape or an unreadable dtype there, is then an error naming the file, and
// otherwise skipped with its reason (adapters trained on different target_modules).
DeltaPlanResult plan_deltas(const std::vector<PlanModel>& models, const std::vector<std::string>& selected,
                            bool named = false);

// The (m, n) a tensor is analysed as: conv kernels (C_out, C_in, kh, kw) are C_out × C_in·kh·kw,
// vectors 1 × n; nullopt for scalars.
std::optional<std::pair<int64_t, int64_t>> matrix_shape(const std::vector<int64_t>& shape);
bool analysable_dtype(const std::string& dtype);

}  // namespace unisub::analysis
