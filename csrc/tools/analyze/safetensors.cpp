#include "safetensors.h"

namespace unisub_tool {

bool analysable(const std::string& dtype) {
  return dtype == "F64" || dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

}  // namespace unisub_tool
