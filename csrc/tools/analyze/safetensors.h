// The tool's own error for models that do not fit together, and the dtypes it analyses. Reading and
// writing are libunisub's (csrc/analysis/reader.h, writer.h).
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

}  // namespace unisub_tool
