// AMX bfloat16 products of split 16-bit panels (see amx_split_gemm.h).
#include "cpu/amx_split_gemm.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if __has_include(<ATen/native/CPUBlas.h>)
#include <ATen/native/CPUBlas.h>
#endif
// torch's brgemm with the VNNI flag and its packing check: CPUBlas.h defines these macros beside
// them (the float32 one came with the flag)
#if defined(CPUBLAS_BRGEMM_BF16BF16F32) && defined(CPUBLAS_BRGEMM_F32F32F32)
#define UNISUB_HAVE_BRGEMM 1
#else
#define UNISUB_HAVE_BRGEMM 0
#endif

namespace unisub::detail {
namespace {

// Rows of the left operand per micro-kernel call: with a 64-column block of the right operand
// (K × 64 bfloat16, 512 KiB for K = 4096, hi and lo together 1 MiB) held in L2 while the left
// operand's rows stream past it. 32 × 64 blocks measured within noise of 64 × 64 and 128 × 64 at
// 1024 × 1024 × 4096 (~10 ms a bfloat16 GEMM against 55 ms in float32, one thread).
constexpr int64_t kRowsPerCall = 32;

// x (a float holding a float16 value) = hi + lo, both bfloat16 bit patterns: hi rounded to nearest
// even; lo = x − hi is exact in float32 and has at most 4 significant bits above the float16 unit of
// x, so dropping its low 16 bits loses nothing.
inline void split(float x, uint16_t& hi, uint16_t& lo) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t h = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  float hv;
  std::memcpy(&hv, &h, 4);
  const float l = x - hv;
  uint32_t ul;
  std::memcpy(&ul, &l, 4);
  hi = static_cast<uint16_t>(h >> 16);
  lo = static_cast<uint16_t>(ul >> 16);
}

void split_half_row_generic(const uint16_t* src, int64_t k, uint16_t* hi, uint16_t* lo) {
  for (int64_t t = 0; t < k; ++t) split(static_cast<float>(c10::Half(src[t], c10::Half::from_bits())), hi[t], lo[t]);
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same, eight numbers at a time (F16C conversion, AVX2 integer rounding): 0.18 ns a number
// against ~1.1 for the scalar conversion, which GCC does not vectorise.
__attribute__((target("avx2,f16c"))) void split_half_row_avx2(const uint16_t* __restrict src, int64_t k,
                                                                uint16_t* __restrict hi, uint16_t* __restrict lo) {
  const __m256i half_unit = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
  const __m256i top = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  int64_t t = 0;
  for (; t + 8 <= k; t += 8) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + t)));
    const __m256i u = _mm256_castps_si256(x);
    const __m256i even = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    const __m256i h = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(u, half_unit), even), top);
    const __m256 l = _mm256_sub_ps(x, _mm256_castsi256_ps(h));
    // the upper 16 bits of each lane, hi's eight then lo's eight (no lane exceeds 0xFFFF after the
    // shift, so the saturating pack is a plain one)
    const __m256i both = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_srli_epi32(h, 16), _mm256_srli_epi32(_mm256_castps_si256(l), 16)), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + t), _mm256_castsi256_si128(both));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(lo + t), _mm256_extracti128_si256(both, 1));
  }
  split_half_row_generic(src + t, k - t, hi + t, lo + t);
}
#endif

// One row of k float16 numbers (bit patterns) into hi and lo.
void split_half_row(const uint16_t* src, int64_t k, uint16_t* hi, uint16_t* lo) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (avx2) return split_half_row_avx2(src, k, hi, lo);
#endif
  split_half_row_generic(src, k, hi, lo);
}

// Row i of src (float16: split; bfloat16: hi is the value, there is no lo) for i < rows.
void split_rows(const at::Tensor& src, uint16_t* hi, uint16_t* lo) {
  const int64_t rows = src.size(0), k = src.size(1), ld = src.stride(0);
  const auto* s = static_cast<const uint16_t*>(src.const_data_ptr());
  for (int64_t i = 0; i < rows; ++i) {
    if (lo) {
      split_half_row(s + i * ld, k, hi + i * k, lo + i * k);
    } else {
      std::memcpy(hi + i * k, s + i * ld, static_cast<size_t>(k) * 2);
    }
  }
}

// Pair p of row j (j < w) of the row-major [w, 2·pairs] `in` to 32-bit word p·w + j of `out`, 16
// pairs (one cache line of a row) at a time: a row at a time down the whole column, the w rows
// (8 KiB apart at k = 4096) fell into the same L1 sets and the transposition took 1 ns a number,
// 0.23 ns this way.
void transpose_pairs(const uint16_t* __restrict in, uint32_t* __restrict out, int64_t w, int64_t pairs) {
  constexpr int64_t kPairsPerLine = 16;
  for (int64_t p0 = 0; p0 < pairs; p0 += kPairsPerLine) {
    const int64_t p1 = std::min(p0 + kPairsPerLine, pairs);
    for (int64_t j = 0; j < w; ++j) {
      const uint16_t* row = in + j * 2 * pairs;
      for (int64_t p = p0; p < p1; ++p) std::memcpy(out + p * w + j, row + 2 * p, 4);
    }
  }
}

void check_source(const at::Tensor& src, const char* what) {
  TORCH_CHECK(src.dim() == 2 && (src.scalar_type() == at::kHalf || src.scalar_type() == at::kBFloat16) &&
                  src.device().is_cpu() && src.stride(1) == 1 && amx_split_supports(src.size(1)),
              "unisub: internal error: ", what, " takes a CPU [rows, k] float16/bfloat16 panel with contiguous rows "
              "and even k, got ", src.sizes(), " ", src.scalar_type());
}

}  // namespace

bool amx_bf16_available() {
#if UNISUB_HAVE_BRGEMM
  // asked each time, not cached: torch's brgemm refuses once oneDNN is switched off
  // (torch.backends.mkldnn.enabled = False), and could_pack says so
  return at::native::cpublas::could_pack(at::kBFloat16);
#else
  return false;
#endif
}

bool amx_split_supports(int64_t k) { return k >= 2 && k % 2 == 0; }

int64_t packed_width(int64_t columns) { return (columns + 15) / 16 * 16; }

void SplitPanel::reserve(int64_t rows, int64_t k, bool has_lo) {
  const int64_t n = rows * k;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16);
  if (!hi_.defined() || hi_.numel() < n) hi_ = at::empty({n}, opts);
  if (has_lo && (!lo_.defined() || lo_.numel() < n)) lo_ = at::empty({n}, opts);
  rows_ = rows, k_ = k, has_lo_ = has_lo;
}

void SplitPanel::load_rows(const at::Tensor& src) {
  check_source(src, "SplitPanel::load_rows");
  reserve(src.size(0), src.size(1), src.scalar_type() == at::kHalf);
  packed_ = false;
  split_rows(src, static_cast<uint16_t*>(hi_.data_ptr()), has_lo_ ? static_cast<uint16_t*>(lo_.data_ptr()) : nullptr);
}

void SplitPanel::load_columns(const at::Tensor& src) {
  check_source(src, "SplitPanel::load_columns");
  const int64_t rows = src.size(0), k = src.size(1), pairs = k / 2;
  // room for the last block's columns padded to a whole tile row (16), zero
  reserve(packed_width(rows), k, src.scalar_type() == at::kHalf);
  rows_ = rows;
  packed_ = true;
  // Row j of src becomes column j of the right operand: in the block of columns [c, c + w) (c a
  // multiple of kAmxBlockColumns, w its width), pair p of the column is the 32-bit word
  // (p · ld + j − c) of the block, which starts at number c · k; ld is w rounded up to a multiple of
  // 16, as the micro-kernels' own packing lays it out (its extra columns zero). A block's rows are
  // split into row-major scratch (1 MiB at k = 4096, in L2) first, then transposed.
  auto* hi = static_cast<uint32_t*>(hi_.data_ptr());
  auto* lo = has_lo_ ? static_cast<uint32_t*>(lo_.data_ptr()) : nullptr;
  const int64_t block = kAmxBlockColumns * k;
  if (!block_.defined() || block_.numel() < 2 * block) block_ = at::empty({2 * block}, at::kBFloat16);
  auto* h = static_cast<uint16_t*>(block_.data_ptr());
  uint16_t* l = h + block;
  for (int64_t c = 0; c < rows; c += kAmxBlockColumns) {
    const int64_t w = std::min(kAmxBlockColumns, rows - c), ld = packed_width(w);
    if (ld > w) {  // the padding columns
      std::fill(h + w * k, h + ld * k, uint16_t{0});
      if (lo) std::fill(l + w * k, l + ld * k, uint16_t{0});
    }
    split_rows(src.narrow(0, c, w), h, lo ? l : nullptr);
    transpose_pairs(h, hi + c * pairs, ld, pairs);
    if (lo) transpose_pairs(l, lo + c * pairs, ld, pairs);
  }
}

void amx_split_product(const SplitPanel& a, int64_t a0, int64_t na, const SplitPanel& b, int64_t b0, int64_t nb,
                       float* C, int64_t ldc) {
#if UNISUB_HAVE_BRGEMM
  TORCH_CHECK(!a.packed() && b.packed() && a.k() == b.k() && a0 >= 0 && na >= 0 && a0 + na <= a.rows() && b0 >= 0 &&
                  nb >= 0 && b0 + nb <= b.rows() && b0 % kAmxBlockColumns == 0 && ldc >= nb,
              "unisub: internal error: amx_split_product got operands it cannot multiply");
  const int64_t k = a.k();
  for (int64_t i = 0; i < na; ++i) std::fill(C + i * ldc, C + i * ldc + nb, 0.0f);
  using at::native::cpublas::brgemm;
  auto bf = [](const uint16_t* p) { return reinterpret_cast<const at::BFloat16*>(p); };
  // The small terms first (lo·lo', lo·hi', hi·lo'), then hi·hi': the tiles accumulate with a
  // truncating bias, so adding the small terms onto the large hi·hi' sum lost part of each of them
  // (K_ii 4.5e-6 low on average at K = 4096, against 3.7e-7 for MKL's float32 GEMM); in this order
  // 5.6e-8 (max 2.1e-7). K is not blocked, for the same reason.
  for (int64_t n0 = 0; n0 < nb; n0 += kAmxBlockColumns) {
    const int64_t c = b0 + n0, width = packed_width(std::min(kAmxBlockColumns, b.rows() - c));
    const int64_t cols = std::min(kAmxBlockColumns, nb - n0);
    const uint16_t* bh = b.hi() + c * k;
    const uint16_t* bl = b.has_lo() ? b.lo() + c * k : nullptr;
    for (int64_t m0 = 0; m0 < na; m0 += kRowsPerCall) {
      const int64_t rows = std::min(kRowsPerCall, na - m0);
      const uint16_t* ah = a.hi() + (a0 + m0) * k;
      const uint16_t* al = a.has_lo() ? a.lo() + (a0 + m0) * k : nullptr;
      float* c_block = C + m0 * ldc + n0;
      // every call adds to C (zeroed above): one kernel per block shape, not two
      if (al && bl) brgemm(rows, cols, k, k, width, ldc, true, bf(al), bf(bl), c_block, true);
      if (al) brgemm(rows, cols, k, k, width, ldc, true, bf(al), bf(bh), c_block, true);
      if (bl) brgemm(rows, cols, k, k, width, ldc, true, bf(ah), bf(bl), c_block, true);
      brgemm(rows, cols, k, k, width, ldc, true, bf(ah), bf(bh), c_block, true);
    }
  }
#else
  (void)a, (void)a0, (void)na, (void)b, (void)b0, (void)nb, (void)C, (void)ldc;
  TORCH_CHECK(false, "unisub: internal error: amx_split_product without torch's brgemm");
#endif
}

void amx_release() {
#if UNISUB_HAVE_BRGEMM
  if (amx_bf16_available()) at::native::cpublas::brgemm_release(true);
#endif
}

}  // namespace unisub::detail
