#pragma once
// Helpers shared by the Boost.Test files.
#include <c10/util/Exception.h>

#include <string>

namespace unisub::test {

// The message of the c10::Error that f throws, or "" when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace unisub::test
