// glibc raises its mmap threshold to the size of the largest block freed so far (up to 32 MiB), so
// after the first slot-sized tensors are freed, later ones come from the heap, and freed heap memory
// stays in the resident set: streaming slot after slot, that retained memory, not live tensors, was
// most of the peak (40 checkpoints of 768 × 768 float16 slots: 205 MiB above the post-import
// process without, ~130 MiB with a trim per batch; 500-adapter delta modules: see RESULTS.md). Both
// front ends call this after each batch of a mode slot and after each slot. About a millisecond a
// call; a no-op without glibc.
#pragma once

namespace unisub::analysis {

void release_freed_memory();

}  // namespace unisub::analysis
