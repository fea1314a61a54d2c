// The one writer of unisub's output files (subspace files, zoo files, report.json, run state), used
// by both front ends so that their files are byte-identical. Every file is written to a temporary
// name in its folder and renamed over the destination: a crash, a full disk or an interruption
// never leaves a half-written file under the real name. Files are created with mode 0666 less the
// umask, as any other program's (not 0600, as mkstemp would).
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace unisub::analysis {

// A file could not be written (no space, no permission, ...): the message names the file and the
// system's reason.
struct WriteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void write_file_atomically(const std::string& path, const std::string& bytes);

// safetensors bytes: tensors sorted by name, each in its own dtype (contiguous CPU copies are
// made), a compact JSON header padded with spaces to 8 bytes (so the data stays aligned, as the
// reference writer does), `metadata` as the header's "__metadata__" (omitted when empty).
std::string safetensors_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata);
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata);

}  // namespace unisub::analysis
