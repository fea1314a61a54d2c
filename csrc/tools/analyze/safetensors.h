// A strict safetensors reader and an atomic writer, with errors that name the file and the slot.
// The rules match unisub/io/safetensors.py (the fuzz test checks both accept the same headers).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace unisub_tool {

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // absolute byte offsets in the file
};

struct Header {
  std::string path;
  uint64_t file_size = 0;
  std::map<std::string, TensorInfo> tensors;
};

Header read_header(const std::string& path);

// Maps the file, copies one tensor out and unmaps it (memory stays at one slot).
torch::Tensor read_tensor(const Header& header, const std::string& key);

bool analysable(const std::string& dtype);

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::string& metadata_json);

void write_text_atomically(const std::string& path, const std::string& text);

}  // namespace unisub_tool
