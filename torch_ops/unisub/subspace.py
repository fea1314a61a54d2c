"""A fitted universal subspace of one slot: mean, per-mode bases and full spectra."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from .io.safetensors import SafetensorsFile, open_unisub_file, save_file


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
    """The smallest r whose cumulative explained variance reaches ``tau`` within rounding (8·d·ε):
    libunisub's one rule, the one ``mode_svd(energy=tau)`` and ``unisub-analyze`` use."""
    return int(torch.ops.unisub.rank_for_energy(eigenvalues, float(tau)))


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
    def from_result(cls, result) -> "Subspace":
        """From libunisub's finished slot ``(entry, tensors, meta)`` (what the file would hold)."""
        _, t, meta = result
        meta = json.loads(meta) if isinstance(meta, str) else meta
        return cls(slot=meta["slot"], mean=t["mean"], bases={m: t[f"basis.{m}"] for m in meta["modes"]},
                   eigenvalues={m: t[f"eigenvalues.{m}"] for m in meta["modes"]}, count=meta["count"],
                   center=meta["center"], metadata=meta["metadata"])

    @classmethod
    def load(cls, path) -> "Subspace":
        if _format_of(path) == DELTA_FORMAT:
            raise ValueError(f"{path}: holds a LoRA-delta (model-axis) analysis; load it with "
                             f"unisub.subspace.DeltaSubspace.load or load_any")
        f, meta = open_unisub_file(path, "unisub.subspace/1", "unisub subspace file")
        return cls(slot=meta["slot"], mean=f.get("mean"),
                   bases={m: f.get(f"basis.{m}") for m in meta["modes"]},
                   eigenvalues={m: f.get(f"eigenvalues.{m}") for m in meta["modes"]},
                   count=meta["count"], center=meta["center"], metadata=meta["metadata"])

    def __repr__(self):
        ranks = ", ".join(f"{m}: {tuple(self.bases[m].shape)}" for m in self.bases)
        return f"Subspace(slot={self.slot!r}, mean {tuple(self.mean.shape)}, models={self.count}, bases {{{ranks}}})"


DELTA_FORMAT = "unisub.lora_delta/1"


@dataclass
class DeltaSubspace:
    """Model-space PCA (mode 0) of the LoRA deltas ΔW_i = s_i·B_i·A_i of one module (M models).

    ``eigenvalues`` [M]: the whole descending spectrum of the (centred) K_ij = ⟨ΔW_i, ΔW_j⟩_F, i.e.
    σ² of the model-axis unfolding; ``eigenvectors`` [M, r]: the leading r of K's eigenvectors
    (models in ``ids`` order); ``gram`` [M, M]: the uncentred K; ``scalings`` [M] and ``ranks``: each
    model's s_i and LoRA rank. ``scores()`` [M, r] are the per-model coefficients c_ik =
    ⟨ΔW_i − mean, E_k⟩ on the unit-norm eigen-weights E_k (m × n), which are stored only when
    materialised (``eigen_weights`` [k, m, n] with ``mean`` [m, n]; otherwise None).

    Saved as safetensors with metadata format ``unisub.lora_delta/1`` (tensors ``eigenvalues``,
    ``eigenvectors``, ``gram``, ``scalings`` and, if materialised, ``eigen_weights``, ``mean``)."""

    slot: str
    shape: tuple
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    gram: torch.Tensor
    scalings: torch.Tensor
    ranks: list
    ids: list
    center: bool = True
    eigen_weights: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    metadata: Dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.eigenvalues.numel()

    def rank(self, mode: str = "delta") -> int:
        return self.eigenvectors.shape[1]

    def singular_values(self, mode: str = "delta") -> torch.Tensor:
        return self.eigenvalues.sqrt()

    def explained_variance_ratio(self, mode: str = "delta") -> torch.Tensor:
        ev = self.eigenvalues
        return ev / ev.sum() if ev.sum() > 0 else torch.zeros_like(ev)

    def scores(self) -> torch.Tensor:
        """[M, r]: model i's coordinates on the leading r eigen-weights (V_ik · σ_k)."""
        return self.eigenvectors * self.eigenvalues[:self.rank()].sqrt()

    def save(self, path):
        tensors = {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors, "gram": self.gram,
                   "scalings": self.scalings}
        if self.eigen_weights is not None:
            tensors["eigen_weights"] = self.eigen_weights
            tensors["mean"] = self.mean
        meta = {"slot": self.slot, "shape": list(self.shape), "count": self.count, "center": self.center,
                "modes": ["delta"], "ranks": list(self.ranks), "ids": list(self.ids),
                "metadata": self.metadata, "format": DELTA_FORMAT}
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"unisub": json.dumps(meta)})

    @classmethod
    def from_result(cls, result) -> "DeltaSubspace":
        """From libunisub's finished slot ``(entry, tensors, meta)`` (what the file would hold)."""
        _, t, meta = result
        meta = json.loads(meta) if isinstance(meta, str) else meta
        return cls(slot=meta["slot"], shape=tuple(meta["shape"]), eigenvalues=t["eigenvalues"],
                   eigenvectors=t["eigenvectors"], gram=t["gram"], scalings=t["scalings"], ranks=meta["ranks"],
                   ids=meta["ids"], center=meta["center"], eigen_weights=t.get("eigen_weights"), mean=t.get("mean"),
                   metadata=meta["metadata"])

    @classmethod
    def load(cls, path) -> "DeltaSubspace":
        f, meta = open_unisub_file(path, DELTA_FORMAT, "unisub LoRA-delta file")
        ew = "eigen_weights" in f.header.tensors
        return cls(slot=meta["slot"], shape=tuple(meta["shape"]), eigenvalues=f.get("eigenvalues"),
                   eigenvectors=f.get("eigenvectors"), gram=f.get("gram"), scalings=f.get("scalings"),
                   ranks=meta["ranks"], ids=meta["ids"], center=meta["center"],
                   eigen_weights=f.get("eigen_weights") if ew else None, mean=f.get("mean") if ew else None,
                   metadata=meta["metadata"])

    def __repr__(self):
        ew = "" if self.eigen_weights is None else f", eigen-weights {tuple(self.eigen_weights.shape)}"
        return (f"DeltaSubspace(slot={self.slot!r}, ΔW {tuple(self.shape)}, models={self.count}, "
                f"LoRA ranks {sorted(set(self.ranks))}, rank {self.rank()}{ew})")


def load_any(path):
    """A ``Subspace`` or a ``DeltaSubspace``, whichever the file holds."""
    return DeltaSubspace.load(path) if _format_of(path) == DELTA_FORMAT else Subspace.load(path)


def _format_of(path) -> Optional[str]:
    try:
        return json.loads(SafetensorsFile(path).header.metadata.get("unisub", "{}")).get("format")
    except json.JSONDecodeError:
        return None
