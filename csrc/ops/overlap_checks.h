#pragma once
// Mutating ops refuse memory they cannot write safely: a written tensor whose elements share
// memory with each other (an expanded, stride-0 G) or with any tensor the op reads (G passed as
// its own basis, a slice of it, its transpose). Such calls used to return a wrong result without
// a word: the kernel reads U while it overwrites G. PyTorch's in-place ops refuse the same
// (at::assert_no_overlap); theirs lets interleaved, non-dense views through ("too hard"), ours
// decides those exactly as well.
//
// Cost: O(1) per pair of tensors whose address ranges are disjoint (the normal case); only views
// of one buffer whose ranges interleave are compared run by run (one contiguous run per row).
#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>
#include <vector>

namespace unisub::detail {

struct NamedTensor {
  at::Tensor tensor;
  std::string name;
};

// `written` must not have two elements at one memory location.
void check_no_internal_overlap(const at::Tensor& written, std::string_view op, std::string_view name);

// `written` must share no memory with `read`.
void check_no_overlap(const at::Tensor& written, std::string_view written_name, const at::Tensor& read,
                      std::string_view read_name, std::string_view op);

// Every written tensor against every other written one and every read one (reads may share
// memory with each other: a basis used by many entries). Sorted by address, so a list of
// separately allocated tensors costs O(n log n).
void check_no_overlap_among(const std::vector<NamedTensor>& written, const std::vector<NamedTensor>& read,
                            std::string_view op);

}  // namespace unisub::detail
