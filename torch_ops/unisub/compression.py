"""Store a zoo of M models as a shared mean, shared per-slot bases and small per-model
coefficients: ``W_i ≈ μ + U_out C_i U_inᵀ`` (DESIGN.md §1, use (a))."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from .accumulator import SubspaceAccumulator
from .io.safetensors import open_unisub_file, save_file

FORMAT = "unisub.compressed/1"


@dataclass
class CompressedZoo:
    """Per compressed slot: ``means[k]`` (m × n), ``bases[k] = (U_out, U_in)`` and
    ``coefficients[k]`` (M × r_out × r_in); slots kept whole (1-D tensors, integer tensors, slots
    not worth compressing) in ``raw[k]`` (M × shape). ``shapes`` keeps each tensor's original shape
    and ``dtypes`` its dtype name."""

    means: Dict[str, torch.Tensor]
    bases: Dict[str, tuple]
    coefficients: Dict[str, torch.Tensor]
    raw: Dict[str, torch.Tensor]
    shapes: Dict[str, List[int]]
    dtypes: Dict[str, str]
    count: int
    metadata: Dict = field(default_factory=dict)

    def decompress(self, i: int) -> Dict[str, torch.Tensor]:
        """Model ``i``'s state dict (compressed slots reconstructed, in their original dtype)."""
        if not (isinstance(i, int) and not isinstance(i, bool) and -self.count <= i < self.count):
            raise IndexError(f"CompressedZoo.decompress: model index {i!r} out of range for {self.count} models")
        out = {}
        for k, shape in self.shapes.items():
            dtype = getattr(torch, self.dtypes[k])
            if k in self.raw:
                out[k] = self.raw[k][i].clone()
            else:
                U, V = self.bases[k]
                W = self.means[k] + U @ self.coefficients[k][i] @ V.T
                out[k] = W.reshape(shape).to(dtype)
        return out

    def nbytes(self) -> int:
        tensors = [*self.means.values(), *self.coefficients.values(), *self.raw.values()]
        tensors += [B for pair in self.bases.values() for B in pair]
        return sum(t.numel() * t.element_size() for t in tensors)

    def original_nbytes(self) -> int:
        return self.count * sum(torch.Size(s).numel() * getattr(torch, self.dtypes[k]).itemsize
                                for k, s in self.shapes.items())

    def ratio(self) -> float:
        """Original bytes / compressed bytes."""
        return self.original_nbytes() / self.nbytes()

    def save(self, path) -> None:
        tensors = {}
        for k in self.means:
            tensors[f"{k}::mean"] = self.means[k]
            tensors[f"{k}::U_out"], tensors[f"{k}::U_in"] = self.bases[k]
            tensors[f"{k}::coefficients"] = self.coefficients[k]
        for k, t in self.raw.items():
            tensors[f"{k}::raw"] = t
        meta = {"format": FORMAT, "count": self.count, "shapes": self.shapes, "dtypes": self.dtypes,
                "compressed": list(self.means), "raw": list(self.raw), "metadata": self.metadata}
        save_file(tensors, path, metadata={"unisub": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "CompressedZoo":
        f, meta = open_unisub_file(path, FORMAT, "unisub compressed zoo")
        c = meta["compressed"]
        return cls(means={k: f.get(f"{k}::mean") for k in c},
                   bases={k: (f.get(f"{k}::U_out"), f.get(f"{k}::U_in")) for k in c},
                   coefficients={k: f.get(f"{k}::coefficients") for k in c},
                   raw={k: f.get(f"{k}::raw") for k in meta["raw"]},
                   shapes=meta["shapes"], dtypes=meta["dtypes"], count=meta["count"], metadata=meta["metadata"])


def compress(models: Sequence[Mapping[str, torch.Tensor]], rank: Optional[int] = None,
             energy: Optional[float] = None, keys: Optional[Sequence[str]] = None,
             dtype: torch.dtype = torch.float32) -> CompressedZoo:
    """Compress ``models`` (state dicts of one architecture) slot by slot: centred mode-wise bases
    with ``rank`` components per mode, or the fewest reaching ``energy`` explained variance (both:
    the smaller). Bases, means and coefficients are stored in ``dtype``.

    A slot is compressed only when that saves bytes (``r_out·r_in·M + (m + n)·r + m·n <
    M·m·n``) and it is a floating matrix (conv kernels as C_out × rest); other tensors — and any
    not in ``keys`` — are stored whole. ``rank=None, energy=None`` keeps every component: lossless
    up to rounding, and larger than the input (useful only as a check)."""
    if len(models) == 0:
        raise ValueError("compress: models is empty; give at least one state dict")
    names = list(models[0])
    for i, sd in enumerate(models[1:], 1):
        if set(sd) != set(names):
            raise ValueError(f"compress: models[{i}] has different keys from models[0]")
    chosen = set(names if keys is None else keys)
    unknown = chosen - set(names)
    if unknown:
        raise ValueError(f"compress: keys not in the models: {sorted(unknown)[:3]}")
    M = len(models)
    zoo = CompressedZoo({}, {}, {}, {}, {}, {}, M, {"rank": rank, "energy": energy})
    for k in names:
        shapes = {tuple(sd[k].shape) for sd in models}
        if len(shapes) > 1:
            raise ValueError(f"compress: tensor {k!r} has different shapes across models: {sorted(shapes)}")
        t0 = models[0][k]
        zoo.shapes[k], zoo.dtypes[k] = list(t0.shape), str(t0.dtype).replace("torch.", "")
        if k not in chosen or t0.dim() < 2 or not t0.is_floating_point():
            zoo.raw[k] = torch.stack([sd[k].detach() for sd in models])
            continue
        X = torch.stack([sd[k].detach().double().reshape(t0.shape[0], -1) for sd in models])
        if not torch.isfinite(X).all():
            raise ValueError(f"compress: tensor {k!r} has non-finite entries in some model")
        s = SubspaceAccumulator(modes=("out", "in"), center=True).update(X).finalize(rank=rank, energy=energy, slot=k)
        U, V = s.bases["out"], s.bases["in"]
        m, n = X.shape[1:]
        cost = M * U.shape[1] * V.shape[1] + m * U.shape[1] + n * V.shape[1] + m * n
        if cost >= M * m * n and (rank is not None or energy is not None):
            zoo.raw[k] = torch.stack([sd[k].detach() for sd in models])
            continue
        zoo.means[k] = s.mean.to(dtype)
        zoo.bases[k] = (U.to(dtype).contiguous(), V.to(dtype).contiguous())
        zoo.coefficients[k] = torch.stack([s.coefficients(W) for W in X]).to(dtype)
    return zoo
