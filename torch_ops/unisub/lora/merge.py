"""Merge PEFT LoRA adapters into one PEFT adapter.

Every method works on the weight changes PEFT adds, ΔW_i = s_i B_i A_i (s_i = lora_alpha / r, or
/ √r for rsLoRA, with rank / alpha patterns: ``unisub.io.PeftAdapter``), module by module, in
float64, and writes the merged ΔW as LoRA factors (``peft_out``):

* ``mean``: (1/M) Σ ΔW_i; ``task_arithmetic``: λ Σ w_i ΔW_i (λ = ``scale``, default 1/M as
  ``unisub.merge``; w_i = ``weights``, default 1). Both are formed from the factors alone
  ([w_1 s_1 B_1 … w_M s_M B_M] · [A_1; …; A_M]) and are exact at rank Σ r_i.
* ``ties``: ``unisub.merge``'s TIES (trim to ``density``, elect signs, disjoint mean; λ default
  1) on the dense ΔW_i. ``dare``: each ΔW_i keeps every entry with probability 1 − ``drop``,
  rescaled by 1 / (1 − drop) (DARE, Yu et al.), then task arithmetic; ``dare_ties``: the same
  drop, then TIES. The drop masks are seeded per adapter and module (``dare_mask``), so a merge
  is reproducible and independent of module order.
* ``subspace``: every ΔW_i projected on the module's shared out / in subspaces (``rank`` /
  ``energy``; the bases ``compress`` finds, from the same uncentred Grams as ``unisub.merge``'s
  subspace merge), merged in coefficient space: U (λ Σ w_i C_i) Vᵀ = Σ λ w_i U Uᵀ ΔW_i V Vᵀ,
  λ default 1/M; low-rank, exact at rank min(k_out, k_in).

The merged ΔW of the dense methods is written at its best rank ``out_rank`` approximation
(default Σ r_i, at most min(m, n)); the report gives the relative error of that truncation per
module (0 where the merge's rank fits). Dense methods hold M dense ΔW of one module at a time.
"""
import zlib
from typing import Dict, Optional, Sequence

import torch

from ..io import matches
from ..merging import merge as merge_state_dicts
from ..ops import svd
from .adapters import AdapterSource, open_adapters, plan_modules, read_delta
from .compress import fit_module
from .lowrank import balanced_factors, lowrank_svd
from .peft_out import check_rank, dtype_of, refuse_inputs_as_output, write_adapter

METHODS = ("mean", "task_arithmetic", "ties", "dare", "dare_ties", "subspace")


def dare_mask(shape, drop: float, seed: int, index: int, module: str) -> torch.Tensor:
    """The keep mask of adapter ``index`` in ``module``: entries of ``torch.rand`` (float64, a
    generator seeded with ``crc32(f"{seed}/{module}")``, then advanced ``index`` draws of the
    shape) at or above ``drop``."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{int(seed)}/{module}".encode()))
    for _ in range(index):
        torch.rand(shape, generator=g, dtype=torch.float64)
    return torch.rand(shape, generator=g, dtype=torch.float64) >= drop


def _check(method, density, drop, weights, M, scale):
    if method not in METHODS:
        raise ValueError(f"merge: method must be one of {METHODS}, got {method!r}")
    if not 0 < density <= 1:
        raise ValueError(f"merge: density must lie in (0, 1], got {density!r}")
    if not 0 <= drop < 1:
        raise ValueError(f"merge: drop must lie in [0, 1), got {drop!r}")
    if weights is not None and len(weights) != M:
        raise ValueError(f"merge: {len(weights)} weights for {M} adapters")
    if scale is not None and not torch.isfinite(torch.tensor(float(scale))):
        raise ValueError(f"merge: scale must be finite, got {scale!r}")


def merged_delta(factors, method: str, module: str, scale=None, weights=None, density: float = 0.2,
                 drop: float = 0.5, seed: int = 0, rank: Optional[int] = None, energy: Optional[float] = 0.9):
    """One module's merge from every adapter's (B, A) (scaling in B), float64: ``("factors", B, A)``
    for the methods that stay low-rank, ``("dense", ΔW)`` for the others."""
    M = len(factors)
    w = [1.0] * M if weights is None else [float(x) for x in weights]
    if method in ("mean", "task_arithmetic"):
        lam = 1.0 / M if method == "mean" or scale is None else float(scale)
        B = torch.cat([lam * wi * B for wi, (B, _) in zip(w, factors)], 1)
        A = torch.cat([A for _, A in factors], 0)
        return "factors", B, A
    if method == "subspace":
        lam = 1.0 / M if scale is None else float(scale)
        mb = fit_module(None, factors, rank, energy, torch.float64, False)
        C = lam * sum(wi * C for wi, C in zip(w, mb.coefficients))
        return "factors", mb.U @ C, mb.V.T
    deltas = [wi * (B @ A) for wi, (B, A) in zip(w, factors)]
    if method in ("dare", "dare_ties"):
        deltas = [d * dare_mask(d.shape, drop, seed, i, module) / (1 - drop) for i, d in enumerate(deltas)]
    inner = {"dare": "task_arithmetic", "dare_ties": "ties"}.get(method, method)
    zero = {module: torch.zeros_like(deltas[0])}
    out = merge_state_dicts([{module: d} for d in deltas], inner, base=zero, scale=scale, density=density,
                            rank=rank, energy=energy)
    return "dense", out[module]


def merge(adapters: Sequence[AdapterSource], folder, method: str = "mean", scale: Optional[float] = None,
          weights: Optional[Sequence[float]] = None, density: float = 0.2, drop: float = 0.5, seed: int = 0,
          rank: Optional[int] = None, energy: Optional[float] = 0.9, out_rank: Optional[int] = None,
          dtype="float32", modules: Optional[Sequence[str]] = None) -> Dict:
    """Merge PEFT adapters into one PEFT adapter written to ``folder``; returns a report (per
    module: the written rank and the truncation's relative error). ``rank`` / ``energy``: the
    subspace method's bases; ``out_rank``: the written adapter's rank (default Σ r_i, ≤ min(m, n));
    ``modules``: merge only the modules matching these globs (or ``re:`` regexes); the adapter
    written then targets exactly those."""
    check_rank("out_rank", out_rank)
    cks = open_adapters(adapters)
    refuse_inputs_as_output(folder, [ck.folder for ck in cks])
    M = len(cks)
    _check(method, density, drop, weights, M, scale)
    specs, extras = plan_modules(cks)
    if extras:
        raise ValueError(f"merge: the adapters hold non-LoRA tensors ({extras[:3]}, e.g. modules_to_save heads), "
                         f"which are full weights, not weight changes; merge them separately")
    if modules is not None:
        specs = {mod: spec for mod, spec in specs.items() if matches(mod, list(modules))}
        if not specs:
            raise ValueError(f"merge: no LoRA module matches {list(modules)}")
    out, report = {}, {}
    for mod, spec in specs.items():
        factors = [read_delta(ck, spec) for ck in cks]
        m, n = spec.shape
        k = min(sum(B.shape[1] for B, _ in factors), m, n) if out_rank is None else min(int(out_rank), m, n)
        kind, *parts = merged_delta(factors, method, mod, scale, weights, density, drop, seed, rank, energy)
        if kind == "factors":
            P, S, Q = lowrank_svd(*parts)
        else:
            P, S, Vh = svd(parts[0])
            Q = Vh.T
        total = float((S ** 2).sum())
        tail = float((S[k:] ** 2).sum())
        B, A = balanced_factors(P[:, :k], S[:k], Q[:, :k])
        if B.shape[1] < k:  # fewer singular values than k: pad with zero directions
            B = torch.cat([B, B.new_zeros(m, k - B.shape[1])], 1)
            A = torch.cat([A, A.new_zeros(k - A.shape[0], n)], 0)
        out[mod] = (B, A)
        report[mod] = {"rank": k, "relative_error": (tail / total) ** 0.5 if total > 0 else 0.0}
        del factors
    template = dict(cks[0].config)
    if modules is not None:
        template["target_modules"] = sorted(specs)
    write_adapter(folder, out, specs, template, dtype_of(dtype))
    worst = max(report.items(), key=lambda kv: kv[1]["relative_error"])
    return {"method": method, "adapters": [ck.name for ck in cks], "folder": str(folder), "modules": report,
            "worst_module": worst[0], "worst_module_error": worst[1]["relative_error"]}
