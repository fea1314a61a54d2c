// Which of the user's PATHs are models, and in which order: one rule for both front ends.
//
// A folder is one model when it is a PEFT adapter (adapter_config.json) or a Hugging Face model
// folder (config.json, model.safetensors, *.safetensors.index.json or pytorch_model.bin);
// otherwise it is a folder of models, searched recursively for such folders and for weight files
// (*.safetensors, *.pt, *.pth, *.bin). A file is one model. The models are ordered by their path
// (byte order), whatever the order of the PATHs: the reference model, the split halves (even and
// odd positions) and the seeds follow from the files alone. A model found twice, a PATH that does
// not exist and a folder without any model are errors. Symlinked folders are followed unless they
// lead back to a folder searched already or to an ancestor (a cycle, or /proc/self/root).
#pragma once
#include <string>
#include <vector>

namespace unisub::analysis {

struct Source {
  std::string path;
  // "safetensors" (a file), "torch" (a .pt/.pth/.bin pickle: the Python front end reads it with
  // torch.load), "adapter" (a PEFT folder) or "folder" (a Hugging Face model folder)
  std::string kind;
};

std::vector<Source> discover_sources(const std::vector<std::string>& paths);

}  // namespace unisub::analysis
