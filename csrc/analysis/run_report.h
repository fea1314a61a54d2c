// The run-level JSON of an analysis, built once for both front ends: the options block, the run
// description resume compares (state/run.json), and report.json around the slots' entries, with
// the summary over slots. Entries and options travel as JSON text.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace unisub::analysis {

struct RunOptions {
  std::vector<std::string> slots, modes, delta_slots;
  std::optional<double> energy;
  std::optional<int64_t> rank;
  bool center = true, scale_lora = true, include_1d = false;
  int64_t batch_size = 8, world = 1, eigen_weights = 0;
  std::vector<double> taus;
  std::vector<int64_t> error_ranks;
  int64_t max_gram_bytes = int64_t{2} << 30;  // the slot plan's Gram budget (plan.h kDefaultMaxGramBytes)
  std::string gram_precision = "float64";      // "auto", "float64" or "float32" (accumulators.h)
};

std::string options_json(const RunOptions& o);

// {"format": "unisub.run/1", "sources": [[name, bytes], ...], "options": ...}
std::string run_json(const std::vector<std::string>& sources, const std::vector<int64_t>& source_bytes,
                     const std::string& options);

// report.json: format, tool, models, sources, options, skipped (slot -> reason), slots (name ->
// entry, in the order given) and the summary over slots, per mode; with a profile (profile_json's
// text, `--profile`) also "profile"; with a plan (the slot plan's totals as JSON text, plan.h) also
// "plan", after "skipped".
std::string report_json(const std::string& tool, const std::vector<std::string>& sources, const std::string& options,
                        const std::vector<std::pair<std::string, std::string>>& skipped,
                        const std::vector<std::pair<std::string, std::string>>& entries,
                        const std::string& profile = "", const std::string& plan = "");

}  // namespace unisub::analysis
