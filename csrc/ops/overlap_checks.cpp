// Memory-overlap checks of the mutating ops (see overlap_checks.h).
#include "ops/overlap_checks.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

namespace unisub::detail {
namespace {

// Byte addresses [begin, end) that a tensor's elements lie in.
struct Extent {
  std::uintptr_t begin = 0, end = 0;
  bool empty() const { return begin == end; }
};

bool has_memory(const at::Tensor& t) { return t.defined() && t.has_storage() && t.numel() > 0; }

Extent extent_of(const at::Tensor& t) {
  if (!has_memory(t)) return {};
  const auto item = static_cast<std::intptr_t>(t.element_size());
  std::intptr_t low = 0, high = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    const std::intptr_t reach = static_cast<std::intptr_t>(t.stride(d)) * (t.size(d) - 1) * item;
    (reach < 0 ? low : high) += reach;
  }
  const auto first = reinterpret_cast<std::intptr_t>(t.const_data_ptr());
  return {static_cast<std::uintptr_t>(first + low), static_cast<std::uintptr_t>(first + high + item)};
}

bool ranges_meet(const Extent& a, const Extent& b) { return a.begin < b.end && b.begin < a.end; }

// Past this many runs an interleaved layout is not enumerated; it is then treated as overlapping.
constexpr int64_t kMaxRuns = int64_t{1} << 22;

// The tensor's memory as sorted, merged byte runs: one per index of the dims outside the
// innermost unit-stride dim (a row of a column slice, say). Empty optional: too many runs.
std::optional<std::vector<std::pair<std::uintptr_t, std::uintptr_t>>> runs_of(const at::Tensor& t) {
  const auto item = static_cast<std::intptr_t>(t.element_size());
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride in bytes) of the dims that vary
  int64_t run_bytes = item, inner = -1;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 1) continue;
    if (inner < 0 && t.stride(d) == 1) {
      inner = d;
      run_bytes = t.size(d) * item;
      continue;
    }
    dims.emplace_back(t.size(d), t.stride(d) * item);
  }
  int64_t count = 1;
  for (const auto& [size, stride] : dims) {
    if (count > kMaxRuns / size) return std::nullopt;
    count *= size;
  }
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> runs;
  runs.reserve(count);
  std::vector<int64_t> index(dims.size(), 0);
  const auto first = reinterpret_cast<std::intptr_t>(t.const_data_ptr());
  for (int64_t r = 0; r < count; ++r) {
    std::intptr_t offset = 0;
    for (size_t i = 0; i < dims.size(); ++i) offset += index[i] * dims[i].second;
    runs.emplace_back(static_cast<std::uintptr_t>(first + offset), static_cast<std::uintptr_t>(first + offset + run_bytes));
    for (size_t i = dims.size(); i-- > 0;) {  // odometer over the outer dims
      if (++index[i] < dims[i].first) break;
      index[i] = 0;
    }
  }
  std::sort(runs.begin(), runs.end());
  return runs;
}

// Whether two tensors share a byte (they are on one device and both hold memory).
bool share_memory(const at::Tensor& a, const at::Tensor& b) {
  if (!has_memory(a) || !has_memory(b) || a.device() != b.device()) return false;
  const Extent ea = extent_of(a), eb = extent_of(b);
  if (!ranges_meet(ea, eb)) return false;
  // A dense tensor has an element at every byte of its range.
  if (a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense()) return true;
  const auto ra = a.is_non_overlapping_and_dense() ? std::optional{std::vector{std::pair{ea.begin, ea.end}}} : runs_of(a);
  const auto rb = b.is_non_overlapping_and_dense() ? std::optional{std::vector{std::pair{eb.begin, eb.end}}} : runs_of(b);
  if (!ra || !rb) return true;
  for (size_t i = 0, j = 0; i < ra->size() && j < rb->size();) {
    const auto& [a0, a1] = (*ra)[i];
    const auto& [b0, b1] = (*rb)[j];
    if (a0 < b1 && b0 < a1) return true;
    (a1 <= b1 ? i : j)++;
  }
  return false;
}

[[noreturn]] void fail_overlap(std::string_view op, std::string_view written, std::string_view read, bool both_written) {
  TORCH_CHECK(false, "unisub.", op, ": ", written, " is written in place and must not share memory with ", read,
              both_written ? " (also written)" : " (read while it is written)",
              ": some of their elements refer to a single memory location. Pass a copy (.clone()) of one of them");
}

}  // namespace

void check_no_internal_overlap(const at::Tensor& written, std::string_view op, std::string_view name) {
  if (!has_memory(written) || written.is_non_overlapping_and_dense()) return;
  bool overlaps = at::has_internal_overlap(written) == at::MemOverlap::Yes;
  if (!overlaps) {
    const auto runs = runs_of(written);
    overlaps = !runs;
    for (size_t i = 1; runs && i < runs->size() && !overlaps; ++i) overlaps = (*runs)[i].first < (*runs)[i - 1].second;
  }
  TORCH_CHECK(!overlaps, "unisub.", op, ": ", name, " is written in place but has internal overlap: some of its "
              "elements refer to a single memory location (an expanded, stride-0 tensor, shape ", written.sizes(),
              ", strides ", written.strides(), "). Pass a contiguous copy (.contiguous() or .clone())");
}

void check_no_overlap(const at::Tensor& written, std::string_view written_name, const at::Tensor& read,
                      std::string_view read_name, std::string_view op) {
  if (share_memory(written, read)) fail_overlap(op, written_name, read_name, false);
}

void check_no_overlap_among(const std::vector<NamedTensor>& written, const std::vector<NamedTensor>& read,
                            std::string_view op) {
  struct Item {
    Extent extent;
    const NamedTensor* named;
    bool written;
  };
  std::vector<Item> items;
  items.reserve(written.size() + read.size());
  for (const auto* list : {&written, &read}) {
    for (const auto& n : *list) {
      const Extent e = extent_of(n.tensor);
      if (!e.empty()) items.push_back({e, &n, list == &written});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.extent.begin < b.extent.begin; });
  // Sweep by address: only tensors whose ranges are still open can meet the next one.
  std::vector<const Item*> open;
  for (const auto& item : items) {
    std::erase_if(open, [&](const Item* o) { return o->extent.end <= item.extent.begin; });
    for (const Item* o : open) {
      if (!o->written && !item.written) continue;
      if (!share_memory(o->named->tensor, item.named->tensor)) continue;
      const Item& w = o->written ? *o : item;
      const Item& other = &w == o ? item : *o;
      fail_overlap(op, w.named->name, other.named->name, other.written);
    }
    open.push_back(&item);
  }
}

}  // namespace unisub::detail
