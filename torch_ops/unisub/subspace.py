"""A fitted universal subspace of one slot: mean, per-mode bases and full spectra."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from .io.safetensors import SafetensorsFile, save_file


def choose_rank(eigenvalues: torch.Tensor, rank: Optional[int] = None, energy: Optional[float] = None) -> int:
    """Components to keep, from descending Gram eigenvalues (σ²)."""
    d = eigenvalues.numel()
    if rank is not None and not (isinstance(rank, int) and 0 < rank):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if energy is not None and not (0 < energy <= 1):
        raise ValueError(f"energy must lie in (0, 1], got {energy!r}")
    r = d if rank is None else min(rank, d)
    if energy is not None:
        r = min(r, rank_for_energy(eigenvalues, energy))
    return r


def rank_for_energy(eigenvalues: torch.Tensor, tau: float) -> int:
    total = eigenvalues.sum()
    if total <= 0:
        return 1
    cum = eigenvalues.cumsum(0) / total
    # A relative slack of a few ε: cum of exactly τ-shaped spectra must not miss by rounding.
    hit = (cum >= tau * (1 - 8 * torch.finfo(cum.dtype).eps)).nonzero()
    return int(hit[0]) + 1 if hit.numel() else eigenvalues.numel()


@dataclass
class Subspace:
    """``mean`` is m × n; ``bases[mode]`` has orthonormal columns (d × r); ``eigenvalues[mode]``
    is the whole descending spectrum of the centred mode Gram (σ², not only the kept r)."""

    slot: str
    mean: torch.Tensor
    bases: Dict[str, torch.Tensor]
    eigenvalues: Dict[str, torch.Tensor]
    count: int
    center: bool = True
    metadata: Dict = field(default_factory=dict)

    def rank(self, mode: str) -> int:
        return self.bases[mode].shape[1]

    def singular_values(self, mode: str) -> torch.Tensor:
        return self.eigenvalues[mode].sqrt()

    def explained_variance_ratio(self, mode: str) -> torch.Tensor:
        ev = self.eigenvalues[mode]
        return ev / ev.sum() if ev.sum() > 0 else torch.zeros_like(ev)

    def coefficients(self, W: torch.Tensor) -> torch.Tensor:
        """C = U_outᵀ (W − μ) U_in over the analysed modes (identity on a mode not analysed)."""
        D = W.to(self.mean.dtype) - (self.mean if self.center else 0)
        if "out" in self.bases:
            D = self.bases["out"].T @ D
        if "in" in self.bases:
            D = D @ self.bases["in"]
        return D

    def reconstruct(self, C: torch.Tensor) -> torch.Tensor:
        if "out" in self.bases:
            C = self.bases["out"] @ C
        if "in" in self.bases:
            C = C @ self.bases["in"].T
        return C + (self.mean if self.center else 0)

    def save(self, path):
        tensors = {"mean": self.mean}
        for m in self.bases:
            tensors[f"basis.{m}"] = self.bases[m]
            tensors[f"eigenvalues.{m}"] = self.eigenvalues[m]
        meta = {"slot": self.slot, "count": self.count, "center": self.center,
                "modes": list(self.bases), "metadata": self.metadata, "format": "unisub.subspace/1"}
        save_file(tensors, path, metadata={"unisub": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "Subspace":
        f = SafetensorsFile(path)
        meta = json.loads(f.header.metadata.get("unisub", "{}"))
        if meta.get("format") != "unisub.subspace/1":
            raise ValueError(f"{path}: not a unisub subspace file (metadata format {meta.get('format')!r})")
        return cls(slot=meta["slot"], mean=f.get("mean"),
                   bases={m: f.get(f"basis.{m}") for m in meta["modes"]},
                   eigenvalues={m: f.get(f"eigenvalues.{m}") for m in meta["modes"]},
                   count=meta["count"], center=meta["center"], metadata=meta["metadata"])

    def __repr__(self):
        ranks = ", ".join(f"{m}: {tuple(self.bases[m].shape)}" for m in self.bases)
        return f"Subspace(slot={self.slot!r}, mean {tuple(self.mean.shape)}, models={self.count}, bases {{{ranks}}})"
