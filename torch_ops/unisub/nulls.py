"""Matched null spectra for a centred mode Gram: what an i.i.d. Gaussian stack of the same shape
and the same total variance would give. A slot is only "universal" where it beats these.

For mode unfolding p × N (p = the mode's size, N = the other size times the models' degrees of
freedom, M − 1 after centring) with entry variance s² = trace(G) / (p N), the Gram is Wishart:
- ``marchenko_pastur``: its expected sorted eigenvalues in the large-size limit (quantiles of
  the Marchenko–Pastur law);
- ``gaussian_stack``: one exact sample, drawn through the Bartlett decomposition (O(p³), never
  forming the p × N Gaussian stack) with torch's CPU generator seeded with ``seed``, so that
  ``unisub-analyze`` draws the same sample.

Thin wrappers: the numbers come from libunisub (``torch.ops.unisub.*``, csrc/analysis/nulls.cpp).
"""
import torch


def null_shape(p: int, other: int, models: int, center: bool):
    """(p, N): rows of the unfolding and its effective number of columns."""
    return p, other * (models - 1 if center else models)


def marchenko_pastur(p: int, N: int, total: float) -> torch.Tensor:
    """Expected descending eigenvalues (length p) of a p × p Wishart Gram with trace ``total``."""
    return torch.ops.unisub.marchenko_pastur_null(int(p), int(N), float(total))


def mp_upper_edge(p: int, N: int, total: float) -> float:
    """The largest eigenvalue noise can reach (to leading order): s² (√p + √N)²."""
    return torch.ops.unisub.mp_upper_edge(int(p), int(N), float(total))


def gaussian_stack(p: int, N: int, total: float, seed: int = 0) -> torch.Tensor:
    """Descending eigenvalues (length p) of one Gaussian Gram Z Zᵀ, Z p × N, entry variance
    total / (p N). The nonzero eigenvalues are those of the a × a Wishart(b) with a = min(p, N)."""
    return torch.ops.unisub.gaussian_null(int(p), int(N), float(total), int(seed))
