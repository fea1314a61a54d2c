// What lets an interrupted unisub-analyze run lose only the slot it was on: every finished slot's
// report entry is written beside its subspace file (DIR/slots/<slot>.json), and DIR/state holds
// the run's fingerprint (checkpoints with their file sizes, and the options), so `--resume` skips
// finished slots of the same run and refuses another run's state.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace unisub_tool {

class RunState {
 public:
  // Without resume: forgets earlier slot entries and records this run's fingerprint. With resume:
  // the recorded fingerprint must be this one.
  RunState(const std::string& out, const nlohmann::json& fingerprint, bool resume);

  std::string subspace_path(const std::string& slot) const;
  // A slot is finished when both its subspace file and its report entry exist.
  bool finished(const std::string& slot) const;
  nlohmann::json load(const std::string& slot) const;
  // Call after the slot's subspace file is written.
  void save(const std::string& slot, const nlohmann::json& entry) const;

 private:
  std::string out_;
  bool resume_;
  std::string entry_path(const std::string& slot) const;
};

// The file-name form of a slot name.
std::string safe_name(const std::string& slot);

}  // namespace unisub_tool
