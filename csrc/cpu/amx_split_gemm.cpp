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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define UNISUB_HAVE_AMX_KERNEL 1
#else
#define UNISUB_HAVE_AMX_KERNEL 0
#endif

namespace unisub::detail {
namespace {

// Rows of the left operand per block of the products: its split rows (64 × 4096 hi and lo, 1 MiB)
// stay in L2 while the right operand's column pairs pass by. 32 and 64 measured alike, 128 and more
// 15–20 % slower (one thread, 512 × 1024 × 4096).
constexpr int64_t kRowsPerBlock = 64;

// The inner dimension is padded with zeros to whole tiles (32 numbers, 16 pairs): the tiles always
// read 32 of them, and zeros add nothing to the products.
constexpr int64_t kTileDepth = 32;

int64_t padded_depth(int64_t k) { return (k + kTileDepth - 1) / kTileDepth * kTileDepth; }

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

// Row i of src (float16: split; bfloat16: hi is the value, there is no lo) for i < rows, to row i
// of hi and lo, `stride` numbers apart (the numbers from k to stride are left as they are).
void split_rows(const at::Tensor& src, uint16_t* hi, uint16_t* lo, int64_t stride) {
  const int64_t rows = src.size(0), k = src.size(1), ld = src.stride(0);
  const auto* s = static_cast<const uint16_t*>(src.const_data_ptr());
  for (int64_t i = 0; i < rows; ++i) {
    if (lo) {
      split_half_row(s + i * ld, k, hi + i * stride, lo + i * stride);
    } else {
      std::memcpy(hi + i * stride, s + i * ld, static_cast<size_t>(k) * 2);
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

#if defined(__x86_64__) && defined(__GNUC__)
// A block of 16 rows of src (16 columns of the right operand), split and laid out as its tiles read
// it in one pass: 32 numbers of each row (16 pairs) are converted and split in registers, and the
// 16 × 16 pairs transposed in registers (within 128-bit lanes, then the lanes) straight into 16
// output lines; the pairs past the last whole 16 one at a time. Through a row-major scratch block
// and transpose_pairs the same layout took ~1.7 ns a number (q_proj: 0.2 s of each Gram's 1.5 s).
// half: float16 (hi and lo), else bfloat16 (hi only, the bits as they are).
#define UNISUB_AVX512_SPLIT __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))
// GCC 12 warns of the "undefined" pass-through operand inside its own AVX-512 intrinsics
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// 16 float16 numbers split: the upper 16 bits of hi's and of lo's lanes, in order.
UNISUB_AVX512_SPLIT inline void split16(const uint16_t* p, __m256i& h16, __m256i& l16) {
  const __m512i half_unit = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i u = _mm512_castps_si512(x);
  const __m512i even = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
  const __m512i h = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, half_unit), even), top);
  const __m512 l = _mm512_sub_ps(x, _mm512_castsi512_ps(h));
  h16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16));
  l16 = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(l), 16));
}

// r[j] holds pairs p0 … p0 + 15 of row j; out line p (16 words) gets pair p of every row.
UNISUB_AVX512_SPLIT inline void transpose_store(const __m512i* r, uint32_t* out) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // b[4g + q], 128-bit lane L: column 4L + q of rows 4g … 4g + 3
  for (int g = 0; g < 4; ++g) {
    b[4 * g] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
    b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
    b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
    b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
  }
  // then the 4 × 4 lanes of b[q], b[4 + q], b[8 + q], b[12 + q]
  for (int q = 0; q < 4; ++q) {
    const __m512i t0 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0x44), t1 = _mm512_shuffle_i32x4(b[q], b[4 + q], 0xEE);
    const __m512i t2 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0x44),
                  t3 = _mm512_shuffle_i32x4(b[8 + q], b[12 + q], 0xEE);
    _mm512_storeu_si512(out + (0 + q) * 16, _mm512_shuffle_i32x4(t0, t2, 0x88));
    _mm512_storeu_si512(out + (4 + q) * 16, _mm512_shuffle_i32x4(t0, t2, 0xDD));
    _mm512_storeu_si512(out + (8 + q) * 16, _mm512_shuffle_i32x4(t1, t3, 0x88));
    _mm512_storeu_si512(out + (12 + q) * 16, _mm512_shuffle_i32x4(t1, t3, 0xDD));
  }
}

UNISUB_AVX512_SPLIT void split_column_block_avx512(const uint16_t* __restrict src, int64_t ld, int64_t k, bool half,
                                                   uint32_t* __restrict hi, uint32_t* __restrict lo) {
  const int64_t pairs = k / 2, whole = pairs / 16 * 16;
  __m512i rh[16], rl[16];
  for (int64_t p0 = 0; p0 < whole; p0 += 16) {
    for (int j = 0; j < 16; ++j) {
      const uint16_t* row = src + j * ld + 2 * p0;
      if (half) {
        __m256i h0, l0, h1, l1;
        split16(row, h0, l0);
        split16(row + 16, h1, l1);
        rh[j] = _mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1);
        rl[j] = _mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1);
      } else {
        rh[j] = _mm512_loadu_si512(row);
      }
    }
    transpose_store(rh, hi + p0 * 16);
    if (half) transpose_store(rl, lo + p0 * 16);
  }
  for (int j = 0; j < 16; ++j)
    for (int64_t p = whole; p < pairs; ++p) {
      uint16_t h[2], l[2];
      if (half) {
        split_half_row_generic(src + j * ld + 2 * p, 2, h, l);
        std::memcpy(lo + p * 16 + j, l, 4);
      } else {
        std::memcpy(h, src + j * ld + 2 * p, 4);
      }
      std::memcpy(hi + p * 16 + j, h, 4);
    }
}

#pragma GCC diagnostic pop

bool has_avx512_split() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
  return yes;
}
#endif

void check_source(const at::Tensor& src, const char* what) {
  TORCH_CHECK(src.dim() == 2 && (src.scalar_type() == at::kHalf || src.scalar_type() == at::kBFloat16) &&
                  src.device().is_cpu() && src.stride(1) == 1 && amx_split_supports(src.size(1)),
              "unisub: internal error: ", what, " takes a CPU [rows, k] float16/bfloat16 panel with contiguous rows "
              "and even k, got ", src.sizes(), " ", src.scalar_type());
}

#if UNISUB_HAVE_AMX_KERNEL
// The tiles' layout for every product: 8 tiles of 16 rows × 64 bytes (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands a process the tiles' register state only when it asks (arch_prctl); torch asks too
// when oneDNN first uses them, but our kernel may run first.
bool tiles_permitted() {
  static const bool permitted = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
           syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return permitted;
}

__attribute__((target("amx-tile"))) void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.bytes_per_row[t] = 64, config.rows[t] = 16;
  // as an asm with the whole configuration as its memory operand: GCC 12 did not count the
  // intrinsic's read of it, dropped the stores to its rows and widths, and the tiles faulted
  asm volatile("ldtilecfg %0" : : "m"(config));
}

// Releases the tiles, and with torch's micro-kernels present, through them: they keep the kernel
// whose configuration they last loaded (per thread) and skip loading it again while it is the
// same, so after our products they would run on our configuration; their release forgets it.
__attribute__((target("amx-tile"))) void release_tiles() {
#if __has_include(<ATen/native/CPUBlas.h>)
  at::native::cpublas::brgemm_release(/*is_vnni=*/true);
#endif
  _tile_release();
}

// Tiles 0–3 (C: rows r and r + 16 × columns c and c + 16) += Σ over depth numbers of the rows a0,
// a1 (stride lda bytes) times the column tiles b0, b1 (VNNI pair rows, strides ldb0, ldb1 bytes).
// Each C tile takes one product per 32 numbers and the four are independent, so the products
// overlap instead of waiting on one accumulator.
__attribute__((target("amx-tile,amx-bf16"))) void tile_products(const uint16_t* a0, const uint16_t* a1, int64_t lda,
                                                                const uint16_t* b0, int64_t ldb0, const uint16_t* b1,
                                                                int64_t ldb1, int64_t depth) {
  // GCC's tile intrinsics are asm statements that do not say they read memory: the panels written
  // before must be in memory first
  asm volatile("" ::: "memory");
  // pair rows advance 16 per step: ld/4 words each, i.e. ld/2 numbers
  const int64_t b0_step = 16 * ldb0 / 2, b1_step = 16 * ldb1 / 2;
  for (int64_t k = 0, step = 0; k < depth; k += kTileDepth, ++step) {
    _tile_loadd(4, a0 + k, lda);
    _tile_loadd(6, b0 + step * b0_step, ldb0);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + step * b1_step, ldb1);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + k, lda);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}

__attribute__((target("amx-tile"))) void zero_tiles() {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}

// The four C tiles to out (32 × 32 floats, row-major).
__attribute__((target("amx-tile"))) void store_tiles(float* out) {
  _tile_stored(0, out, 128);
  _tile_stored(1, out + 16, 128);
  _tile_stored(2, out + 512, 128);
  _tile_stored(3, out + 528, 128);
  asm volatile("" ::: "memory");  // nor that they write it: `out` is read next
}
#endif

}  // namespace

bool amx_bf16_available() {
#if UNISUB_HAVE_AMX_KERNEL
  return tiles_permitted();
#else
  return false;
#endif
}

bool amx_split_supports(int64_t k) { return k >= 2 && k % 2 == 0; }

int64_t packed_width(int64_t columns) { return (columns + 15) / 16 * 16; }

void SplitPanel::reserve(int64_t rows, int64_t k, bool has_lo) {
  // The tiles read whole 16-row tiles in pairs and 32 numbers deep: room for 32 rows past the last
  // one (their products are computed and dropped; zero when allocated, later whatever an earlier
  // load left there, finite), and each row padded to a whole depth.
  const int64_t depth = padded_depth(k), n = (rows + 32) * depth;
  const auto opts = at::TensorOptions().dtype(at::kBFloat16);
  if (!hi_.defined() || hi_.numel() < n) hi_ = at::zeros({n}, opts);
  if (has_lo && (!lo_.defined() || lo_.numel() < n)) lo_ = at::zeros({n}, opts);
  rows_ = rows, k_ = k, depth_ = depth, has_lo_ = has_lo;
}

void SplitPanel::load_rows(const at::Tensor& src) {
  check_source(src, "SplitPanel::load_rows");
  const int64_t rows = src.size(0), k = src.size(1);
  reserve(rows, k, src.scalar_type() == at::kHalf);
  packed_ = false;
  auto* hi = static_cast<uint16_t*>(hi_.data_ptr());
  auto* lo = has_lo_ ? static_cast<uint16_t*>(lo_.data_ptr()) : nullptr;
  split_rows(src, hi, lo, depth_);
  // the depth's padding of every row, and the rows up to a whole pair of tiles
  const int64_t whole = (rows + 31) / 32 * 32;
  for (uint16_t* p : {hi, lo}) {
    if (!p) continue;
    if (depth_ > k)
      for (int64_t i = 0; i < rows; ++i) std::fill(p + i * depth_ + k, p + (i + 1) * depth_, uint16_t{0});
    std::fill(p + rows * depth_, p + whole * depth_, uint16_t{0});
  }
}

void SplitPanel::load_columns(const at::Tensor& src) {
  check_source(src, "SplitPanel::load_columns");
  const int64_t rows = src.size(0), k = src.size(1), pairs = k / 2;
  // room for the last block's columns padded to a whole tile row (16), zero
  reserve(packed_width(rows), k, src.scalar_type() == at::kHalf);
  rows_ = rows;
  packed_ = true;
  // Row j of src becomes column j of the right operand, in blocks of kAmxBlockColumns (16) columns,
  // one tile wide: in the block of columns [c, c + 16), pair p of column j is the 32-bit word
  // p · 16 + j − c of the block, which starts at number c · depth (oneDNN's pack() lays a block of
  // 16 out the same way); the columns of the last block past `rows`, and the pairs from k/2 to
  // depth/2, are zero.
  static_assert(kAmxBlockColumns == 16, "a block of columns is one tile wide");
  auto* hi = static_cast<uint32_t*>(hi_.data_ptr());
  auto* lo = has_lo_ ? static_cast<uint32_t*>(lo_.data_ptr()) : nullptr;
  const int64_t depth_pairs = depth_ / 2;
  for (int64_t c = 0; c < rows; c += kAmxBlockColumns) {
    const int64_t w = std::min(kAmxBlockColumns, rows - c);
    uint32_t* block_hi = hi + c * depth_pairs;
    uint32_t* block_lo = lo ? lo + c * depth_pairs : nullptr;
#if defined(__x86_64__) && defined(__GNUC__)
    const bool fused = w == kAmxBlockColumns && has_avx512_split();
#else
    const bool fused = false;
#endif
    if (fused) {
#if defined(__x86_64__) && defined(__GNUC__)
      split_column_block_avx512(static_cast<const uint16_t*>(src.const_data_ptr()) + c * src.stride(0), src.stride(0),
                                k, lo != nullptr, block_hi, block_lo);
#endif
    } else {
      // the block's rows split into row-major scratch (256 KiB at k = 4096, in L2), then transposed
      const int64_t block = kAmxBlockColumns * k;
      if (!block_.defined() || block_.numel() < 2 * block) block_ = at::empty({2 * block}, at::kBFloat16);
      auto* h = static_cast<uint16_t*>(block_.data_ptr());
      uint16_t* l = h + block;
      if (w < kAmxBlockColumns) {  // the padding columns
        std::fill(h + w * k, h + block, uint16_t{0});
        if (lo) std::fill(l + w * k, l + block, uint16_t{0});
      }
      split_rows(src.narrow(0, c, w), h, lo ? l : nullptr, k);
      transpose_pairs(h, block_hi, kAmxBlockColumns, pairs);
      if (lo) transpose_pairs(l, block_lo, kAmxBlockColumns, pairs);
    }
    for (uint32_t* p : {block_hi, block_lo})
      if (p) std::fill(p + pairs * kAmxBlockColumns, p + depth_pairs * kAmxBlockColumns, 0u);
  }
  // the spare room past the last block, which a tile of dropped columns may read
  const int64_t end = packed_width(rows) * depth_;
  for (auto* p : {static_cast<uint16_t*>(hi_.data_ptr()), has_lo_ ? static_cast<uint16_t*>(lo_.data_ptr()) : nullptr})
    if (p) std::fill(p + end, p + end + 32 * depth_, uint16_t{0});
}

void amx_split_product(const SplitPanel& a, int64_t a0, int64_t na, const SplitPanel& b, int64_t b0, int64_t nb,
                       float* C, int64_t ldc) {
#if UNISUB_HAVE_AMX_KERNEL
  TORCH_CHECK(amx_bf16_available() && !a.packed() && b.packed() && a.k() == b.k() && a0 >= 0 && na >= 0 &&
                  a0 + na <= a.rows() && b0 >= 0 && nb >= 0 && b0 + nb <= b.rows() && b0 % kAmxBlockColumns == 0 &&
                  ldc >= nb,
              "unisub: internal error: amx_split_product got operands it cannot multiply");
  const int64_t depth = a.depth(), lda = depth * 2;
  // The tiles' configuration is loaded for each call and released after it: between two calls,
  // oneDNN (torch's own bfloat16 products) may configure this thread's tiles its own way.
  load_tile_config();
  struct Release {
    ~Release() { release_tiles(); }
  } release;
  // Column tile j (a multiple of 16, from b0) of the right operand is its block: 16 columns from
  // number (b0 + j) · depth, pair rows 64 bytes apart. A tile past the last block reads the
  // panel's spare room (zero); its columns are dropped.
  constexpr int64_t ldb = kAmxBlockColumns * 4;
  auto column_tile = [&](const uint16_t* base, int64_t j) { return base + (b0 + j) * depth; };
  alignas(64) float small[32 * 32], large[32 * 32];
  for (int64_t r0 = 0; r0 < na; r0 += kRowsPerBlock) {
    const int64_t r1 = std::min(na, r0 + kRowsPerBlock);
    for (int64_t j = 0; j < nb; j += 32) {
      const uint16_t* bh0 = column_tile(b.hi(), j);
      const uint16_t* bh1 = column_tile(b.hi(), j + 16);
      const uint16_t* bl0 = b.has_lo() ? column_tile(b.lo(), j) : nullptr;
      const uint16_t* bl1 = b.has_lo() ? column_tile(b.lo(), j + 16) : nullptr;
      for (int64_t i = r0; i < r1; i += 32) {
        const int64_t row = a0 + i;
        const uint16_t* ah0 = a.hi() + row * depth;
        const uint16_t* al0 = a.has_lo() ? a.lo() + row * depth : nullptr;
        // The small terms (lo·lo′, lo·hi′, hi·lo′) in tiles of their own, hi·hi′ alone, then the
        // two sums added once: the tiles' accumulation truncates, and small terms added onto the
        // large sum lost part of each (Kᵢᵢ of 4096-long factors 4.5e-6 low on average against
        // 3.7e-7 for MKL's float32 GEMM).
        const bool any_small = al0 || bl0;
        if (any_small) {
          zero_tiles();
          if (al0 && bl0) tile_products(al0, al0 + 16 * depth, lda, bl0, ldb, bl1, ldb, depth);
          if (al0) tile_products(al0, al0 + 16 * depth, lda, bh0, ldb, bh1, ldb, depth);
          if (bl0) tile_products(ah0, ah0 + 16 * depth, lda, bl0, ldb, bl1, ldb, depth);
          store_tiles(small);
        }
        zero_tiles();
        tile_products(ah0, ah0 + 16 * depth, lda, bh0, ldb, bh1, ldb, depth);
        store_tiles(large);
        const int64_t rows = std::min<int64_t>(32, r1 - i), cols = std::min<int64_t>(32, nb - j);
        for (int64_t x = 0; x < rows; ++x) {
          float* out = C + (i + x) * ldc + j;
          const float* l = large + x * 32;
          if (any_small) {
            const float* sm = small + x * 32;
            for (int64_t y = 0; y < cols; ++y) out[y] = l[y] + sm[y];
          } else {
            std::copy(l, l + cols, out);
          }
        }
      }
    }
  }
#else
  (void)a, (void)a0, (void)na, (void)b, (void)b0, (void)nb, (void)C, (void)ldc;
  TORCH_CHECK(false, "unisub: internal error: amx_split_product without AMX support in this build");
#endif
}

void amx_split_product(const at::Tensor& a, SplitPanel& scratch, const SplitPanel& b, int64_t b0, int64_t nb, float* C,
                       int64_t ldc) {
  for (int64_t r0 = 0; r0 < a.size(0); r0 += kRowsPerBlock) {
    const int64_t rows = std::min(kRowsPerBlock, a.size(0) - r0);
    scratch.load_rows(a.narrow(0, r0, rows));
    amx_split_product(scratch, 0, rows, b, b0, nb, C + r0 * ldc, ldc);
  }
}


}  // namespace unisub::detail
