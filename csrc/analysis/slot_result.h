// A finished slot, the one finalisation both front ends call: the subspace file's tensors and
// metadata (formats unisub.subspace/1 and unisub.lora_delta/1, docs/format.md) and the slot's
// report entry. The accumulators' state goes in; nothing else is computed by a front end.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "analysis/accumulators.h"
#include "unisub/analysis.h"

namespace unisub::analysis {

struct SlotResult {
  std::string entry;                                        // the report entry (strict JSON)
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // the subspace file's tensors
  std::string meta;                                         // its "unisub" metadata (JSON)
};

// Components to keep from a descending spectrum: all, capped by `rank` (> 0) and by the τ rule for
// `energy` (in (0, 1]) when given. Errors name a bad rank or energy.
int64_t choose_rank(const at::Tensor& eigenvalues, std::optional<int64_t> rank, std::optional<double> energy);

// Per mode (in the accumulator's order): the whole descending spectrum and the kept leading
// eigenvectors (sign rule of svd) of the centred Gram.
struct ModeSpectra {
  std::vector<at::Tensor> eigenvalues, bases;
};
ModeSpectra mode_spectra(const ModeAccumulator& acc, std::optional<int64_t> rank, std::optional<double> energy);

// A slot analysed along out / in, from its two halves (models of even and odd index): the total is
// their merge; the split-half angles are reported when each half holds >= 2 models.
// metadata_json: a JSON object stored as the file's "metadata" (source files, original shape).
SlotResult finalize_mode_slot(const std::string& slot, const ModeAccumulator& even, const ModeAccumulator& odd,
                              std::optional<int64_t> rank, std::optional<double> energy, int64_t null_seed,
                              const std::string& metadata_json, const ReportOptions& options = {});

// A LoRA-delta slot (model axis): models ordered by id first. eigen_weights = k > 0 also stores the
// top min(k, r) unit-norm eigen-weights and the mean ΔW as dense m × n matrices. release_factors:
// the accumulator's factors are freed as soon as K (and the eigen-weights) are computed, before the
// report (what the job does: the store is most of a slot's memory, and nothing after reads it).
SlotResult finalize_delta_slot(const std::string& slot, DeltaAccumulator& acc, std::optional<int64_t> rank,
                               std::optional<double> energy, int64_t eigen_weights, int64_t null_seed,
                               const std::string& metadata_json, const ReportOptions& options = {},
                               bool release_factors = false);

}  // namespace unisub::analysis
