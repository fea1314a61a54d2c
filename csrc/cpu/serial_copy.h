#pragma once
// Copies of one model's factors into the delta accumulator's store, on the calling thread at memory
// speed. ATen's copy_ of a transposed 16-bit view goes element by element through its strided loop
// (76 µs for a 4096 × 16 float16 LoRA B, against 5 µs for a plain copy of its A), and a plain copy of
// 64K numbers is split across the intra-op threads, whose wake-up costs more than the copy. The
// accumulator makes both copies once per model it stores.
#include <ATen/core/Tensor.h>

namespace unisub::detail {

// dst = srcᵀ for a 2-D src [a, b] and dst [b, a]. Where both are on the CPU with the same dtype
// and each one's rows are contiguous, a blocked copy of the bits; anything else (a cast, other
// strides, another device) is dst.copy_(src.t()). Either way dst holds exactly srcᵀ.
void transpose_copy(const at::Tensor& src, const at::Tensor& dst);

// dst = src for tensors of one shape: memcpy where both are contiguous CPU tensors of one dtype,
// else dst.copy_(src).
void serial_copy(const at::Tensor& src, const at::Tensor& dst);

}  // namespace unisub::detail
