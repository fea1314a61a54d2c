// Handing freed heap memory back to the OS between slots, for both front ends (release_memory.h).
#include "analysis/release_memory.h"

// First, for __GLIBC__: it is defined by the C library's own headers, and tested before any was
// included it never was, so this function did nothing (the C++ tool's slots never trimmed).
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace unisub::analysis {

void release_freed_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace unisub::analysis
