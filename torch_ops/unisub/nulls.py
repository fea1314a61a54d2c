"""Matched null spectra for a centred mode Gram: what an i.i.d. Gaussian stack of the same shape
and the same total variance would give. A slot is only "universal" where it beats these.

For mode unfolding p × N (p = the mode's size, N = the other size times the models' degrees of
freedom, M − 1 after centring) with entry variance s² = trace(G) / (p N), the Gram is Wishart:
- ``marchenko_pastur``: its expected sorted eigenvalues in the large-size limit (quantiles of
  the Marchenko–Pastur law);
- ``gaussian_stack``: one exact sample, drawn through the Bartlett decomposition (O(p³), never
  forming the p × N Gaussian stack) with torch's CPU generator seeded with ``seed``, so that
  ``unisub-analyze`` draws the same sample.

These assume every model carries the same expected energy (i.i.d. entries of one variance): the
null of the mode Grams ("equal-norm Marchenko-Pastur" in a report's ``null.kind``). The model-axis
Gram of LoRA deltas is compared with a null that keeps the observed per-model norms instead
("per-model-norm Wishart (Bartlett)"): independent isotropic deltas x_i = μ + √t_i·z_i, whose
centred Gram is H S W S H (S = diag √t, W the Gram of M i.i.d. N(0, I_D / D) vectors):
- ``model_variances``: the t whose null has the observed Gram's diagonal in expectation;
- ``norm_matched``: exact draws of that null's spectrum (W by the Bartlett decomposition, O(M³)).

Thin wrappers: the numbers come from libunisub (``torch.ops.unisub.*``, csrc/analysis/nulls.cpp).
"""
import torch


def _check_not_meta(t, op, arg):
    # A fake impl also runs for real meta tensors, outside any tracer: its CPU result would be a
    # real, uninitialised tensor (these ops return CPU tensors whatever the input's device).
    torch._check(t.device.type != "meta", lambda: f"unisub.{op}: {arg} is a meta tensor (no values); {op} reads "
                                                  "values, so call it on a tensor that has them")


@torch.library.register_fake("unisub::null_model_variances")
def _null_model_variances_fake(diag, center):
    _check_not_meta(diag, "null_model_variances", "diag")
    torch._check(diag.dim() == 1, lambda: f"unisub.null_model_variances: diag must be 1-D, got {diag.dim()}-D")
    return torch.empty(diag.shape, dtype=torch.float64, device="cpu")


@torch.library.register_fake("unisub::norm_matched_null")
def _norm_matched_null_fake(variances, dim, center, draws, seed=0):
    _check_not_meta(variances, "norm_matched_null", "variances")
    torch._check(variances.dim() == 1, lambda: f"unisub.norm_matched_null: variances must be 1-D, got {variances.dim()}-D")
    torch._check(draws >= 1, lambda: f"unisub.norm_matched_null: draws must be >= 1, got {draws}")
    return torch.empty((draws, variances.shape[0]), dtype=torch.float64, device="cpu")


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


def model_variances(diag: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Per-model variances t (float64 [M]) of the norm-matched null whose (centred when ``center``)
    Gram has the expected diagonal ``diag`` (the observed diag(H K H) = ‖ΔW_i − mean‖²)."""
    return torch.ops.unisub.null_model_variances(diag, bool(center))


def norm_matched(variances: torch.Tensor, dim: int, center: bool = True, draws: int = 20, seed: int = 0) -> torch.Tensor:
    """``draws`` exact samples [draws, M] (rows descending) of the spectrum of H S W S H
    (S W S uncentred), S = diag(√variances), W the Gram of M i.i.d. N(0, I_dim / dim) vectors,
    draw d from a torch CPU generator of its own seeded from (``seed``, d), so that the draws run on
    all threads and the result does not depend on the thread count."""
    return torch.ops.unisub.norm_matched_null(variances, int(dim), bool(center), int(draws), int(seed))
