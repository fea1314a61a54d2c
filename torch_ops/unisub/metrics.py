"""Per-slot report numbers, all computed from the accumulators (no second pass over models)."""
import math
from typing import Dict, Sequence

import torch

from . import nulls
from .accumulator import SubspaceAccumulator
from .subspace import Subspace, rank_for_energy

TAUS = (0.5, 0.8, 0.9, 0.95, 0.99)
ERROR_RANKS = (1, 2, 4, 8, 16, 32, 64)


def principal_angles(U1: torch.Tensor, U2: torch.Tensor) -> torch.Tensor:
    """Ascending angles (radians) between the column spans. Angles below π/4 come from sines
    (the residual of U2 outside span U1): arccos of cosines near 1 would lose half the digits."""
    k = min(U1.shape[1], U2.shape[1])
    if k == 0:
        return U1.new_zeros(0)
    cos = torch.linalg.svdvals(U1.T @ U2)[:k].clamp(0, 1)
    R = U2 - U1 @ (U1.T @ U2) if U2.shape[1] <= U1.shape[1] else U1 - U2 @ (U2.T @ U1)
    sin = torch.linalg.svdvals(R).flip(0)[:k].clamp(0, 1)
    theta = torch.where(cos > math.sqrt(0.5), torch.arcsin(sin), torch.arccos(cos.flip(0)).flip(0))
    return theta.sort().values


def _floats(t: torch.Tensor):
    return [float(v) for v in t.tolist()]


def spectrum_report(ev: torch.Tensor, r: int, p: int, N: int, taus: Sequence[float], error_ranks: Sequence[int],
                    uncentred_energy: float, null_seed: int, null_pad: int = 0) -> Dict:
    """The spectrum-only fields of a mode's report: ``ev`` the descending Gram eigenvalues, ``r``
    the kept rank, (p, N) the shape of the matched Gaussian null (padded with ``null_pad`` zeros:
    directions centring removed)."""
    total = float(ev.sum())
    d = ev.numel()
    cum = ev.cumsum(0) / total if total > 0 else torch.zeros_like(ev)
    pad = torch.zeros(null_pad, dtype=torch.float64)
    mp = torch.cat([nulls.marchenko_pastur(p, N, total), pad])
    gauss = torch.cat([nulls.gaussian_stack(p, N, total, seed=null_seed), pad])
    edge = nulls.mp_upper_edge(p, N, total)
    return {
        "dim": d, "rank": r,
        "singular_values": _floats(ev.sqrt()),
        "explained_variance_ratio": _floats(ev / total) if total > 0 else [0.0] * d,
        "cumulative_explained_variance": _floats(cum),
        "rank_at_tau": {str(t): rank_for_energy(ev, t) for t in taus},
        # relative Frobenius error of the centred stack kept to rank k along this mode, and of the
        # whole stack rebuilt as mean + rank-k part (what compression gives back)
        "reconstruction_error": {str(k): math.sqrt(max(0.0, 1 - float(cum[k - 1]))) if total > 0 else 0.0
                                 for k in error_ranks if k <= d},
        "reconstruction_error_with_mean": {
            str(k): math.sqrt(max(0.0, float(ev[k:].sum())) / uncentred_energy) if uncentred_energy > 0 else 0.0
            for k in error_ranks if k <= d},
        "eigengap": {"at_rank": r, "abs": float(ev[r - 1] - ev[r]) if r < d else float(ev[r - 1]),
                     "sigma_ratio": float(ev[r - 1].sqrt() / ev[r].sqrt()) if r < d and ev[r] > 0 else math.inf},
        "null": {
            "shape": [p, N], "mp_upper_edge": edge,
            "components_above_mp_edge": int((ev > edge).sum()) if total > 0 else 0,
            "marchenko_pastur_eigenvalues": _floats(mp),
            "gaussian_stack_eigenvalues": _floats(gauss),
            "marchenko_pastur_cumulative_at_rank": float(mp[:r].sum() / total) if total > 0 else 0.0,
            "gaussian_stack_cumulative_at_rank": float(gauss[:r].sum() / total) if total > 0 else 0.0,
        },
    }


def mode_report(mode: str, sub: Subspace, halves, models: int, taus: Sequence[float],
                error_ranks: Sequence[int], uncentred_energy: float, null_seed: int) -> Dict:
    ev = sub.eigenvalues[mode]
    r = sub.rank(mode)
    other = sub.mean.shape[1] if mode == "out" else sub.mean.shape[0]
    p, N = nulls.null_shape(ev.numel(), other, models, sub.center)
    rep = spectrum_report(ev, r, p, N, taus, error_ranks, uncentred_energy, null_seed)
    if halves is not None:
        Ua = halves[0].eigh(mode)[1][:, :r]
        Ub = halves[1].eigh(mode)[1][:, :r]
        theta = principal_angles(Ua, Ub)
        rep["split_half"] = {"models": [halves[0].count, halves[1].count],
                             "principal_angles_deg": _floats(torch.rad2deg(theta)),
                             "max_sin": float(theta.max().sin()) if theta.numel() else 0.0,
                             "mean_cos2": float(theta.cos().pow(2).mean()) if theta.numel() else 1.0}
    else:
        rep["split_half"] = None
    return rep


def slot_report(sub: Subspace, total: SubspaceAccumulator, halves, taus=TAUS, error_ranks=ERROR_RANKS,
                null_seed=0) -> Dict:
    m, n = sub.mean.shape
    M = total.count
    centred = float(next(iter(sub.eigenvalues.values())).sum())
    mean_energy = M * float(sub.mean.pow(2).sum()) if sub.center else 0.0
    uncentred = centred + mean_energy
    modes = {mo: mode_report(mo, sub, halves, M, taus, error_ranks, uncentred, null_seed) for mo in sub.bases}
    ranks = {mo: sub.rank(mo) for mo in sub.bases}
    core = M * ranks.get("out", m) * ranks.get("in", n)
    stored = m * n + sum((m if mo == "out" else n) * r for mo, r in ranks.items()) + core
    return {
        "slot": sub.slot, "shape": [m, n], "models": M,
        "energy": {"total": uncentred, "mean": mean_energy, "centred": centred,
                   "mean_share": mean_energy / uncentred if uncentred > 0 else 0.0,
                   "centred_share": centred / uncentred if uncentred > 0 else 0.0},
        "compression": {"original_numbers": M * m * n, "stored_numbers": stored,
                        "ratio": M * m * n / stored},
        "modes": modes,
    }


def _half_basis(K: torch.Tensor, idx: torch.Tensor, r: int, center: bool):
    """For the models ``idx``: their centring matrix C, the leading eigenvectors V and σ of their
    (centred) Gram, keeping at most r components with σ² > 0."""
    from .accumulator import sorted_eigh

    n = idx.numel()
    C = torch.eye(n, dtype=K.dtype) - (1.0 / n if center else 0.0)
    ev, V = sorted_eigh(C @ K[idx][:, idx] @ C)
    k = min(r, int((ev > ev[0] * 1e-12).sum()) if ev[0] > 0 else 0)
    return C, V[:, :k], ev[:k].sqrt()


def delta_split_half(K: torch.Tensor, ids, r: int, center: bool):
    """Principal angles between the rank-r eigen-weight spans (in R^{m×n}) of the two halves of
    the models (ids even / odd), from the uncentred K alone: E^h = D_hᵀ V_h Σ_h⁻¹, so
    E^aᵀ E^b = Σ_a⁻¹ V_aᵀ (C_a K_ab C_b) V_b Σ_b⁻¹, whose singular values are the cosines
    (Gram route: angles below ~1e-8 rad are not resolved)."""
    ids = torch.tensor(ids)
    halves = [(ids % 2 == h).nonzero().flatten() for h in (0, 1)]
    if min(h.numel() for h in halves) < 2:
        return None
    (Ca, Va, sa), (Cb, Vb, sb) = (_half_basis(K, h, r, center) for h in halves)
    if Va.shape[1] == 0 or Vb.shape[1] == 0:
        return None
    cross = Ca @ K[halves[0]][:, halves[1]] @ Cb
    cos = torch.linalg.svdvals((Va / sa).T @ cross @ (Vb / sb)).clamp(0, 1)
    theta = torch.arccos(cos).sort().values
    return {"models": [halves[0].numel(), halves[1].numel()],
            "principal_angles_deg": _floats(torch.rad2deg(theta)),
            "max_sin": float(theta.max().sin()) if theta.numel() else 0.0,
            "mean_cos2": float(theta.cos().pow(2).mean()) if theta.numel() else 1.0}


def delta_report(sub, taus=TAUS, error_ranks=ERROR_RANKS, null_seed=0) -> Dict:
    """The report of a LoRA-delta (mode 0) analysis, shaped like ``slot_report`` with one mode,
    "delta", so tables, summaries and plots treat it like any other slot. The null: i.i.d.
    Gaussian m × n deltas of the same total variance, whose centred M × M Gram is Wishart with
    M − 1 degrees of freedom (plus the zero eigenvalue centring leaves)."""
    K = sub.gram
    M = K.shape[0]
    m, n = sub.shape
    uncentred = float(K.diagonal().sum())
    mean_energy = float(K.sum()) / M if sub.center else 0.0  # M·‖mean ΔW‖²
    centred = float(sub.eigenvalues.sum())
    r = sub.rank()
    p = M - 1 if sub.center else M
    rep = spectrum_report(sub.eigenvalues, r, p, m * n, taus, error_ranks, uncentred, null_seed,
                          null_pad=M - p)
    rep["split_half"] = delta_split_half(K, sub.ids, r, sub.center)
    scores = sub.scores()
    rep["scores"] = [_floats(row) for row in scores]
    stored = (1 + r) * m * n + M * r
    factors = sum(sub.ranks) * (m + n)
    return {
        "slot": sub.slot, "kind": "lora_delta", "shape": [m, n], "models": M,
        "factors": sub.metadata.get("factors"), "lora_ranks": list(sub.ranks),
        "scalings": _floats(sub.scalings),
        "energy": {"total": uncentred, "mean": mean_energy, "centred": centred,
                   "mean_share": mean_energy / uncentred if uncentred > 0 else 0.0,
                   "centred_share": centred / uncentred if uncentred > 0 else 0.0},
        # dense ΔW stack against mean + r eigen-weights + M·r scores; the LoRA factors for scale
        "compression": {"original_numbers": M * m * n, "stored_numbers": stored, "ratio": M * m * n / stored,
                        "lora_factor_numbers": factors},
        "modes": {"delta": rep},
    }
