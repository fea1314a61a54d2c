"""Merge models of one architecture into one: mean, task arithmetic, TIES, and subspace merging.

All methods work per tensor (per layer slot) on state dicts with the same keys and shapes. They
compute in float64 and return tensors in each input's dtype.

* ``mean``: ``(1/M) Σ W_i``.
* ``task_arithmetic``: ``W_b + λ Σ τ_i`` with task vectors ``τ_i = W_i − W_b`` (Ilharco et al.).
* ``ties``: trim each τ_i to its ``density`` largest-magnitude entries, elect a sign per entry
  (the sign of the sum of the trimmed τ_i), average the entries that agree with it (Yadav et al.),
  ``W_b + λ τ_merged``.
* ``subspace``: express each task vector in the zoo's shared subspace (the leading out/in singular
  vectors of the stacked task vectors, rank ``rank`` or energy ``energy``), merge the coefficients
  by task arithmetic and map back: ``W_b + λ U (Σ C_i) Vᵀ``. What lies outside the shared
  subspace (the part where tasks interfere) is dropped. Tensors with fewer than two dimensions
  take task arithmetic.

Why ``subspace`` is not centred: the coefficients of *centred* weights (relative to the zoo's mean
μ) sum to zero by construction, so merging them returns μ exactly — the mean merge. Pass
``center=True`` to see it; it is there for users to check, not because it is useful.
"""
import math
from typing import Dict, Mapping, Optional, Sequence

import torch

from .accumulator import SubspaceAccumulator

METHODS = ("mean", "task_arithmetic", "ties", "subspace")
StateDict = Mapping[str, torch.Tensor]


def _check_models(models: Sequence[StateDict], base: Optional[StateDict], need_base: bool, method: str):
    if len(models) == 0:
        raise ValueError("merge: models is empty; give at least one state dict")
    keys = list(models[0])
    for i, sd in enumerate(models[1:], 1):
        if list(sd) != keys and set(sd) != set(keys):
            diff = sorted(set(sd) ^ set(keys))[:3]
            raise ValueError(f"merge: models[{i}] has different keys from models[0] (e.g. {diff})")
    if need_base and base is None:
        raise ValueError(f"merge: method {method!r} needs base= (the model the task vectors are relative to)")
    if base is not None:
        missing = [k for k in keys if k not in base]
        if missing:
            raise ValueError(f"merge: base lacks keys of the models (e.g. {missing[:3]})")
    for k in keys:
        shapes = {tuple(sd[k].shape) for sd in models} | ({tuple(base[k].shape)} if base is not None else set())
        if len(shapes) > 1:
            raise ValueError(f"merge: tensor {k!r} has different shapes across models: {sorted(shapes)}")
    return keys


def _stack(models, key, base):
    X = torch.stack([sd[key].detach().double() for sd in models])
    if not torch.isfinite(X).all():
        raise ValueError(f"merge: tensor {key!r} has non-finite entries in some model")
    if base is not None and not torch.isfinite(base[key]).all():
        raise ValueError(f"merge: tensor {key!r} has non-finite entries in base")
    return X - (base[key].detach().double() if base is not None else 0)


def ties_merge(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """TIES on a stack of task vectors ``[M, ...]``: trim, elect sign, disjoint mean."""
    M = task_vectors.shape[0]
    flat = task_vectors.reshape(M, -1)
    keep = max(1, int(round(density * flat.shape[1])))
    # the keep-th largest magnitude per task; ties at the threshold are kept (≥)
    threshold = flat.abs().topk(keep, dim=1).values[:, -1:]
    trimmed = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp_min(1)
    merged = (trimmed * agree).sum(0) / count
    return merged.reshape(task_vectors.shape[1:])


def subspace_merge(task_vectors: torch.Tensor, rank: Optional[int], energy: Optional[float], center: bool):
    """``Σ_i U Uᵀ τ_i V Vᵀ`` with U, V the shared out/in bases of the stacked matrices."""
    M = task_vectors.shape[0]
    X = task_vectors.reshape(M, task_vectors.shape[1], -1)
    s = SubspaceAccumulator(modes=("out", "in"), center=center).update(X).finalize(rank=rank, energy=energy)
    coeffs = torch.stack([s.coefficients(W) for W in X])  # Uᵀ (τ_i − μ·[center]) V
    merged = s.bases["out"] @ coeffs.sum(0) @ s.bases["in"].T
    if center:  # Σ of centred coefficients is 0: this is M·μ, the mean merge in disguise
        merged = merged + M * s.mean
    return merged.reshape(task_vectors.shape[1:])


def merge(models: Sequence[StateDict], method: str = "mean", base: Optional[StateDict] = None,
          scale: Optional[float] = None, density: float = 0.2, rank: Optional[int] = None,
          energy: Optional[float] = 0.9, center: bool = False, keys: Optional[Sequence[str]] = None
          ) -> Dict[str, torch.Tensor]:
    """Merge ``models`` (state dicts) into one state dict.

    Args:
        method: ``"mean"``, ``"task_arithmetic"``, ``"ties"`` or ``"subspace"`` (module docstring).
        base: the model the zoo was fine-tuned from; required by all but ``mean``.
        scale: λ, the task-vector scaling; default ``1/M`` for task arithmetic and subspace
            (so they are comparable with the mean; task-arithmetic papers tune λ ∈ [0.3, 1]) and 1
            for TIES (whose disjoint mean already averages).
        density: the fraction of each task vector TIES keeps.
        rank, energy: the subspace's rank per mode and/or the explained-variance threshold τ
            (both given: the smaller rank, as :meth:`SubspaceAccumulator.finalize`).
        center: subspace merging of centred coefficients (collapses to the mean merge; see above).
        keys: merge only these tensors; the others are copied from ``base`` (or ``models[0]``).
    """
    if method not in METHODS:
        raise ValueError(f"merge: method must be one of {METHODS}, got {method!r}")
    if not (0 < density <= 1):
        raise ValueError(f"merge: density must lie in (0, 1], got {density!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"merge: scale must be a finite number, got {scale!r}")
    all_keys = _check_models(models, base, method != "mean", method)
    chosen = set(all_keys if keys is None else keys)
    unknown = chosen - set(all_keys)
    if unknown:
        raise ValueError(f"merge: keys not in the models: {sorted(unknown)[:3]}")
    M = len(models)
    out = {}
    for k in all_keys:
        template = models[0][k]
        if k not in chosen or not template.is_floating_point():
            out[k] = (base if base is not None else models[0])[k].detach().clone()
            continue
        if method == "mean":
            merged = _stack(models, k, None).mean(0)
        else:
            tau = _stack(models, k, base)
            if method == "ties":
                delta = (1.0 if scale is None else scale) * ties_merge(tau, density)
            elif method == "subspace" and tau.dim() >= 3:
                delta = (1.0 / M if scale is None else scale) * subspace_merge(tau, rank, energy, center)
            else:
                delta = (1.0 / M if scale is None else scale) * tau.sum(0)
            merged = base[k].detach().double() + delta
        out[k] = merged.to(template.dtype)
    return out
