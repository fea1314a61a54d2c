"""Streaming, mergeable, resumable mode Grams of one layer slot.

Centring is exact and stable: each batch is centred on its own mean (float64), its centred Gram
taken with ``gram_update_``, and batches are combined with the pairwise update of Chan, Golub and
LeVeque: for parts a, b with counts n_a, n_b, means μ_a, μ_b and δ = μ_b − μ_a,

    G = G_a + G_b + (n_a n_b / n) · δ δᵀ   (mode out; δᵀ δ for mode in),  μ = μ_a + (n_b / n) δ.

Nothing is ever subtracted from a large uncentred sum, so a stack with a large common offset loses
no more than its own rounding. The distributed reduction uses the same identity around the global
mean, so it is one ``all_reduce`` of a Gram per mode, not a gather of every rank's Gram.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

from .ops import gram_update_

MODE_DIMS = {"out": 1, "in": 2}


def _outer(delta: torch.Tensor, mode: str) -> torch.Tensor:
    return delta @ delta.T if mode == "out" else delta.T @ delta


class SubspaceAccumulator:
    """Accumulates, for a slot of m × n matrices, the model count, the mean and the (centred)
    Gram of each requested mode ("out": m × m, "in": n × n) in float64.

    Mode 0 (the model axis) is not streamed here: its Gram grows with the number of models; for
    LoRA ΔW = B·A it is the job of ``torch.ops.unisub.lora_gram``, which this class does not use yet.
    """

    def __init__(self, shape: Optional[Tuple[int, int]] = None, modes: Sequence[str] = ("out", "in"),
                 center: bool = True, device=None):
        modes = tuple(modes)
        bad = [m for m in modes if m not in MODE_DIMS]
        if bad or not modes:
            raise ValueError(f"SubspaceAccumulator: modes must be a non-empty subset of {list(MODE_DIMS)}, got {list(modes)}")
        self.modes, self.center = modes, bool(center)
        self.device = torch.device(device) if device is not None else None
        self.count = 0
        self.shape = None
        self.mean = None
        self.grams: Dict[str, torch.Tensor] = {}
        if shape is not None:
            self._init(tuple(int(s) for s in shape), self.device or torch.device("cpu"))

    def _init(self, shape, device):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"SubspaceAccumulator: shape must be (m, n) with m, n >= 1, got {shape}")
        self.shape, self.device = shape, device
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.grams = {m: torch.zeros(shape[MODE_DIMS[m] - 1], shape[MODE_DIMS[m] - 1],
                                     dtype=torch.float64, device=device) for m in self.modes}

    def update(self, X: torch.Tensor) -> "SubspaceAccumulator":
        """Add a batch ``X[b, m, n]`` (any float dtype) of models."""
        if X.dim() != 3:
            raise ValueError(f"SubspaceAccumulator.update: X must be [batch, m, n], got shape {list(X.shape)}")
        if not X.is_floating_point():
            raise TypeError(f"SubspaceAccumulator.update: X must be floating point, got {X.dtype}")
        if self.shape is None:
            self._init(tuple(X.shape[1:]), self.device or X.device)
        if tuple(X.shape[1:]) != self.shape:
            raise ValueError(f"SubspaceAccumulator.update: expected models of shape {list(self.shape)}, "
                             f"got {list(X.shape[1:])}")
        if X.shape[0] == 0:
            return self
        X = X.to(device=self.device, dtype=torch.float64)
        batch = SubspaceAccumulator(self.shape, self.modes, self.center, self.device)
        batch.count = X.shape[0]
        batch.mean = X.mean(0)
        D = X - batch.mean if self.center else X
        for m in self.modes:
            gram_update_(batch.grams[m], D, MODE_DIMS[m])
        return self.merge(batch)

    def merge(self, other: "SubspaceAccumulator") -> "SubspaceAccumulator":
        """Fold ``other`` (same shape, modes and centring) into this one; returns self."""
        if other.count == 0:
            return self
        if self.shape is None:
            self._init(other.shape, other.device)
        if (other.shape, other.modes, other.center) != (self.shape, self.modes, self.center):
            raise ValueError(f"SubspaceAccumulator.merge: incompatible accumulators: shape {other.shape} vs "
                             f"{self.shape}, modes {other.modes} vs {self.modes}, center {other.center} vs {self.center}")
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean.to(self.device) - self.mean
        for m in self.modes:
            self.grams[m] += other.grams[m].to(self.device)
            if self.center and na:
                self.grams[m] += (na * nb / n) * _outer(delta, m)
        self.mean += (nb / n) * delta
        self.count = n
        return self

    def merged(self, other: "SubspaceAccumulator") -> "SubspaceAccumulator":
        out = SubspaceAccumulator(None, self.modes, self.center, self.device)
        return out.merge(self).merge(other)

    def all_reduce(self, group=None) -> "SubspaceAccumulator":
        """Combine the accumulators of every process of ``group`` (each rank ends with the total).

        All ranks must have been built with the same shape (pass ``shape`` when a rank may see no
        models). Uses the parallel-axis form of the pairwise update around the global mean."""
        import torch.distributed as dist

        if self.shape is None:
            raise RuntimeError("SubspaceAccumulator.all_reduce: the shape is unknown on this rank; "
                               "construct the accumulator with shape=(m, n)")
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(count, group=group)
        total = int(round(count.item()))
        if total == 0:
            return self
        weighted = self.mean * self.count
        dist.all_reduce(weighted, group=group)
        mean = weighted / total
        delta = self.mean - mean
        for m in self.modes:
            G = self.grams[m]
            if self.center and self.count:
                G = G + self.count * _outer(delta, m)
            dist.all_reduce(G, group=group)
            self.grams[m] = G
        self.mean, self.count = mean, total
        return self

    def state_dict(self) -> dict:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        state = {"modes": list(self.modes), "center": self.center, "count": self.count,
                 "shape": list(self.shape) if self.shape else None}
        if self.shape is not None:
            state["mean"] = self.mean.cpu()
            for m in self.modes:
                state[f"gram.{m}"] = self.grams[m].cpu()
        return state

    def load_state_dict(self, state: dict) -> "SubspaceAccumulator":
        if list(state["modes"]) != list(self.modes) or bool(state["center"]) != self.center:
            raise ValueError(f"SubspaceAccumulator.load_state_dict: state has modes {state['modes']} and center "
                             f"{state['center']}, this accumulator {list(self.modes)} and {self.center}")
        self.count = int(state["count"])
        if state["shape"] is None:
            self.shape, self.mean, self.grams = None, None, {}
            return self
        self._init(tuple(state["shape"]), self.device or torch.device("cpu"))
        self.mean.copy_(state["mean"])
        for m in self.modes:
            self.grams[m].copy_(state[f"gram.{m}"])
        return self

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "SubspaceAccumulator":
        return cls(None, state["modes"], state["center"], device).load_state_dict(state)

    def eigh(self, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending, clamped at 0: a Gram is PSD, negatives are rounding) and
        eigenvectors of one mode's Gram, with the sign rule of ``svd`` (largest entry positive)."""
        if self.count == 0:
            raise RuntimeError("SubspaceAccumulator: no models were accumulated")
        evals, evecs = torch.linalg.eigh(self.grams[mode])
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        idx = evecs.abs().argmax(0)
        signs = torch.sign(evecs.gather(0, idx[None]))
        signs[signs == 0] = 1
        return evals, evecs * signs

    def finalize(self, rank: Optional[int] = None, energy: Optional[float] = None, slot: str = "", metadata=None):
        """The ``Subspace``: per mode the leading eigenvectors of the Gram, keeping ``rank``
        components, or the fewest whose cumulative explained variance reaches ``energy`` (capped
        by ``rank`` when both are given), or all of them."""
        from .subspace import Subspace, choose_rank

        bases, spectra = {}, {}
        for m in self.modes:
            evals, evecs = self.eigh(m)
            r = choose_rank(evals, rank, energy)
            bases[m], spectra[m] = evecs[:, :r].contiguous(), evals
        return Subspace(slot=slot, mean=self.mean.clone(), bases=bases, eigenvalues=spectra,
                        count=self.count, center=self.center, metadata=dict(metadata or {}))
