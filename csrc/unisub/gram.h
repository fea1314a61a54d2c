#pragma once
// C++ API of the Gram ops. Each call goes through the dispatcher, exactly like
// torch.ops.unisub.* from Python, so device, autograd and tracing behave the same.
#include <ATen/core/Tensor.h>

namespace unisub {

// Gram of the mode-`dim` unfolding of X[M, d1, ..., dp] (dim 0 is the model axis), computed
// without materialising the unfolding; `center` subtracts the mean over the model axis first.
// float16/bfloat16/float32 inputs accumulate in float64 and return float32.
at::Tensor mode_gram(const at::Tensor& X, int64_t dim, bool center = false);

// Streaming G += X_(dim) X_(dim)^T for a batch of models. Returns G for chaining.
const at::Tensor& gram_update_(const at::Tensor& G, const at::Tensor& X, int64_t dim);

}  // namespace unisub
