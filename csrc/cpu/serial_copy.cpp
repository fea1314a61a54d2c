#include "cpu/serial_copy.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace unisub::detail {
namespace {

// Square tiles of 32: a tile's source rows (32 × 32 elements, at most 8 KiB) stay in L1 while its
// destination rows are written a cache line or more at a time.
constexpr int64_t kTile = 32;

#if defined(__SSE2__)
// One V × V block (V = 16 bytes / element size) transposed in SSE2 registers: V loads, the
// interleaving unpacks, V stores. An element at a time, the copy ran at a third of this speed.
template <class Bits>
inline void transpose_block(const Bits* s, int64_t ld, Bits* d, int64_t ldd) {
  auto load = [&](int64_t q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + q * ld)); };
  auto store = [&](int64_t q, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(d + q * ldd), v); };
  if constexpr (sizeof(Bits) == 2) {
    const __m128i a0 = load(0), a1 = load(1), a2 = load(2), a3 = load(3), a4 = load(4), a5 = load(5), a6 = load(6),
                  a7 = load(7);
    const __m128i t0 = _mm_unpacklo_epi16(a0, a1), t1 = _mm_unpackhi_epi16(a0, a1), t2 = _mm_unpacklo_epi16(a2, a3),
                  t3 = _mm_unpackhi_epi16(a2, a3), t4 = _mm_unpacklo_epi16(a4, a5), t5 = _mm_unpackhi_epi16(a4, a5),
                  t6 = _mm_unpacklo_epi16(a6, a7), t7 = _mm_unpackhi_epi16(a6, a7);
    const __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2), u2 = _mm_unpacklo_epi32(t1, t3),
                  u3 = _mm_unpackhi_epi32(t1, t3), u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6),
                  u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
    store(0, _mm_unpacklo_epi64(u0, u4)), store(1, _mm_unpackhi_epi64(u0, u4));
    store(2, _mm_unpacklo_epi64(u1, u5)), store(3, _mm_unpackhi_epi64(u1, u5));
    store(4, _mm_unpacklo_epi64(u2, u6)), store(5, _mm_unpackhi_epi64(u2, u6));
    store(6, _mm_unpacklo_epi64(u3, u7)), store(7, _mm_unpackhi_epi64(u3, u7));
  } else if constexpr (sizeof(Bits) == 4) {
    const __m128i a0 = load(0), a1 = load(1), a2 = load(2), a3 = load(3);
    const __m128i t0 = _mm_unpacklo_epi32(a0, a1), t1 = _mm_unpackhi_epi32(a0, a1), t2 = _mm_unpacklo_epi32(a2, a3),
                  t3 = _mm_unpackhi_epi32(a2, a3);
    store(0, _mm_unpacklo_epi64(t0, t2)), store(1, _mm_unpackhi_epi64(t0, t2));
    store(2, _mm_unpacklo_epi64(t1, t3)), store(3, _mm_unpackhi_epi64(t1, t3));
  } else {
    const __m128i a0 = load(0), a1 = load(1);
    store(0, _mm_unpacklo_epi64(a0, a1)), store(1, _mm_unpackhi_epi64(a0, a1));
  }
}
constexpr bool kBlocks = true;
#else
template <class Bits>
inline void transpose_block(const Bits*, int64_t, Bits*, int64_t) {}
constexpr bool kBlocks = false;
#endif

template <class Bits>
void transpose_bits(const Bits* src, int64_t src_ld, Bits* dst, int64_t dst_ld, int64_t a, int64_t b) {
  constexpr int64_t V = 16 / static_cast<int64_t>(sizeof(Bits));
  for (int64_t i0 = 0; i0 < a; i0 += kTile) {
    const int64_t i1 = std::min(a, i0 + kTile);
    for (int64_t k0 = 0; k0 < b; k0 += kTile) {
      const int64_t k1 = std::min(b, k0 + kTile);
      // whole V × V blocks in registers, the edges (rows or columns short of V) an element at a time
      const int64_t iv = kBlocks ? i0 + (i1 - i0) / V * V : i0, kv = kBlocks ? k0 + (k1 - k0) / V * V : k0;
      for (int64_t i = i0; i < iv; i += V)
        for (int64_t k = k0; k < kv; k += V) transpose_block(src + i * src_ld + k, src_ld, dst + k * dst_ld + i, dst_ld);
      for (int64_t k = k0; k < k1; ++k) {
        Bits* out = dst + k * dst_ld;
        for (int64_t i = k < kv ? iv : i0; i < i1; ++i) out[i] = src[i * src_ld + k];
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
