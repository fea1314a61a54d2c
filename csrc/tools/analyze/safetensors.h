// unisub-analyze's output side: subspace files in safetensors and atomic text files. Reading is
// libunisub's (csrc/analysis/reader.h).
#pragma once
#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace unisub_tool {

// Bad input found by the tool itself (slots missing across models, ...); the reader's own
// refusals are unisub::analysis::ReadError. Both make the tool exit with status 2.
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool analysable(const std::string& dtype);

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::string& metadata_json);

void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace unisub_tool
