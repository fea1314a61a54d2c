"""Decomposition ops: fake kernels and documented Python entry points."""
from typing import Tuple

import torch

from .._dtypes import result_dtype
from ._checks import wrap_dim

_ops = torch.ops.unisub


@torch.library.register_fake("unisub::svd")
def _svd_fake(A, rank=-1, method="auto"):
    torch._check(A.dim() >= 2, lambda: f"unisub.svd: A must have at least 2 dimensions, got {A.dim()}")
    *batch, m, n = A.shape
    full = min(m, n)
    torch._check(rank == -1 or 0 < rank <= full, lambda: f"unisub.svd: rank must be -1 or in [1, {full}], got {rank}")
    k = full if rank == -1 else rank
    dtype = result_dtype(A.dtype)
    return (A.new_empty((*batch, m, k), dtype=dtype), A.new_empty((*batch, k), dtype=dtype),
            A.new_empty((*batch, k, n), dtype=dtype))


def svd(A: torch.Tensor, rank: int = -1, method: str = "auto") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched SVD ``A[*, m, n] = U diag(S) Vh`` with ``k = rank`` (or ``min(m, n)``) components.

    Methods: ``"jacobi"`` (one-sided Jacobi after a pivoted QR; every singular value to relative
    accuracy, the most accurate), ``"lapack"`` (the platform library; backward stable),
    ``"gram"`` (eigh of the smaller Gram in float64; fastest for tall-skinny factors, squares the
    condition number), ``"randomized"`` (range finder with 10 extra columns and 4 power
    iterations, for ``rank`` much smaller than ``min(m, n)``), ``"auto"`` (LAPACK on CPU; on CUDA the
    float64 Gram route for float32 input where it is as accurate; see docs/decompositions.md).
    Signs: the largest-magnitude entry of each column of ``U`` is positive. Differentiable.
    """
    return _ops.svd(A, rank, method)


@torch.library.register_fake("unisub::orthonormalize")
def _orthonormalize_fake(A):
    torch._check(A.dim() >= 2 and A.shape[-1] <= A.shape[-2],
                 lambda: f"unisub.orthonormalize: A[*, m, k] must have k <= m, got {tuple(A.shape)}")
    return A.new_empty(A.shape, dtype=result_dtype(A.dtype))


def orthonormalize(A: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns ``Q[*, m, k]`` whose span contains A's column span; where A is
    rank-deficient the remaining columns complete the basis. Same sign rule as :func:`svd`."""
    return _ops.orthonormalize(A)


@torch.library.register_fake("unisub::lora_gram")
def _lora_gram_fake(B, A, center=False):
    torch._check(B.dim() == 3 and A.dim() == 3, lambda: "unisub.lora_gram: B must be [M, m, r] and A [M, r, n]")
    return B.new_empty((B.shape[0], B.shape[0]), dtype=result_dtype(B.dtype))


def lora_gram(B: torch.Tensor, A: torch.Tensor, center: bool = False) -> torch.Tensor:
    """``K[i, j] = <B_i A_i, B_j A_j>_F`` for LoRA factors ``B[M, m, r]``, ``A[M, r, n]``, without
    forming any ``B_i A_i`` (float64 inside). ``center`` gives the Gram of the deltas minus their
    mean: what mode-0 (model-space) PCA of LoRA deltas needs. Apply PEFT's ``lora_alpha / r``
    scaling to ``B`` (or ``A``) first when ΔW itself is meant."""
    return _ops.lora_gram(B, A, center)


@torch.library.register_fake("unisub::mode_svd")
def _mode_svd_fake(X, dim, rank=-1, energy=0.0, center=False, method="auto"):
    torch._check(method in ("auto", "gram", "randomized"),
                 lambda: f"unisub.mode_svd: method must be 'auto', 'gram' or 'randomized', got '{method}'")
    torch._check(X.dim() >= 2, lambda: f"unisub.mode_svd: X must have at least 2 dimensions, got {X.dim()}")
    dim = wrap_dim(dim, X.dim(), "mode_svd")
    d = X.shape[dim]
    full = min(d, X.numel() // d) if d else 0
    if energy > 0:
        r = torch.library.get_ctx().new_dynamic_size()
        torch._check(r >= 1)
        torch._check(r <= (rank if rank > 0 else full))
    else:
        r = rank if rank > 0 else full
    dtype = result_dtype(X.dtype)
    return X.new_empty((d, r), dtype=dtype), X.new_empty((r,), dtype=dtype)


def mode_svd(X: torch.Tensor, dim: int, rank: int = -1, energy: float = 0.0, center: bool = False,
             method: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Leading left singular vectors ``U[d_dim, r]`` and singular values ``S[r]`` of the mode-``dim``
    unfolding of ``X[M, d1, ...]`` (dim 0 = model axis).

    ``rank=-1`` keeps ``min(d_dim, prod(other dims))``; ``energy`` τ in (0, 1] keeps the smallest r
    whose cumulative explained variance (relative to the whole centred energy ‖X_c‖²) reaches τ,
    capped by ``rank``. ``method``: ``"gram"`` (float64 Gram + eigh), ``"randomized"`` (a sketch
    that never forms the unfolding or its Gram; needs ``rank``; approximate on flat spectra),
    ``"auto"`` (as exact as ``"gram"``: where ``rank + 10 <= d_dim / 4`` and ``d_dim >= 512`` a
    float64 sketch kept only when its residuals certify the kept values to 1e-10 relative, else
    the Gram; see docs/decompositions.md).
    """
    return _ops.mode_svd(X, dim, rank, energy, center, method)


@torch.library.register_fake("unisub::hosvd")
def _hosvd_fake(X, ranks, center=False):
    torch._check(len(ranks) == X.dim(), lambda: f"unisub.hosvd: need {X.dim()} ranks, got {len(ranks)}")
    kept = [d if r == -1 else r for d, r in zip(X.shape, ranks)]
    dtype = result_dtype(X.dtype)
    factors = [X.new_empty((d, k), dtype=dtype) for d, k in zip(X.shape, kept)]
    return X.new_empty(kept, dtype=dtype), factors, X.new_empty(X.shape[1:], dtype=dtype)


def hosvd(X: torch.Tensor, ranks, center: bool = False):
    """Truncated HOSVD (sequentially truncated) of a model stack: returns ``(core, factors, mean)``
    with ``X ≈ mean + core ×₀ U₀ ×₁ U₁ …``; ``ranks[j] = -1`` keeps mode j whole (square factor)."""
    return _ops.hosvd(X, list(ranks), center)
