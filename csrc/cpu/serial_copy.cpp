#include "cpu/serial_copy.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace unisub::detail {
namespace {

// Square tiles of 32: a tile's source rows (32 × 32 elements, at most 8 KiB) stay in L1 while its
// destination rows are written a cache line or more at a time.
constexpr int64_t kTile = 32;

template <class Bits>
void transpose_bits(const Bits* src, int64_t src_ld, Bits* dst, int64_t dst_ld, int64_t a, int64_t b) {
  for (int64_t i0 = 0; i0 < a; i0 += kTile) {
    const int64_t i1 = std::min(a, i0 + kTile);
    for (int64_t k0 = 0; k0 < b; k0 += kTile) {
      const int64_t k1 = std::min(b, k0 + kTile);
      for (int64_t k = k0; k < k1; ++k) {
        Bits* out = dst + k * dst_ld;
        for (int64_t i = i0; i < i1; ++i) out[i] = src[i * src_ld + k];
      }
    }
  }
}

}  // namespace

void transpose_copy(const at::Tensor& src, const at::Tensor& dst) {
  TORCH_CHECK(src.dim() == 2 && dst.dim() == 2 && dst.size(0) == src.size(1) && dst.size(1) == src.size(0),
              "transpose_copy: dst must be srcᵀ's shape, got src ", src.sizes(), " and dst ", dst.sizes());
  const bool bitwise = src.device().is_cpu() && dst.device().is_cpu() && src.scalar_type() == dst.scalar_type() &&
                       (src.stride(1) == 1 || src.size(1) <= 1) && (dst.stride(1) == 1 || dst.size(1) <= 1) &&
                       !src.is_conj() && !src.is_neg() && !dst.is_conj() && !dst.is_neg();
  const int64_t bytes = src.element_size();
  if (!bitwise || (bytes != 2 && bytes != 4 && bytes != 8)) {
    dst.copy_(src.t());
    return;
  }
  const int64_t a = src.size(0), b = src.size(1);
  if (a == 0 || b == 0) return;
  const int64_t src_ld = src.size(0) > 1 ? src.stride(0) : b, dst_ld = dst.size(0) > 1 ? dst.stride(0) : a;
  const void* s = src.const_data_ptr();
  void* d = dst.mutable_data_ptr();
  if (bytes == 2) {
    transpose_bits(static_cast<const uint16_t*>(s), src_ld, static_cast<uint16_t*>(d), dst_ld, a, b);
  } else if (bytes == 4) {
    transpose_bits(static_cast<const uint32_t*>(s), src_ld, static_cast<uint32_t*>(d), dst_ld, a, b);
  } else {
    transpose_bits(static_cast<const uint64_t*>(s), src_ld, static_cast<uint64_t*>(d), dst_ld, a, b);
  }
}

void serial_copy(const at::Tensor& src, const at::Tensor& dst) {
  TORCH_CHECK(src.sizes() == dst.sizes(), "serial_copy: src and dst must have one shape, got ", src.sizes(), " and ",
              dst.sizes());
  const bool bitwise = src.device().is_cpu() && dst.device().is_cpu() && src.scalar_type() == dst.scalar_type() &&
                       src.is_contiguous() && dst.is_contiguous() && !src.is_conj() && !src.is_neg() &&
                       !dst.is_conj() && !dst.is_neg();
  if (!bitwise) {
    dst.copy_(src);
    return;
  }
  if (src.numel() > 0) std::memcpy(dst.mutable_data_ptr(), src.const_data_ptr(), src.nbytes());
}

}  // namespace unisub::detail
