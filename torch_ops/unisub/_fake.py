"""Fake (meta) kernels: output shapes and dtypes only, so torch.compile and torch.export can
trace the ops without running them. They mirror the C++ checks that decide shapes."""
import torch

from ._dtypes import result_dtype


def _wrap_dim(dim: int, order: int, op: str) -> int:
    torch._check(-order <= dim < order,
                 lambda: f"unisub.{op}: dim must be in [{-order}, {order - 1}], got {dim}")
    return dim % order


@torch.library.register_fake("unisub::mode_gram")
def _mode_gram_fake(X, dim, center=False):
    torch._check(X.dim() >= 2, lambda: f"unisub.mode_gram: X must have at least 2 dimensions, got {X.dim()}")
    d = X.shape[_wrap_dim(dim, X.dim(), "mode_gram")]
    return X.new_empty((d, d), dtype=result_dtype(X.dtype))


@torch.library.register_fake("unisub::gram_update_")
def _gram_update_fake(G, X, dim):
    return None
