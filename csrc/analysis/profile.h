// Where an analysis run's time goes, by stage, for both front ends (`--profile`, issue #17): each
// stage's seconds, bytes, calls and, for the Gram stages, multiply-adds, so that a Gram's speed can
// be set against the machine's GEMM rate measured in the same run. The library times its own
// stages (read, convert, gram, eigh, null, split_half, report, write); the counters are process-wide and cheap
// (one clock read at each end of a stage, under a mutex).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace unisub::analysis {

void profile_add(const char* stage, double seconds, uint64_t bytes = 0, double multiply_adds = 0);
void profile_reset();
// {"stages": {stage: {"seconds", "bytes", "calls", "multiply_adds", "gemm_fraction"}}, "gemm_rate":
// {"float64": madd/s, "float32": madd/s}, "total_seconds"}; with measure_gemm, the float64 and
// float32 GEMM rates are measured now (~0.2 s) and each Gram stage's fraction of its rate given.
std::string profile_json(bool measure_gemm);
// The same as a table for people.
std::string profile_table(const std::string& json);

// Times a stage from construction to destruction. A stage opened inside another on the same
// thread (the nulls inside the report) is counted for itself and not again for the enclosing one,
// so the stages' seconds add up to the time they cover.
class ScopedStage {
 public:
  explicit ScopedStage(const char* stage, uint64_t bytes = 0, double multiply_adds = 0);
  ~ScopedStage();
  ScopedStage(const ScopedStage&) = delete;
  ScopedStage& operator=(const ScopedStage&) = delete;

 private:
  const char* stage_;
  uint64_t bytes_;
  double madds_;
  std::chrono::steady_clock::time_point start_;
  double nested_ = 0;           // seconds of the stages opened inside this one
  ScopedStage* enclosing_;      // the stage this one was opened in (this thread), or null
};

}  // namespace unisub::analysis
