// The reader's Checkpoint as the TorchScript class torch.classes.unisub.Checkpoint holds it
// (registered in reader_bindings.cpp), for the other bindings that take one (engine_bindings.cpp).
#pragma once
#include <torch/custom_class.h>

#include "analysis/reader.h"

namespace unisub::analysis {

struct CheckpointHolder : torch::CustomClassHolder {
  Checkpoint ck;
};

}  // namespace unisub::analysis
