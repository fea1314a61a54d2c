"""Gram ops: fake kernels (shapes and dtypes for torch.compile / torch.export, mirroring the C++
checks that decide them) and the documented Python entry points."""
import torch

from .._dtypes import result_dtype
from ._checks import wrap_dim

_ops = torch.ops.unisub


@torch.library.register_fake("unisub::mode_gram")
def _mode_gram_fake(X, dim, center=False):
    torch._check(X.dim() >= 2, lambda: f"unisub.mode_gram: X must have at least 2 dimensions, got {X.dim()}")
    d = X.shape[wrap_dim(dim, X.dim(), "mode_gram")]
    return X.new_empty((d, d), dtype=result_dtype(X.dtype))


@torch.library.register_fake("unisub::gram_update_")
def _gram_update_fake(G, X, dim):
    return None


def mode_gram(X: torch.Tensor, dim: int, center: bool = False) -> torch.Tensor:
    """Gram matrix of the mode-``dim`` unfolding of a stack ``X[M, d1, ..., dp]``.

    ``dim=0`` is the model axis (an M x M Gram of vectorised models); ``dim=j`` gives the
    d_j x d_j Gram ``sum over the other axes of X X^T``, computed in column blocks without
    materialising the unfolding. ``center`` subtracts the mean over the model axis first.
    float16/bfloat16/float32 inputs are accumulated in float64 and returned as float32.
    Differentiable with respect to ``X``.
    """
    return _ops.mode_gram(X, dim, center)


def gram_update_(G: torch.Tensor, X: torch.Tensor, dim: int) -> torch.Tensor:
    """Streaming ``G += X_(dim) X_(dim)^T`` for a batch of models ``X[b, ...]``; returns ``G``.

    Keep ``G`` in float64 when accumulating many batches.
    """
    _ops.gram_update_(G, X, dim)
    return G
