#pragma once
// Products of 16-bit panels on AMX bfloat16 tiles, with every product exact: a float16 x is split
// into bfloat16 hi + lo (hi = x rounded to 8 significant bits, lo = x − hi, which has at most 3
// more and so is exactly a bfloat16), and x·y = hi·hi' + hi·lo' + lo·hi' + lo·lo', each term exact
// in float32. The tiles accumulate in float32, so a result carries the error of a float32 GEMM of
// the same numbers, from four bfloat16 products that run at ~5× a float32 one each on a Xeon with
// AMX (benchmarks/RESULTS.md, eleventh session). bfloat16 inputs have lo = 0: one product. The
// tile kernel is libunisub's own (AMX intrinsics; GCC on x86-64 Linux): oneDNN's micro-kernels,
// called four times a block, ran at ~2/3 of its rate (thirteenth session).
//
// Used by lora_gram's CPU tiles (lora_gram_cpu.cpp) where the factors are 16-bit and the GEMMs
// float32; elsewhere, and on CPUs without AMX, the float32 route runs as before.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace unisub::detail {

// Whether this CPU has AMX bfloat16 tiles, this build has the kernel, and Linux lets the process
// use the tiles.
bool amx_bf16_available();

// Split inner dimension k (the GEMMs' K) that the route takes: even (bfloat16 pairs), and >= 2.
bool amx_split_supports(int64_t k);

// The split of `rows` rows of k numbers, in one of the two layouts a GEMM needs: the left operand's
// rows as they are, or the right operand's columns in the tiles' pair-interleaved (VNNI) blocks of
// kAmxBlockColumns columns, one tile's width: a tile of the right operand is then 1 KiB in one
// piece. Blocks of 64 columns, which oneDNN's own kernels take, made each tile 16 lines 256 bytes
// apart and the products ~1.4× slower (94 against 129 G multiply-adds a second on one thread,
// 512 × 1024 × 4096). Buffers are kept between loads (a worker reuses its panels).
constexpr int64_t kAmxBlockColumns = 16;
// A block's columns as laid out: rounded up to a whole tile row of 16 (the extra ones zero).
int64_t packed_width(int64_t columns);

class SplitPanel {
 public:
  // src: [rows, k] float16 or bfloat16 with contiguous rows, k even.
  void load_rows(const at::Tensor& src);
  void load_columns(const at::Tensor& src);
  int64_t rows() const { return rows_; }
  int64_t k() const { return k_; }
  // the numbers a row (or a column's pairs) takes: k padded with zeros to whole tiles of 32
  int64_t depth() const { return depth_; }
  bool has_lo() const { return has_lo_; }
  bool packed() const { return packed_; }
  const uint16_t* hi() const { return static_cast<const uint16_t*>(hi_.const_data_ptr()); }
  const uint16_t* lo() const { return static_cast<const uint16_t*>(lo_.const_data_ptr()); }

 private:
  void reserve(int64_t rows, int64_t k, bool has_lo);
  // ATen's allocations are 64-byte aligned, so a tile row (64 bytes) read from them spans one cache
  // line, not two (a std::vector's 16-byte alignment made the products 2.3× slower)
  at::Tensor hi_, lo_;
  at::Tensor block_;  // scratch: a block of columns split before its transposition
  int64_t rows_ = 0, k_ = 0, depth_ = 0;
  bool has_lo_ = false, packed_ = false;
};

// C[i, j] = Σ_t a[a0 + i, t] · b[b0 + j, t] for i < na, j < nb (C row-major with row stride ldc,
// overwritten), `a` loaded with load_rows, `b` with load_columns; b0 a multiple of kAmxBlockColumns.
void amx_split_product(const SplitPanel& a, int64_t a0, int64_t na, const SplitPanel& b, int64_t b0, int64_t nb,
                       float* C, int64_t ldc);

// The same for the rows of `a` as stored ([na, k] float16 or bfloat16, rows contiguous), split into
// `scratch` a block of rows at a time as the products reach them: the split block (1 MiB at
// k = 4096) is read from L2, where a whole split panel written out first and read back (16 MiB for
// 512 rows of two factors) cost 2.7 ms a tile in memory traffic, 7 % of lora_gram's time.
void amx_split_product(const at::Tensor& a, SplitPanel& scratch, const SplitPanel& b, int64_t b0, int64_t nb, float* C,
                       int64_t ldc);


}  // namespace unisub::detail
