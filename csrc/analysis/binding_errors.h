// How the analysis library's own errors cross into Python (torch.classes.unisub.* and ops):
//   ReadError (bad input)   -> ValueError whose message is the C++ one followed by a line
//                              "\x1e" + hex(path) + "\x1f" + hex(slot) + "\x1f" + hex(message), which
//                              unisub.io turns into a CheckpointError with the same text, path and slot;
//   WriteError (the output) -> RuntimeError followed by a line "\x1d" + hex(message), which
//                              unisub.io turns into an OSError subclass (unisub.io.WriteError).
#pragma once
#include <c10/util/Exception.h>

#include <string>

#include "analysis/reader.h"
#include "analysis/writer.h"

namespace unisub::analysis {

inline std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(2 * s.size());
  for (unsigned char c : s) out += digits[c >> 4], out += digits[c & 15];
  return out;
}

template <class F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ReadError& e) {
    throw c10::ValueError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                          std::string(e.what()) + "\n\x1e" + hex(e.path) + "\x1f" + hex(e.slot) + "\x1f" + hex(e.message));
  } catch (const WriteError& e) {
    throw c10::Error({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                     std::string(e.what()) + "\n\x1d" + hex(e.what()));
  }
}

}  // namespace unisub::analysis
