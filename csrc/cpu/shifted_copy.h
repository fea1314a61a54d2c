#pragma once
// A model shifted by the accumulator's float64 offset and stored in the Gram's dtype, in one pass
// (ModeAccumulator's chunks), and added to the batch's float64 sum. at::sub_out of a float16 model and a float64 offset into float32
// promotes: it casts the model into a float64 temporary, subtracts into another, then casts that
// down, each temporary a fresh slot-sized allocation; in the job, where freed heap goes back to the
// OS between batches, their page faults made it 5 ns a number (7 s of a 28 s run of 200 × 12
// float16 768² slots).
#include <ATen/core/Tensor.h>

namespace unisub::detail {

// out = x − shift (or x itself when shift is undefined), computed in float64 and rounded once to
// out's dtype: x [m, n] of any float dtype, shift [m, n] float64, out [m, n] float32 or float64;
// the same numbers as at::sub_out(out, x, shift). CPU tensors whose rows are contiguous take the
// one-pass kernel (F16C and AVX2 where the CPU has them, for float16 models); anything else ATen.
void shifted_copy(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& out);

// acc += x in float64 (the batch's sum): x [m, n] of any float dtype, acc [m, n] float64 contiguous;
// the same numbers as acc.add_(x), without add_'s float64 copy of x.
void add_to_float64(const at::Tensor& x, const at::Tensor& acc);

}  // namespace unisub::detail
