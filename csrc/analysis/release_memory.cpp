// Handing freed heap memory back to the OS between slots, for both front ends (release_memory.h).
#include "analysis/release_memory.h"

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
