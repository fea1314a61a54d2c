"""The unisub operators: one module per op family, each registering its fake kernels and
exposing documented wrappers of torch.ops.unisub.*."""
from .gram import gram_update_, mode_gram

__all__ = ["mode_gram", "gram_update_"]
