"""Exact linear algebra on low-rank products ΔW = B·A (float64), never forming ΔW.

Every LoRA computation here goes through ``thin``: B = Q_b R_b and Aᵀ = Q_a R_a (reduced QR), so
ΔW = Q_b (R_b R_aᵀ) Q_aᵀ with orthonormal Q_b (m × ρ_b), Q_a (n × ρ_a) and a small core. Norms,
Grams, residuals and SVDs of ΔW then cost O((m + n) r²), not O(m n r).
"""
from typing import Optional, Tuple

import torch

from ..ops import svd as _svd


def thin(B: torch.Tensor, A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Q_b, core, Q_a)`` with ``B @ A == Q_b @ core @ Q_a.T`` (float64, orthonormal Q's)."""
    B, A = B.double(), A.double()
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    return Qb, Rb @ Ra.T, Qa


def gram_factors(B: torch.Tensor, A: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(X_out [m, ρ], X_in [n, ρ])`` with ``X_out X_outᵀ = ΔW ΔWᵀ`` and ``X_in X_inᵀ = ΔWᵀ ΔW``
    for ΔW = B·A: the thin matrices whose Grams are ΔW's mode Grams (what ``compress.GramFactor`` streams)."""
    B, A = B.double(), A.double()
    _, Ra = torch.linalg.qr(A.T)  # A Aᵀ = Raᵀ Ra
    _, Rb = torch.linalg.qr(B)  # Bᵀ B = Rbᵀ Rb
    return B @ Ra.T, A.T @ Rb.T


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, rank: Optional[int] = None):
    """``(U [m, k], S [k], V [n, k])``: the SVD of ΔW = B·A (k = its factor rank, or ``rank`` if
    smaller: then the truncated SVD, the best rank-``rank`` approximation), from the thin QRs and
    the SVD of the small core (``unisub.svd``: descending S, deterministic signs)."""
    Qb, core, Qa = thin(B, A)
    P, S, Qh = _svd(core)
    k = S.numel() if rank is None else min(int(rank), S.numel())
    return Qb @ P[:, :k], S[:k], Qa @ Qh[:k].T


def balanced_factors(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, A) = (U √S, √S Vᵀ)``: LoRA factors of U diag(S) Vᵀ with equal norms (the split that
    loses least when written in float16 / bfloat16)."""
    r = S.clamp_min(0).sqrt()
    return U * r, r[:, None] * V.T


def residual2(B: torch.Tensor, A: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> Tuple[float, float, torch.Tensor]:
    """For ΔW = B·A and orthonormal U [m, k], V [n, l]: ``(‖ΔW − U Uᵀ ΔW V Vᵀ‖², ‖ΔW‖², C)`` with
    C = Uᵀ ΔW V the coefficients (float64).

    The residual is (I − UUᵀ)ΔW + UUᵀΔW(I − VVᵀ), two parts with orthogonal column spaces, each
    computed from the thin factors: never ‖ΔW‖² − ‖C‖², which loses every digit when the
    subspace holds nearly all of ΔW."""
    Qb, core, Qa = thin(B, A)
    U, V = U.double(), V.double()
    Pb, Pa = U.T @ Qb, V.T @ Qa
    Eb, Ea = Qb - U @ Pb, Qa - V @ Pa
    left = Eb @ core  # (I − UUᵀ) ΔW = left · Q_aᵀ, Q_a orthonormal
    right = Pb @ core  # Uᵀ ΔW = right · Q_aᵀ; times (I − VVᵀ) is right · Eaᵀ
    res = float((left * left).sum()) + float(((right.T @ right) * (Ea.T @ Ea)).sum())
    return max(res, 0.0), float((core * core).sum()), right @ Pa.T
