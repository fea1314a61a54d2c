// The output folder of an analysis run, one format for both front ends (docs/format.md):
//
//   DIR/report.json                     the whole report (strict JSON), written last
//   DIR/subspaces/<stem>.safetensors    each finished slot's subspace (unisub.subspace/1 or lora_delta/1)
//   DIR/slots/<stem>.json               each finished slot's report entry (what --resume reads back)
//   DIR/state/run.json                  the run's description: sources with sizes and the options
//   DIR/state/partial.rank<R>.safetensors  the accumulators of the slot in progress (process R)
//   DIR/state/lock                      held (flock) while a run writes DIR
//
// <stem> is the slot name when it is made of [A-Za-z0-9._-] only, at most 120 bytes long and not
// ending in '-' and 16 hex digits; otherwise its safe form ('_' for any other byte), cut to 100
// bytes, then '-' and 16 hex digits of the name's FNV-1a hash: "enc/w", "enc_w" and
// "enc_w-086936bee5253521" can never share a file, and no name is too long for a file system.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "analysis/accumulators.h"
#include "analysis/slot_result.h"

namespace unisub::analysis {

std::string slot_file_stem(const std::string& slot);

class OutputFolder {
 public:
  // primary: this process prepares DIR and holds its lock (another run on DIR is refused, naming
  // its pid); other processes of a distributed run attach to a folder the primary prepared.
  // Without resume, earlier slot entries and partial states are removed and run_json recorded;
  // with resume, the recorded description must equal run_json (as JSON values).
  OutputFolder(std::string dir, const std::string& run_json, bool resume, bool primary = true);
  ~OutputFolder();
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;
  void close();  // releases the lock (also done by the destructor and by the process's exit)

  const std::string& dir() const { return dir_; }
  std::string subspace_path(const std::string& slot) const;
  std::string entry_path(const std::string& slot) const;
  // Resuming, and both the slot's subspace file and its report entry exist.
  bool finished(const std::string& slot) const;
  std::string load_entry(const std::string& slot) const;
  // The subspace file first, then the entry: an entry never exists without its file.
  void save_slot(const std::string& slot, const SlotResult& result) const;
  void write_report(const std::string& json_text) const;

  // The slot in progress: its accumulators and the next batch to read, per process.
  void save_partial(const std::string& slot, int64_t next_batch, const ModeAccumulator& even,
                    const ModeAccumulator& odd, int64_t rank_id) const;
  void save_partial(const std::string& slot, int64_t next_batch, const DeltaAccumulator& acc, int64_t rank_id) const;
  // The next batch (0 when no partial state of this slot exists); the accumulators are restored.
  int64_t load_partial(const std::string& slot, ModeAccumulator& even, ModeAccumulator& odd, int64_t rank_id) const;
  int64_t load_partial(const std::string& slot, DeltaAccumulator& acc, int64_t rank_id) const;
  void drop_partial(int64_t rank_id) const;

 private:
  std::string partial_path(int64_t rank_id) const;
  std::string dir_;
  bool resume_;
  int lock_fd_ = -1;
};

}  // namespace unisub::analysis
