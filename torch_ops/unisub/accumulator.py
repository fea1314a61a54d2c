"""Streaming, mergeable, resumable mode Grams of one layer slot.

Centring is exact and stable: each batch is centred on its own mean (float64), its centred Gram
taken with ``gram_update_``, and batches are combined with the pairwise update of Chan, Golub and
LeVeque: for parts a, b with counts n_a, n_b, means μ_a, μ_b and δ = μ_b − μ_a,

    G = G_a + G_b + (n_a n_b / n) · δ δᵀ   (mode out; δᵀ δ for mode in),  μ = μ_a + (n_b / n) δ.

Nothing is ever subtracted from a large uncentred sum, so a stack with a large common offset loses
no more than its own rounding. The distributed reduction uses the same identity around the global
mean, so it is one ``all_reduce`` of a Gram per mode, not a gather of every rank's Gram.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .ops import gram_update_, lora_gram

MODE_DIMS = {"out": 1, "in": 2}


def sorted_eigh(G: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues of a Gram, descending and clamped at 0 (negatives are rounding), and its
    eigenvectors with the sign rule of ``svd`` (each column's largest-magnitude entry positive)."""
    return torch.ops.unisub.sorted_eigh(G)  # libunisub's, the one unisub-analyze uses


def double_center(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I − 11ᵀ/M: the Gram of the rows minus their mean, from their Gram (the same
    float64 formula as ``lora_gram(..., center=True)``)."""
    row = K.mean(1, keepdim=True)
    return K - (row + row.T) + K.mean()


def _add_outer_(G: torch.Tensor, delta: torch.Tensor, mode: str, alpha: float):
    """G += alpha · δδᵀ (mode out) or alpha · δᵀδ (mode in), in place (no Gram-sized temporaries)."""
    if mode == "out":
        G.addmm_(delta, delta.T, alpha=alpha)
    else:
        G.addmm_(delta.T, delta, alpha=alpha)


def _outer(delta: torch.Tensor, mode: str) -> torch.Tensor:
    return delta @ delta.T if mode == "out" else delta.T @ delta


class SubspaceAccumulator:
    """Accumulates, for a slot of m × n matrices, the model count, the mean and the (centred)
    Gram of each requested mode ("out": m × m, "in": n × n) in float64.

    Mode 0 (the model axis) is not streamed here: its Gram is M × M and couples every pair of
    models. For LoRA deltas ΔW = s·B·A it is :class:`LoraDeltaAccumulator` (through
    ``torch.ops.unisub.lora_gram``, never forming ΔW); ``modes=("delta",)`` is rejected here with
    a pointer to it.
    """

    def __init__(self, shape: Optional[Tuple[int, int]] = None, modes: Sequence[str] = ("out", "in"),
                 center: bool = True, device=None):
        modes = tuple(modes)
        if "delta" in modes:
            raise ValueError("SubspaceAccumulator: mode 'delta' (the model axis of LoRA deltas ΔW = s·B·A) is "
                             "LoraDeltaAccumulator's job: it needs the LoRA factors, not whole matrices")
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

    def update(self, X, workspace: Optional["Workspace"] = None) -> "SubspaceAccumulator":
        """Add a batch of models: ``X[b, m, n]``, or a sequence of b ``[m, n]`` tensors (any float
        dtype; a sequence spares the caller a stacked copy).

        ``workspace``: a :class:`Workspace` of this shape, modes and device whose float64 buffers
        the update uses instead of allocating its own (pass the same one to every update of a
        stream: nothing slot-sized is then allocated or freed per batch, which is what keeps a
        long streamed analysis's resident memory at its live data; see ``Workspace``)."""
        models = self._check_batch(X)
        if not models:
            return self
        ws = workspace if workspace is not None else Workspace(self.shape, self.modes, self.center, self.device)
        ws.check(self)
        # One model at a time in float64: the batch itself is never copied to float64 (for a
        # float16 batch that copy alone was 4x its size), and a single centred model's unfolding
        # is a plain view that gram_update_ hands to BLAS without packing.
        batch, d = ws.batch, ws.model
        batch.count = len(models)
        batch.mean.zero_()
        for x in models:
            d.copy_(x)
            batch.mean += d
        batch.mean /= len(models)
        if not bool(torch.isfinite(batch.mean).all()):
            # A NaN or infinity in any model reaches the batch mean; caught here, before this
            # accumulator changes, rather than as an eigensolver failure at finalize.
            bad = next(i for i, x in enumerate(models) if not bool(torch.isfinite(x).all()))
            raise ValueError(f"SubspaceAccumulator.update: model {bad} of the batch holds NaN or infinity; "
                             f"every model must be finite")
        for G in batch.grams.values():
            G.zero_()
        for x in models:
            d.copy_(x)  # a copy: centring in place must never touch the caller's tensor
            if self.center:
                d -= batch.mean
            for m in self.modes:
                # A contiguous float64 Gram is accumulated in place and d's unfolding is a
                # view: nothing is allocated per call.
                gram_update_(batch.grams[m], d[None], MODE_DIMS[m])
        return self._merge(batch, delta=d)

    def _check_batch(self, X) -> List[torch.Tensor]:
        """X as a list of [m, n] models, checked; initialises the shape from the first batch."""
        if isinstance(X, torch.Tensor):
            if X.dim() != 3:
                raise ValueError(f"SubspaceAccumulator.update: X must be [batch, m, n], got shape {list(X.shape)}")
            models, dtypes, shapes = list(X), {X.dtype}, {tuple(X.shape[1:])}
            first = X
        else:
            models = list(X)
            bad = [list(getattr(x, "shape", [])) for x in models if not isinstance(x, torch.Tensor) or x.dim() != 2]
            if bad:
                raise ValueError(f"SubspaceAccumulator.update: a sequence of models must hold [m, n] tensors, "
                                 f"got shapes {bad[:3]}")
            if not models:
                return models
            dtypes, shapes = {x.dtype for x in models}, {tuple(x.shape) for x in models}
            first = models[0]
        bad = [d for d in dtypes if not d.is_floating_point]
        if bad:
            raise TypeError(f"SubspaceAccumulator.update: X must be floating point, got {bad[0]}")
        if self.shape is None:
            self._init(tuple(first.shape[-2:]), self.device or first.device)
        if shapes != {self.shape}:
            raise ValueError(f"SubspaceAccumulator.update: expected models of shape {list(self.shape)}, "
                             f"got {list(sorted(shapes - {self.shape})[0])}")
        return models

    def merge(self, other: "SubspaceAccumulator") -> "SubspaceAccumulator":
        """Fold ``other`` (same shape, modes and centring) into this one; returns self."""
        return self._merge(other)

    def _merge(self, other: "SubspaceAccumulator", delta: Optional[torch.Tensor] = None) -> "SubspaceAccumulator":
        """``merge``; ``delta``: a float64 buffer of the mean's shape and device to use for
        μ_b − μ_a (and then its scaled copy) instead of two fresh slot-sized temporaries."""
        if other.count == 0:
            return self
        if self.shape is None:
            self._init(other.shape, other.device)
        if (other.shape, other.modes, other.center) != (self.shape, self.modes, self.center):
            raise ValueError(f"SubspaceAccumulator.merge: incompatible accumulators: shape {other.shape} vs "
                             f"{self.shape}, modes {other.modes} vs {self.modes}, center {other.center} vs {self.center}")
        na, nb = self.count, other.count
        n = na + nb
        if delta is None:
            delta = other.mean.to(self.device) - self.mean
        else:
            torch.sub(other.mean.to(self.device), self.mean, out=delta)
        for m in self.modes:
            self.grams[m] += other.grams[m].to(self.device)
            if self.center and na:
                _add_outer_(self.grams[m], delta, m, na * nb / n)
        self.mean += delta.mul_(nb / n)
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
        shape = tuple(int(x) for x in state["shape"])
        for key, want in [("mean", shape)] + [(f"gram.{m}", (shape[MODE_DIMS[m] - 1],) * 2) for m in self.modes]:
            got = state.get(key)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
                # copy_ would broadcast a wrong-shaped tensor into the buffer without a word
                raise ValueError(f"SubspaceAccumulator.load_state_dict: state[{key!r}] must be a tensor of shape "
                                 f"{list(want)}, got {list(got.shape) if isinstance(got, torch.Tensor) else got!r}")
        self._init(shape, self.device or torch.device("cpu"))
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
        return sorted_eigh(self.grams[mode])

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


class Workspace:
    """The float64 buffers of ``SubspaceAccumulator.update`` for one (m, n) shape, set of modes and
    device: the batch's mean and Grams, and one model (centred in place, then reused for the
    merge's δ). Slot-sized: 8·m·n·2 bytes plus 8·d² per mode (d = m for "out", n for "in").

    Why it exists: without it every update allocates and frees those buffers (and their float64
    temporaries) afresh, a few slot-sized blocks per model. glibc serves blocks that size from
    its heap once its dynamic mmap threshold has risen past them, and the pages of freed heap
    blocks stay resident until ``malloc_trim``; the blocks an update touches drift through a
    fragmented heap, so the resident set during an update grew well past the live data, and the
    more batches a run had, the higher its worst batch went. With one workspace per stream the
    same buffers serve every batch."""

    def __init__(self, shape: Tuple[int, int], modes: Sequence[str] = ("out", "in"), center: bool = True,
                 device=None):
        self.batch = SubspaceAccumulator(shape, modes, center, device)
        self.shape, self.modes, self.device = self.batch.shape, self.batch.modes, self.batch.device
        self.model = torch.empty(self.shape, dtype=torch.float64, device=self.device)

    def fits(self, acc: "SubspaceAccumulator") -> bool:
        return (acc.shape, acc.modes, acc.center, acc.device) == (self.shape, self.modes, self.batch.center,
                                                                   self.device)

    def check(self, acc: "SubspaceAccumulator"):
        if not self.fits(acc):
            raise ValueError(f"SubspaceAccumulator.update: the workspace is for shape {self.shape}, modes "
                             f"{self.modes}, center {self.batch.center} on {self.device}; the accumulator has "
                             f"{acc.shape}, {acc.modes}, {acc.center} on {acc.device}")


class LoraDeltaAccumulator:
    """Mode 0 (the model axis) of the LoRA deltas ΔW_i = s_i·B_i·A_i of one module: model-space PCA
    through ``lora_gram``, without ever forming a ΔW_i.

    K_ij = ⟨ΔW_i, ΔW_j⟩_F couples every pair of models, so unlike the mode Grams it cannot be
    summed batch by batch: the accumulator keeps every model's factors (B_i m × r_i, A_i r_i × n,
    as read: their own dtype and rank) with its scaling s_i and an integer id, and computes K once,
    in float64, when it is first needed. Models may have different LoRA ranks (PEFT
    ``rank_pattern``, or adapters trained with different r): the factors are zero-padded to the
    largest rank, which leaves every B_i·A_i unchanged.

    Memory: Σ_i r_i (m + n) stored elements (the factors themselves, e.g. 500 rank-16 adapters of a
    4096 × 4096 module in float32: 262 MB per module), and while K is computed float64 copies of all
    factors padded to r_max (8·M·r_max·(m + n) bytes; ``lora_gram`` makes one more of B) and K
    itself (8·M² bytes). ``merge`` concatenates factor lists, so the cross blocks between the
    parts are in K; ``all_reduce`` gathers every rank's factors (``all_gather_object``) and orders
    them by id, so every rank ends with the K of all models, equal to a single process's.
    """

    def __init__(self, shape: Optional[Tuple[int, int]] = None, center: bool = True, device=None):
        self.center = bool(center)
        self.device = torch.device(device) if device is not None else None
        self.shape = None if shape is None else tuple(int(x) for x in shape)
        if self.shape is not None and (len(self.shape) != 2 or min(self.shape) < 1):
            raise ValueError(f"LoraDeltaAccumulator: shape must be (m, n) with m, n >= 1, got {self.shape}")
        self.B: List[torch.Tensor] = []
        self.A: List[torch.Tensor] = []
        self.scalings: List[float] = []
        self.ids: List[int] = []
        self._K = None

    @property
    def count(self) -> int:
        return len(self.B)

    @property
    def ranks(self) -> List[int]:
        return [b.shape[1] for b in self.B]

    def add(self, B: torch.Tensor, A: torch.Tensor, scaling: float = 1.0, id: Optional[int] = None):
        """One model: ``B[m, r]``, ``A[r, n]`` (any float dtype), ΔW = scaling · B · A."""
        if B.dim() != 2 or A.dim() != 2:
            raise ValueError(f"LoraDeltaAccumulator.add: B must be [m, r] and A [r, n], got shapes "
                             f"{list(B.shape)} and {list(A.shape)}")
        if not (B.is_floating_point() and A.is_floating_point()):
            raise TypeError(f"LoraDeltaAccumulator.add: factors must be floating point, got {B.dtype} and {A.dtype}")
        if B.shape[1] != A.shape[0]:
            raise ValueError(f"LoraDeltaAccumulator.add: the LoRA rank must agree: B is {list(B.shape)}, A is {list(A.shape)}")
        shape = (B.shape[0], A.shape[1])
        if self.shape is None:
            self.shape = shape
        if shape != self.shape:
            raise ValueError(f"LoraDeltaAccumulator.add: expected ΔW of shape {list(self.shape)}, got B {list(B.shape)} "
                             f"· A {list(A.shape)} = {list(shape)}")
        scaling = float(scaling)
        if not torch.isfinite(torch.tensor(scaling)):
            raise ValueError(f"LoraDeltaAccumulator.add: scaling must be finite, got {scaling}")
        if id is not None and int(id) in self.ids:
            raise ValueError(f"LoraDeltaAccumulator.add: model id {int(id)} is already in this accumulator; "
                             f"give each model a distinct id")
        device = self.device or B.device
        self.device = device
        self.B.append(B.detach().to(device).clone())
        self.A.append(A.detach().to(device).clone())
        self.scalings.append(scaling)
        self.ids.append(int(id) if id is not None else (max(self.ids) + 1 if self.ids else 0))
        self._K = None
        return self

    def update(self, B: torch.Tensor, A: torch.Tensor, scalings=None, ids: Optional[Sequence[int]] = None):
        """A batch of models of one rank: ``B[b, m, r]``, ``A[b, r, n]``; ``scalings`` a number or
        b numbers (default 1); ``ids`` b integers (default: after the largest id so far)."""
        if B.dim() != 3 or A.dim() != 3 or B.shape[0] != A.shape[0]:
            raise ValueError(f"LoraDeltaAccumulator.update: B must be [b, m, r] and A [b, r, n], got shapes "
                             f"{list(B.shape)} and {list(A.shape)}")
        b = B.shape[0]
        if scalings is None or isinstance(scalings, (int, float)):
            scalings = [1.0 if scalings is None else float(scalings)] * b
        scalings = [float(x) for x in (scalings.tolist() if isinstance(scalings, torch.Tensor) else scalings)]
        if len(scalings) != b or (ids is not None and len(ids) != b):
            raise ValueError(f"LoraDeltaAccumulator.update: need {b} scalings and ids, got {len(scalings)} and "
                             f"{None if ids is None else len(ids)}")
        for j in range(b):
            self.add(B[j], A[j], scalings[j], None if ids is None else ids[j])
        return self

    def merge(self, other: "LoraDeltaAccumulator") -> "LoraDeltaAccumulator":
        """Append ``other``'s models (K is computed over all of them, cross blocks included)."""
        if other.count == 0:
            return self
        if self.shape is None:
            self.shape = other.shape
        if (other.shape, other.center) != (self.shape, self.center):
            raise ValueError(f"LoraDeltaAccumulator.merge: incompatible accumulators: shape {other.shape} vs "
                             f"{self.shape}, center {other.center} vs {self.center}")
        dup = set(self.ids) & set(other.ids)
        if dup:
            raise ValueError(f"LoraDeltaAccumulator.merge: model ids {sorted(dup)[:5]} are in both accumulators; "
                             f"give each model a distinct id (add(..., id=...))")
        device = self.device or other.device
        self.device = device
        self.B += [b.to(device) for b in other.B]
        self.A += [a.to(device) for a in other.A]
        self.scalings += list(other.scalings)
        self.ids += list(other.ids)
        self._K = None
        return self

    def all_reduce(self, group=None) -> "LoraDeltaAccumulator":
        """Every rank of ``group`` ends with the models of all ranks, ordered by id (so the result
        equals one process that added them in id order). A gather of the factors, not a sum:
        K has cross blocks between the ranks' models that no rank can compute alone."""
        import torch.distributed as dist

        states = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        me = LoraDeltaAccumulator(self.shape, self.center, self.device)
        for st in states:
            me.merge(LoraDeltaAccumulator.from_state_dict(st, self.device))
        order = sorted(range(me.count), key=lambda i: me.ids[i])
        self.shape = me.shape
        self.B, self.A = [me.B[i] for i in order], [me.A[i] for i in order]
        self.scalings, self.ids = [me.scalings[i] for i in order], [me.ids[i] for i in order]
        self._K = None
        return self

    def sort_by_id(self) -> "LoraDeltaAccumulator":
        order = sorted(range(self.count), key=lambda i: self.ids[i])
        if order != list(range(self.count)):
            self.B, self.A = [self.B[i] for i in order], [self.A[i] for i in order]
            self.scalings, self.ids = [self.scalings[i] for i in order], [self.ids[i] for i in order]
            self._K = None
        return self

    def state_dict(self) -> dict:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        return {"kind": "lora_delta", "center": self.center, "shape": list(self.shape) if self.shape else None,
                "B": [b.cpu() for b in self.B], "A": [a.cpu() for a in self.A],
                "scalings": list(self.scalings), "ids": list(self.ids)}

    def load_state_dict(self, state: dict) -> "LoraDeltaAccumulator":
        if state.get("kind") != "lora_delta" or bool(state["center"]) != self.center:
            raise ValueError(f"LoraDeltaAccumulator.load_state_dict: state of kind {state.get('kind')!r} with center "
                             f"{state.get('center')}, this accumulator 'lora_delta' with {self.center}")
        device = self.device or torch.device("cpu")
        self.device = device
        self.shape = tuple(state["shape"]) if state["shape"] is not None else None
        self.B = [b.to(device) for b in state["B"]]
        self.A = [a.to(device) for a in state["A"]]
        self.scalings, self.ids = [float(x) for x in state["scalings"]], [int(x) for x in state["ids"]]
        self._K = None
        return self

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "LoraDeltaAccumulator":
        return cls(None, state["center"], device).load_state_dict(state)

    def factors(self, dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
        """All models' factors stacked, zero-padded to the largest rank, with the scaling folded
        into B: ``B[M, m, r_max]``, ``A[M, r_max, n]`` (so ``B[i] @ A[i]`` is ΔW_i)."""
        if self.count == 0:
            raise RuntimeError("LoraDeltaAccumulator: no models were accumulated")
        (m, n), r = self.shape, max(self.ranks)
        B = torch.zeros(self.count, m, r, dtype=dtype, device=self.device)
        A = torch.zeros(self.count, r, n, dtype=dtype, device=self.device)
        for i, (b, a, s) in enumerate(zip(self.B, self.A, self.scalings)):
            B[i, :, :b.shape[1]] = b.to(dtype) * s
            A[i, :a.shape[0]] = a
        return B, A

    def gram(self, center: Optional[bool] = None) -> torch.Tensor:
        """K (float64, M × M) over the models in their current order: ⟨ΔW_i, ΔW_j⟩_F, double
        centred (H K H, the Gram of ΔW_i − mean ΔW) when ``center`` (default: the accumulator's).
        ``lora_gram`` runs once (uncentred, cached); centring is the op's own formula on K."""
        if self._K is None:
            B, A = self.factors(torch.float64)
            self._K = lora_gram(B, A, False)
            del B, A
        center = self.center if center is None else center
        return double_center(self._K) if center else self._K.clone()

    def eigh(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Descending eigenvalues (σ² of the model-axis unfolding) and eigenvectors (M × M) of the
        (centred) K, sign rule of ``svd``."""
        return sorted_eigh(self.gram())

    def eigen_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_ik ΔW_i for each column k of ``weights[M, k]``, formed as the low-rank product
        [w_1k s_1 B_1 … w_Mk s_M B_M] · [A_1; …; A_M] (float64, ``[k, m, n]``)."""
        B, A = self.factors(torch.float64)
        w = weights.to(device=B.device, dtype=torch.float64)
        M, m, r = B.shape
        Bw = torch.einsum("imr,ik->kmir", B, w).reshape(w.shape[1], m, M * r)
        return Bw @ A.reshape(M * r, -1)

    def finalize(self, rank: Optional[int] = None, energy: Optional[float] = None, slot: str = "",
                 metadata=None, eigen_weights: int = 0):
        """The :class:`~unisub.subspace.DeltaSubspace`: the whole spectrum of the (centred) K, the
        leading ``r`` eigenvectors (``rank`` / ``energy`` as for the mode Grams) and the per-model
        scores. ``eigen_weights`` > 0 also materialises the top min(eigen_weights, r) unit-norm
        eigen-weights E_k = Σ_i V_ik (ΔW_i − mean) / σ_k (and the mean ΔW) as dense m × n
        matrices: k·m·n numbers, so only on request."""
        from .subspace import DeltaSubspace, choose_rank

        self.sort_by_id()
        evals, evecs = self.eigh()
        r = choose_rank(evals, rank, energy)
        E = mean = None
        if eigen_weights:
            k = min(int(eigen_weights), r)
            sigma = evals[:k].sqrt()
            V = evecs[:, :k]
            if self.center:
                V = V - V.mean(0, keepdim=True)  # exactly H v: weights of ΔW_i − mean
            W = V / torch.where(sigma > 0, sigma, torch.ones_like(sigma))
            ones = torch.full((self.count, 1), 1.0 / self.count, dtype=torch.float64, device=W.device)
            both = self.eigen_weights(torch.cat([ones, W], 1))
            mean, E = both[0], both[1:]
        return DeltaSubspace(slot=slot, shape=self.shape, eigenvalues=evals, eigenvectors=evecs[:, :r].contiguous(),
                             gram=self.gram(center=False), scalings=torch.tensor(self.scalings, dtype=torch.float64),
                             ranks=self.ranks, ids=list(self.ids), center=self.center,
                             eigen_weights=E, mean=mean, metadata=dict(metadata or {}))
