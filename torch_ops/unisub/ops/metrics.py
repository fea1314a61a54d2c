"""Subspace metrics: fake kernels and the documented Python entry points. Bases must have
orthonormal columns (checked unless ``check_basis=False``; see :mod:`unisub.ops.projection`)."""
import torch

from .._dtypes import result_dtype
from ._checks import wrap_dim

_ops = torch.ops.unisub


def _pair_batch(U1, U2):
    return torch.broadcast_shapes(tuple(U1.shape[:-2]), tuple(U2.shape[:-2]))


def _check_pair(op, U1, U2):
    """What the real kernels check of two bases' shapes and devices, checked while tracing."""
    torch._check(U1.dim() >= 2 and U2.dim() >= 2, lambda: f"unisub.{op}: U1 and U2 must have at least 2 dimensions")
    torch._check(U1.shape[-2] == U2.shape[-2],
                 lambda: f"unisub.{op}: U1 and U2 must have equal row counts m, got {U1.shape[-2]} and {U2.shape[-2]}")
    torch._check(U1.device == U2.device, lambda: f"unisub.{op}: U1 is on {U1.device}, U2 on {U2.device}")


@torch.library.register_fake("unisub::principal_angles")
def _principal_angles_fake(U1, U2, check_basis=True):
    _check_pair("principal_angles", U1, U2)
    p = min(U1.shape[-1], U2.shape[-1])
    return U1.new_empty((*_pair_batch(U1, U2), p), dtype=result_dtype(U1.dtype))


@torch.library.register_fake("unisub::subspace_distance")
def _subspace_distance_fake(U1, U2, metric="projection", check_basis=True):
    torch._check(metric in ("projection", "geodesic", "max"),
                 lambda: f"unisub.subspace_distance: metric must be 'projection', 'geodesic' or 'max', got '{metric}'")
    _check_pair("subspace_distance", U1, U2)
    return U1.new_empty(_pair_batch(U1, U2), dtype=result_dtype(U1.dtype))


@torch.library.register_fake("unisub::explained_variance")
def _explained_variance_fake(X, U, dim, center=False, check_basis=True):
    wrap_dim(dim, X.dim(), "explained_variance")
    return X.new_empty((U.shape[-1],), dtype=result_dtype(X.dtype))


def principal_angles(U1: torch.Tensor, U2: torch.Tensor, check_basis: bool = True) -> torch.Tensor:
    """Principal angles between ``span(U1[*, m, k1])`` and ``span(U2[*, m, k2])``:
    ``[*, min(k1, k2)]``, ascending, radians. Small angles come from sines of the residual and
    large ones from cosines, so every angle is accurate to a few ε absolute (computed in float64;
    float32 inputs lose only their own rounding). Batch dims broadcast."""
    return _ops.principal_angles(U1, U2, check_basis)


def subspace_distance(U1: torch.Tensor, U2: torch.Tensor, metric: str = "projection",
                      check_basis: bool = True) -> torch.Tensor:
    """Distance between two subspaces from their principal angles θ: ``"projection"`` √Σ sin²θ,
    ``"geodesic"`` √Σ θ², ``"max"`` max sin θ."""
    return _ops.subspace_distance(U1, U2, metric, check_basis)


def explained_variance(X: torch.Tensor, U: torch.Tensor, dim: int, center: bool = False,
                       check_basis: bool = True) -> torch.Tensor:
    """Cumulative fraction of the stack ``X[M, d1, ...]`` (centred over the model axis when
    ``center``) that the leading columns of ``U[d_dim, k]`` explain along ``dim``:
    ``cum[j-1] = ‖U[:, :j]ᵀ X_(dim)‖² / ‖X_(dim)‖²``. Works for held-out stacks too."""
    return _ops.explained_variance(X, U, dim, center, check_basis)
