"""Projection ops: fake kernels (shapes and dtypes for torch.compile / torch.export) and the
documented Python entry points.

Bases ``U[*, m, k]`` and ``V[*, n, l]`` must have orthonormal columns. Each op checks
``max|UᵀU − I| ≤ 10·√ε`` of the basis's dtype (3.5e-3 for float32, 1.5e-7 for float64) and raises
otherwise. The check costs one k × k Gram per basis and, on CUDA, one host synchronisation per
call; pass ``check_basis=False`` where the bases are known to be orthonormal (e.g. checked once
before a training loop, or produced by unisub's decompositions).
"""
from typing import List, Optional

import torch

from .._dtypes import result_dtype

_ops = torch.ops.unisub


def _batch(*tensors):
    return torch.broadcast_shapes(*(tuple(t.shape[:-2]) for t in tensors if t is not None))


def _check_sides(op, G, U, V, rows="U", cols="V", m=None, n=None, used=-2):
    """The fake kernels check what the real ones check of the shapes and devices, so that a traced
    call that cannot run fails while it is traced (a basis of the wrong size, another device)."""
    m = G.shape[-2] if m is None else m
    n = G.shape[-1] if n is None else n
    for B, name, size in ((U, rows, m), (V, cols, n)):
        if B is None:
            continue
        torch._check(B.dim() >= 2, lambda: f"unisub.{op}: {name} must have at least 2 dimensions, got {B.dim()}")
        torch._check(B.shape[used] == size,
                     lambda: f"unisub.{op}: {name} has {B.shape[used]} {'rows' if used == -2 else 'columns'}, "
                             f"expected {size}")
        torch._check(B.device == G.device, lambda: f"unisub.{op}: {name} is on {B.device}, G on {G.device}")


@torch.library.register_fake("unisub::project")
def _project_fake(G, U, V, complement=False, check_basis=True):
    torch._check(G.dim() >= 2, lambda: f"unisub.project: G must have at least 2 dimensions, got {G.dim()}")
    _check_sides("project", G, U, V)
    return G.new_empty((*_batch(G, U, V), G.shape[-2], G.shape[-1]), dtype=result_dtype(G.dtype))


@torch.library.register_fake("unisub::project_")
def _project_inplace_fake(G, U, V, complement=False, check_basis=True):
    torch._check(G.dim() >= 2, lambda: f"unisub.project_: G must have at least 2 dimensions, got {G.dim()}")
    _check_sides("project_", G, U, V)
    return None


@torch.library.register_fake("unisub::project_list_")
def _project_list_fake(Gs, Us, Vs, complement=False, check_basis=True):
    return None


@torch.library.register_fake("unisub::coefficients")
def _coefficients_fake(G, U, V, check_basis=True):
    torch._check(G.dim() >= 2, lambda: f"unisub.coefficients: G must have at least 2 dimensions, got {G.dim()}")
    _check_sides("coefficients", G, U, V)
    k = U.shape[-1] if U is not None else G.shape[-2]
    l = V.shape[-1] if V is not None else G.shape[-1]  # noqa: E741
    return G.new_empty((*_batch(G, U, V), k, l), dtype=result_dtype(G.dtype))


@torch.library.register_fake("unisub::reconstruct")
def _reconstruct_fake(C, U, V, check_basis=True):
    torch._check(C.dim() >= 2, lambda: f"unisub.reconstruct: C must have at least 2 dimensions, got {C.dim()}")
    _check_sides("reconstruct", C, U, V, used=-1)
    m = U.shape[-2] if U is not None else C.shape[-2]
    n = V.shape[-2] if V is not None else C.shape[-1]
    return C.new_empty((*_batch(C, U, V), m, n), dtype=result_dtype(C.dtype))


@torch.library.register_fake("unisub::subspace_energy")
def _subspace_energy_fake(G, U, V, check_basis=True):
    torch._check(G.dim() >= 2, lambda: f"unisub.subspace_energy: G must have at least 2 dimensions, got {G.dim()}")
    _check_sides("subspace_energy", G, U, V)
    return G.new_empty(_batch(G, U, V), dtype=result_dtype(G.dtype))


def project(G: torch.Tensor, U: Optional[torch.Tensor] = None, V: Optional[torch.Tensor] = None,
            complement: bool = False, check_basis: bool = True) -> torch.Tensor:
    """``U Uᵀ G V Vᵀ`` (``complement``: ``G`` minus it) for ``G[*, m, n]``.

    ``U[*, m, k]`` / ``V[*, n, l]`` have orthonormal columns; ``None`` leaves that side alone.
    Batch dims broadcast. float16/bfloat16 ``G`` is computed and returned in float32.
    Differentiable in ``G``, ``U`` and ``V``.
    """
    return _ops.project(G, U, V, complement, check_basis)


def project_(G: torch.Tensor, U: Optional[torch.Tensor] = None, V: Optional[torch.Tensor] = None,
             complement: bool = False, check_basis: bool = True) -> torch.Tensor:
    """:func:`project` written into ``G``; returns ``G``. float16/bfloat16 ``G`` (mixed-precision
    gradients) is computed in float32 and rounded once on the way back; bases may be float32."""
    _ops.project_(G, U, V, complement, check_basis)
    return G


def project_list_(Gs: List[torch.Tensor], Us: List[Optional[torch.Tensor]], Vs: List[Optional[torch.Tensor]],
                  complement: bool = False, check_basis: bool = True) -> List[torch.Tensor]:
    """:func:`project_` for every ``Gs[i]`` with ``Us[i]``, ``Vs[i]`` (one entry, possibly ``None``,
    per tensor) in one call: one parallel pass on CPU, O(distinct shapes) kernel launches on CUDA.
    Everything is validated before any tensor is written. Returns ``Gs``."""
    if len(Gs) == 0:  # the dispatcher cannot route a call without a tensor: say what is wrong here
        raise RuntimeError("unisub.project_list_: Gs must hold at least one tensor, got an empty list")
    _ops.project_list_(Gs, Us, Vs, complement, check_basis)
    return Gs


def coefficients(G: torch.Tensor, U: Optional[torch.Tensor] = None, V: Optional[torch.Tensor] = None,
                 check_basis: bool = True) -> torch.Tensor:
    """``Uᵀ G V`` ``[*, k, l]``: the coordinates of ``G`` in the subspace. Differentiable."""
    return _ops.coefficients(G, U, V, check_basis)


def reconstruct(C: torch.Tensor, U: Optional[torch.Tensor] = None, V: Optional[torch.Tensor] = None,
                check_basis: bool = True) -> torch.Tensor:
    """``U C Vᵀ``; ``reconstruct(coefficients(G, U, V), U, V)`` equals ``project(G, U, V)``.
    Differentiable."""
    return _ops.reconstruct(C, U, V, check_basis)


def subspace_energy(G: torch.Tensor, U: Optional[torch.Tensor] = None, V: Optional[torch.Tensor] = None,
                    check_basis: bool = True) -> torch.Tensor:
    """``‖Uᵀ G V‖²_F / ‖G‖²_F`` per batch entry (NaN where ``G`` is zero), without forming the
    projection: cheap enough to log for every layer at every step."""
    return _ops.subspace_energy(G, U, V, check_basis)
