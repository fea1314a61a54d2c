"""The unisub operators: one module per op family, each registering its fake kernels and
exposing documented wrappers of torch.ops.unisub.*."""
from .decompositions import hosvd, lora_gram, mode_svd, orthonormalize, svd
from .gram import gram_update_, mode_gram

__all__ = ["mode_gram", "gram_update_", "svd", "orthonormalize", "lora_gram", "mode_svd", "hosvd"]
