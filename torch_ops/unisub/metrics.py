"""Per-slot report numbers, all computed from the accumulators (no second pass over models).

Thin wrappers: each report entry is computed by libunisub (csrc/analysis/spectrum_report.cpp,
``torch.ops.unisub.slot_report`` / ``delta_report`` / ``spectrum_report``), the code
``unisub-analyze`` runs too, and comes back as strict JSON (``null`` where a number is undefined,
e.g. ``eigengap.sigma_ratio`` of a frozen slot)."""
import json
from typing import Dict, Sequence

import torch

from . import nulls  # noqa: F401  (registers the null ops' fake kernels)
from .accumulator import SubspaceAccumulator
from .subspace import Subspace

TAUS = (0.5, 0.8, 0.9, 0.95, 0.99)
ERROR_RANKS = (1, 2, 4, 8, 16, 32, 64)


def principal_angles(U1: torch.Tensor, U2: torch.Tensor) -> torch.Tensor:
    """Ascending angles (radians) between the column spans (``torch.ops.unisub.principal_angles``,
    without its basis check)."""
    return torch.ops.unisub.principal_angles(U1, U2, False)


def _options(taus, error_ranks):
    return [float(t) for t in taus], [int(k) for k in error_ranks]


def spectrum_report(ev: torch.Tensor, r: int, p: int, N: int, taus: Sequence[float], error_ranks: Sequence[int],
                    uncentred_energy: float, null_seed: int, null_pad: int = 0) -> Dict:
    """The spectrum-only fields of a mode's report: ``ev`` the descending Gram eigenvalues, ``r``
    the kept rank, (p, N) the shape of the matched Gaussian null (padded with ``null_pad`` zeros:
    directions centring removed)."""
    return json.loads(torch.ops.unisub.spectrum_report(ev, int(r), int(p), int(N), float(uncentred_energy),
                                                       int(null_seed), int(null_pad), *_options(taus, error_ranks)))


def slot_report(sub: Subspace, total: SubspaceAccumulator, halves, taus=TAUS, error_ranks=ERROR_RANKS,
                null_seed=0) -> Dict:
    """The report entry of a slot: ``halves`` the two halves' accumulators (or None) for the
    split-half principal angles."""
    modes = list(sub.bases)
    half_grams, counts = [], []
    if halves is not None:
        half_grams = [h.grams[mo] for mo in modes for h in halves]
        counts = [h.count for h in halves]
    return json.loads(torch.ops.unisub.slot_report(
        sub.slot, sub.mean, total.count, sub.center, modes, [sub.eigenvalues[mo] for mo in modes],
        [sub.rank(mo) for mo in modes], half_grams, counts, int(null_seed), *_options(taus, error_ranks)))


def delta_report(sub, taus=TAUS, error_ranks=ERROR_RANKS, null_seed=0) -> Dict:
    """The report of a LoRA-delta (mode 0) analysis, shaped like ``slot_report`` with one mode,
    "delta", so tables, summaries and plots treat it like any other slot. The null: i.i.d.
    Gaussian m × n deltas of the same total variance, whose centred M × M Gram is Wishart with
    M − 1 degrees of freedom (plus the zero eigenvalue centring leaves), kept in the equal-norm
    fields; the count ``null.components_above_null`` and ``null.verdict`` are against the null
    with the observed per-model norms (``nulls.norm_matched``), as ``null.kind`` says."""
    m, n = sub.shape
    factors = sub.metadata.get("factors")
    return json.loads(torch.ops.unisub.delta_report(
        sub.slot, sub.gram, sub.eigenvalues, sub.eigenvectors, [int(i) for i in sub.ids], int(m), int(n),
        sub.center, [int(k) for k in sub.ranks], sub.scalings, list(factors) if factors is not None else None,
        int(null_seed), *_options(taus, error_ranks)))
