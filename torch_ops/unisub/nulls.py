"""Matched null spectra for a centred mode Gram: what an i.i.d. Gaussian stack of the same shape
and the same total variance would give. A slot is only "universal" where it beats these.

For mode unfolding p × N (p = the mode's size, N = the other size times the models' degrees of
freedom, M − 1 after centring) with entry variance s² = trace(G) / (p N), the Gram is Wishart:
- ``marchenko_pastur``: its expected sorted eigenvalues in the large-size limit (quantiles of
  the Marchenko–Pastur law);
- ``gaussian_stack``: one exact sample, drawn through the Bartlett decomposition (O(p³), never
  forming the p × N Gaussian stack, which would cost as much as the analysis itself).
"""
import math

import numpy as np
import torch


def null_shape(p: int, other: int, models: int, center: bool):
    """(p, N): rows of the unfolding and its effective number of columns."""
    return p, other * (models - 1 if center else models)


def _mp_quantiles(y: float, k: int) -> np.ndarray:
    """The k quantiles (j − ½)/k, descending, of the unit-variance MP law with ratio y ≤ 1."""
    lo, hi = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    # x = lo + (hi − lo)(1 − cos πt)/2 clusters the grid at the edges, where the density has
    # square-root (or, for y = 1, inverse square-root) behaviour; f·dx stays finite there.
    t = np.linspace(0.0, 1.0, 20001)
    x = lo + (hi - lo) * (1 - np.cos(np.pi * t)) / 2
    dx_dt = (hi - lo) * np.pi * np.sin(np.pi * t) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * np.pi * y * x)
    g = np.nan_to_num(f * dx_dt)
    cdf = np.concatenate([[0.0], np.cumsum((g[1:] + g[:-1]) / 2 * np.diff(t))])
    cdf /= cdf[-1]
    q = (np.arange(k, 0, -1) - 0.5) / k
    return np.interp(q, cdf, x)


def marchenko_pastur(p: int, N: int, total: float) -> torch.Tensor:
    """Expected descending eigenvalues (length p) of a p × p Wishart Gram with trace ``total``."""
    out = np.zeros(p)
    if N <= 0 or total <= 0:
        return torch.from_numpy(out)
    a, b = min(p, N), max(p, N)
    s2 = total / (p * N)
    out[:a] = s2 * b * _mp_quantiles(a / b, a)
    return torch.from_numpy(out)


def mp_upper_edge(p: int, N: int, total: float) -> float:
    """The largest eigenvalue noise can reach (to leading order): s² (√p + √N)²."""
    if N <= 0 or total <= 0:
        return 0.0
    return total / (p * N) * (math.sqrt(p) + math.sqrt(N)) ** 2


def gaussian_stack(p: int, N: int, total: float, seed: int = 0) -> torch.Tensor:
    """Descending eigenvalues (length p) of one Gaussian Gram Z Zᵀ, Z p × N, entry variance
    total / (p N). The nonzero eigenvalues are those of the a × a Wishart(b) with a = min(p, N)."""
    out = torch.zeros(p, dtype=torch.float64)
    if N <= 0 or total <= 0:
        return out
    a, b = min(p, N), max(p, N)
    rng = np.random.default_rng(seed)
    A = np.tril(rng.standard_normal((a, a)), -1)
    A[np.diag_indices(a)] = np.sqrt(rng.chisquare(b - np.arange(a)))
    A = torch.from_numpy(A)
    evals = torch.linalg.eigvalsh(A @ A.T).flip(0).clamp_min(0)
    out[:a] = evals * (total / (p * N))
    return out
