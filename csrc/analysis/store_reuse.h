// Keeping a released delta store's memory for the next delta accumulator (DeltaStoreReuse).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace unisub::analysis {

// While one is alive, a delta accumulator's CPU store, once released (release_factors, or the
// accumulator's end), is kept for the next accumulator to take instead of being freed: the job's
// delta slots, one after another, then copy their factors into pages already mapped. Touching a
// fresh store's pages (the kernel's page faults and zeroing) cost as much as the copies themselves
// (~0.3 s over the 8 delta modules of 500 rank-16 adapters). One store is kept at most, and only
// one nothing else refers to (no view of it held anywhere); the last one to end frees it. Both front
// ends hold one around their delta slots; outside one, stores are freed when released.
class DeltaStoreReuse {
 public:
  DeltaStoreReuse();
  ~DeltaStoreReuse();
  DeltaStoreReuse(const DeltaStoreReuse&) = delete;
  DeltaStoreReuse& operator=(const DeltaStoreReuse&) = delete;
};

namespace detail {

// A kept block of at least `bytes` bytes (uint8, CPU) where a DeltaStoreReuse is alive and one is
// kept, else a fresh one; a kept block too small is freed first (never two alive at once).
at::Tensor take_store_bytes(int64_t bytes);
// Keeps `bytes` (moved in) where a DeltaStoreReuse is alive, it is a CPU block nothing else refers
// to, and it is larger than the one kept; else lets it go.
void keep_store_bytes(at::Tensor bytes);

}  // namespace detail
}  // namespace unisub::analysis
