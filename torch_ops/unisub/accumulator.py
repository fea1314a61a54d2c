"""Streaming, mergeable, resumable accumulators of one slot: thin wrappers of libunisub's
(csrc/analysis/accumulators.h, ``torch.classes.unisub.ModeAccumulator`` / ``DeltaAccumulator``),
the code ``unisub-analyze`` runs, so both front ends compute the same numbers bit for bit.

Centring is exact and stable: each batch is centred on its own mean (float64), its centred Gram
taken with ``gram_update_``, and batches are combined with the pairwise update of Chan, Golub and
LeVeque: for parts a, b with counts n_a, n_b, means μ_a, μ_b and δ = μ_b − μ_a,

    G = G_a + G_b + (n_a n_b / n) · δ δᵀ   (mode out; δᵀ δ for mode in),  μ = μ_a + (n_b / n) δ.

Nothing is ever subtracted from a large uncentred sum, so a stack with a large common offset loses
no more than its own rounding. The distributed reduction (Python, on the state tensors) uses the
same identity around the global mean: one ``all_reduce`` of a Gram per mode.
"""
import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import _library  # noqa: F401  (loads libunisub: torch.classes.unisub.*)

MODE_DIMS = {"out": 1, "in": 2}
GRAM_PRECISIONS = ("float64", "float32", "auto")


def _check_gram_precision(who: str, value: str) -> str:
    if value not in GRAM_PRECISIONS:
        raise ValueError(f"{who}: gram_precision must be one of {list(GRAM_PRECISIONS)}, got {value!r}")
    return value


@torch.library.register_fake("unisub::sorted_eigh")
def _sorted_eigh_fake(G):
    torch._check(G.dim() == 2 and G.shape[0] == G.shape[1],
                 lambda: f"unisub.sorted_eigh: G must be a square matrix, got shape {list(G.shape)}")
    return G.new_empty((G.shape[0],)), G.new_empty(G.shape)


def sorted_eigh(G: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues of a Gram, descending and clamped at 0 (negatives are rounding), and its
    eigenvectors with the sign rule of ``svd`` (each column's largest-magnitude entry positive)."""
    return torch.ops.unisub.sorted_eigh(G)  # libunisub's, the one unisub-analyze uses


def double_center(K: torch.Tensor) -> torch.Tensor:
    """H K H with H = I − 11ᵀ/M: the Gram of the rows minus their mean, from their Gram (the same
    float64 formula as ``lora_gram(..., center=True)``)."""
    row = K.mean(1, keepdim=True)
    return K - (row + row.T) + K.mean()


def _check_rank_energy(rank, energy):
    if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if energy is not None and not (0 < energy <= 1):
        raise ValueError(f"energy must lie in (0, 1], got {energy!r}")


def _outer(delta: torch.Tensor, mode: str) -> torch.Tensor:
    return delta @ delta.T if mode == "out" else delta.T @ delta


class SubspaceAccumulator:
    """Accumulates, for a slot of m × n matrices, the model count, the mean and the (centred)
    Gram of each requested mode ("out": m × m, "in": n × n) in float64.

    Mode 0 (the model axis) is not streamed here: its Gram is M × M and couples every pair of
    models. For LoRA deltas ΔW = s·B·A it is :class:`LoraDeltaAccumulator` (through
    ``torch.ops.unisub.lora_gram``, never forming ΔW); ``modes=("delta",)`` is rejected here with
    a pointer to it.

    Memory: the mean and the Grams (8·m·n + 8·d² per mode bytes), plus update buffers kept between
    batches (so a long stream allocates nothing per batch): the batch mean, up to 32 MiB of
    centred models and, with float32 GEMMs, one float32 block row of each Gram.

    ``gram_precision``: "float64" (default: float64 GEMMs), "float32" (float32 GEMMs of at most
    448 columns each, summed in float64) or "auto" (float32 for batches of float16 / bfloat16
    models with at least 256 columns in each unfolding, whose Gram then gains less error than 1/16
    of what their own rounding can do to it; float64 otherwise).
    ``precision`` says what was used (docs/analysis.md, "Precision of the Grams").
    """

    def __init__(self, shape: Optional[Tuple[int, int]] = None, modes: Sequence[str] = ("out", "in"),
                 center: bool = True, device=None, gram_precision: str = "float64"):
        self.gram_precision = _check_gram_precision("SubspaceAccumulator", gram_precision)
        modes = tuple(modes)
        if "delta" in modes:
            raise ValueError("SubspaceAccumulator: mode 'delta' (the model axis of LoRA deltas ΔW = s·B·A) is "
                             "LoraDeltaAccumulator's job: it needs the LoRA factors, not whole matrices")
        bad = [m for m in modes if m not in MODE_DIMS]
        if bad or not modes or len(set(modes)) != len(modes):
            raise ValueError(f"SubspaceAccumulator: modes must be a non-empty subset of {list(MODE_DIMS)}, got {list(modes)}")
        self.modes, self.center = modes, bool(center)
        self.device = torch.device(device) if device is not None else None
        self._impl = None
        if shape is not None:
            self._init(tuple(int(s) for s in shape), self.device or torch.device("cpu"))

    def _init(self, shape, device):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"SubspaceAccumulator: shape must be (m, n) with m, n >= 1, got {shape}")
        self.device = torch.device(device)
        self._impl = torch.classes.unisub.ModeAccumulator(shape[0], shape[1], list(self.modes), self.center,
                                                          str(self.device))
        self._impl.set_gram_precision(self.gram_precision)

    @property
    def precision(self) -> dict:
        """How the Grams were computed: GEMM precision, models through float32, error bound."""
        return json.loads(self._impl.precision_json()) if self._impl is not None else {}

    @property
    def shape(self) -> Optional[Tuple[int, int]]:
        return tuple(self._impl.shape()) if self._impl is not None else None

    @property
    def count(self) -> int:
        return self._impl.count() if self._impl is not None else 0

    @property
    def mean(self) -> Optional[torch.Tensor]:
        return self._impl.mean() if self._impl is not None else None

    @property
    def grams(self) -> Dict[str, torch.Tensor]:
        return dict(zip(self.modes, self._impl.grams())) if self._impl is not None else {}

    def update(self, X) -> "SubspaceAccumulator":
        """Add a batch of models: ``X[b, m, n]``, or a sequence of b ``[m, n]`` tensors (any float
        dtype; a sequence spares the caller a stacked copy). A NaN or infinity is refused, naming
        the model, before anything changes."""
        models = self._check_batch(X)
        if models:
            self._impl.update(models)
        return self

    def _check_batch(self, X) -> List[torch.Tensor]:
        """X as a list of [m, n] models; initialises the shape from the first batch (the shapes
        and dtypes are checked by libunisub)."""
        if isinstance(X, torch.Tensor):
            if X.dim() != 3:
                raise ValueError(f"SubspaceAccumulator.update: X must be [batch, m, n], got shape {list(X.shape)}")
            models = list(X)
        else:
            models = list(X)
            bad = [list(getattr(x, "shape", [])) for x in models if not isinstance(x, torch.Tensor) or x.dim() != 2]
            if bad:
                raise ValueError(f"SubspaceAccumulator.update: a sequence of models must hold [m, n] tensors, "
                                 f"got shapes {bad[:3]}")
        if models and self._impl is None:
            if not models[0].is_floating_point():
                raise TypeError(f"SubspaceAccumulator.update: X must be floating point, got {models[0].dtype}")
            self._init(tuple(models[0].shape), self.device or models[0].device)
        return models

    def merge(self, other: "SubspaceAccumulator") -> "SubspaceAccumulator":
        """Fold ``other`` (same shape, modes and centring) into this one; returns self."""
        if other.count == 0:
            return self
        if self._impl is None:
            if (other.modes, other.center) != (self.modes, self.center):
                raise ValueError(f"SubspaceAccumulator.merge: incompatible accumulators: modes {other.modes} vs "
                                 f"{self.modes}, center {other.center} vs {self.center}")
            self._init(other.shape, self.device or other.device)
        self._impl.merge(other._impl)
        return self

    def merged(self, other: "SubspaceAccumulator") -> "SubspaceAccumulator":
        out = SubspaceAccumulator(None, self.modes, self.center, self.device, self.gram_precision)
        return out.merge(self).merge(other)

    def all_reduce(self, group=None) -> "SubspaceAccumulator":
        """Combine the accumulators of every process of ``group`` (each rank ends with the total).

        All ranks must have been built with the same shape (pass ``shape`` when a rank may see no
        models). Uses the parallel-axis form of the pairwise update around the global mean."""
        import torch.distributed as dist

        if self._impl is None:
            raise RuntimeError("SubspaceAccumulator.all_reduce: the shape is unknown on this rank; "
                               "construct the accumulator with shape=(m, n)")
        count = torch.tensor([float(self.count), float(self._impl.float32_models()), self._impl.float32_energy()],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(count, group=group)
        total, float32_models, float32_energy = count.tolist()
        total, float32_models = int(round(total)), int(round(float32_models))
        if total == 0:
            return self
        weighted = self.mean * self.count
        dist.all_reduce(weighted, group=group)
        mean = weighted / total
        delta = self.mean - mean
        grams = []
        for m, G in self.grams.items():
            G = G.clone()
            if self.center and self.count:
                G += self.count * _outer(delta, m)
            dist.all_reduce(G, group=group)
            grams.append(G)
        self._impl.load(total, mean, grams, float32_models, float32_energy)
        return self

    def state_dict(self) -> dict:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        state = {"modes": list(self.modes), "center": self.center, "count": self.count,
                 "shape": list(self.shape) if self.shape else None,
                 "float32_models": self._impl.float32_models() if self._impl is not None else 0,
                 "float32_energy": self._impl.float32_energy() if self._impl is not None else 0.0}
        if self._impl is not None:
            state["mean"] = self.mean.cpu().clone()
            for m, G in self.grams.items():
                state[f"gram.{m}"] = G.cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> "SubspaceAccumulator":
        if list(state["modes"]) != list(self.modes) or bool(state["center"]) != self.center:
            raise ValueError(f"SubspaceAccumulator.load_state_dict: state has modes {state['modes']} and center "
                             f"{state['center']}, this accumulator {list(self.modes)} and {self.center}")
        if state["shape"] is None:
            self._impl = None
            return self
        shape = tuple(int(x) for x in state["shape"])
        for key, want in [("mean", shape)] + [(f"gram.{m}", (shape[MODE_DIMS[m] - 1],) * 2) for m in self.modes]:
            got = state.get(key)
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
                raise ValueError(f"SubspaceAccumulator.load_state_dict: state[{key!r}] must be a tensor of shape "
                                 f"{list(want)}, got {list(got.shape) if isinstance(got, torch.Tensor) else got!r}")
        self._init(shape, self.device or torch.device("cpu"))
        self._impl.load(int(state["count"]), state["mean"], [state[f"gram.{m}"] for m in self.modes],
                        int(state.get("float32_models", 0)), float(state.get("float32_energy", 0.0)))
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
        from .subspace import Subspace

        _check_rank_energy(rank, energy)
        if self.count == 0:
            raise RuntimeError("SubspaceAccumulator: no models were accumulated")
        spectra, bases = self._impl.spectra(rank, None if energy is None else float(energy))
        return Subspace(slot=slot, mean=self.mean.clone(), bases=dict(zip(self.modes, bases)),
                        eigenvalues=dict(zip(self.modes, spectra)), count=self.count, center=self.center,
                        metadata=dict(metadata or {}))


class LoraDeltaAccumulator:
    """Mode 0 (the model axis) of the LoRA deltas ΔW_i = s_i·B_i·A_i of one module: model-space PCA
    through ``lora_gram``, without ever forming a ΔW_i.

    K_ij = ⟨ΔW_i, ΔW_j⟩_F couples every pair of models, so unlike the mode Grams it cannot be
    summed batch by batch: the accumulator keeps every model's factors (B_i m × r_i, A_i r_i × n,
    as read: their own dtype and rank) with its scaling s_i and an integer id, and computes K once,
    in float64 (s folded into B in float64), when it is first needed. ``gram_precision``: "float64"
    (default), "float32" (float32 GEMMs, float64 block sums) or "auto" (float32 for 16-bit factors
    when the centred spectrum's estimated error, from an exactly recomputed diagonal, is under
    u_in/8 of its trace; float64 otherwise); ``precision`` says what ran. Models may have different
    LoRA ranks (PEFT ``rank_pattern``, or adapters trained with different r): the factors are
    zero-padded to the largest rank, which leaves every B_i·A_i unchanged.

    Memory: one store per factor, M·r_max·(m + n) elements in the widest dtype given (e.g. 500
    rank-16 float16 adapters of a 4096 × 4096 module: 131 MB; ``reserve`` sizes it once), from
    which ``lora_gram`` computes K without a working copy (it converts panels as its tiles need
    them), and K itself (8·M² bytes). ``merge`` appends the other's models, so the cross blocks between the
    parts are in K; ``all_reduce`` gathers every rank's factors (``all_gather_object``) and orders
    them by id, so every rank ends with the K of all models, equal to a single process's.
    """

    def __init__(self, shape: Optional[Tuple[int, int]] = None, center: bool = True, device=None,
                 gram_precision: str = "float64"):
        self.gram_precision = _check_gram_precision("LoraDeltaAccumulator", gram_precision)
        self.center = bool(center)
        self.device = torch.device(device) if device is not None else None
        self._impl = None
        self._reserved = 0
        if shape is not None:
            shape = tuple(int(x) for x in shape)
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"LoraDeltaAccumulator: shape must be (m, n) with m, n >= 1, got {shape}")
            self._init(shape, self.device or torch.device("cpu"))

    def _init(self, shape, device):
        self.device = torch.device(device)
        self._impl = torch.classes.unisub.DeltaAccumulator(shape[0], shape[1], self.center, str(self.device))
        self._impl.set_gram_precision(self.gram_precision)
        if self._reserved:
            self._impl.reserve(self._reserved)

    def reserve(self, models: int) -> "LoraDeltaAccumulator":
        """Room for ``models`` models in all, so that the factor store is allocated once (adding
        beyond it doubles the store, which copies it)."""
        if isinstance(models, bool) or not isinstance(models, int) or models < 0:
            raise ValueError(f"LoraDeltaAccumulator.reserve: models must be an integer >= 0, got {models!r}")
        self._reserved = max(self._reserved, models)
        if self._impl is not None:
            self._impl.reserve(self._reserved)
        return self

    @property
    def precision(self) -> dict:
        """How K was computed (after ``gram``/``finalize``): GEMM precision, the estimate behind an
        "auto" choice and its tolerance."""
        text = self._impl.precision_json() if self._impl is not None else ""
        return json.loads(text) if text else {}

    shape = property(lambda self: tuple(self._impl.shape()) if self._impl is not None else None)
    count = property(lambda self: self._impl.count() if self._impl is not None else 0)
    ranks = property(lambda self: list(self._impl.ranks()) if self._impl is not None else [])
    ids = property(lambda self: list(self._impl.ids()) if self._impl is not None else [])
    scalings = property(lambda self: list(self._impl.scalings()) if self._impl is not None else [])
    B = property(lambda self: list(self._impl.B()) if self._impl is not None else [])
    A = property(lambda self: list(self._impl.A()) if self._impl is not None else [])

    def add(self, B: torch.Tensor, A: torch.Tensor, scaling: float = 1.0, id: Optional[int] = None):
        """One model: ``B[m, r]``, ``A[r, n]`` (any float dtype, finite), ΔW = scaling · B · A."""
        if B.dim() != 2 or A.dim() != 2:
            raise ValueError(f"LoraDeltaAccumulator.add: B must be [m, r] and A [r, n], got shapes "
                             f"{list(B.shape)} and {list(A.shape)}")
        if not (B.is_floating_point() and A.is_floating_point()):
            raise TypeError(f"LoraDeltaAccumulator.add: factors must be floating point, got {B.dtype} and {A.dtype}")
        if B.shape[1] != A.shape[0]:
            raise ValueError(f"LoraDeltaAccumulator.add: the LoRA rank must agree: B is {list(B.shape)}, A is {list(A.shape)}")
        if id is not None and int(id) < 0:
            raise ValueError(f"LoraDeltaAccumulator.add: model ids must be >= 0, got {id}")
        if self._impl is None:
            self._init((B.shape[0], A.shape[1]), self.device or B.device)
        self._impl.add(B, A, float(scaling), -1 if id is None else int(id))
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
        if other.center != self.center:
            raise ValueError(f"LoraDeltaAccumulator.merge: incompatible accumulators: center {other.center} vs "
                             f"{self.center}")
        dup = set(self.ids) & set(other.ids)
        if dup:
            raise ValueError(f"LoraDeltaAccumulator.merge: model ids {sorted(dup)[:5]} are in both accumulators; "
                             f"give each model a distinct id (add(..., id=...))")
        if self._impl is None:
            self._init(other.shape, self.device or other.device)
        self._impl.merge(other._impl)
        return self

    def all_reduce(self, group=None) -> "LoraDeltaAccumulator":
        """Every rank of ``group`` ends with the models of all ranks, ordered by id (so the result
        equals one process that added them in id order). A gather of the factors, not a sum:
        K has cross blocks between the ranks' models that no rank can compute alone."""
        import torch.distributed as dist

        states = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        me = LoraDeltaAccumulator(self.shape, self.center, self.device, self.gram_precision)
        for st in states:
            me.merge(LoraDeltaAccumulator.from_state_dict(st, self.device))
        me.sort_by_id()
        self._impl = me._impl
        return self

    def sort_by_id(self) -> "LoraDeltaAccumulator":
        if self._impl is not None:
            self._impl.sort_by_id()
        return self

    def state_dict(self) -> dict:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        return {"kind": "lora_delta", "center": self.center, "shape": list(self.shape) if self.shape else None,
                "gram_precision": self.gram_precision,
                "B": [b.cpu() for b in self.B], "A": [a.cpu() for a in self.A],
                "scalings": list(self.scalings), "ids": list(self.ids)}

    def load_state_dict(self, state: dict) -> "LoraDeltaAccumulator":
        if state.get("kind") != "lora_delta" or bool(state["center"]) != self.center:
            raise ValueError(f"LoraDeltaAccumulator.load_state_dict: state of kind {state.get('kind')!r} with center "
                             f"{state.get('center')}, this accumulator 'lora_delta' with {self.center}")
        self._impl = None
        if state["shape"] is not None:
            self._init(tuple(state["shape"]), self.device or torch.device("cpu"))
            for B, A, s, i in zip(state["B"], state["A"], state["scalings"], state["ids"]):
                self._impl.add(B, A, float(s), int(i))
        return self

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "LoraDeltaAccumulator":
        return cls(None, state["center"], device, state.get("gram_precision", "float64")).load_state_dict(state)

    def factors(self, dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
        """All models' factors stacked, zero-padded to the largest rank, with the scaling folded
        into B (in float64): ``B[M, m, r_max]``, ``A[M, r_max, n]`` (so ``B[i] @ A[i]`` is ΔW_i)."""
        if self.count == 0:
            raise RuntimeError("LoraDeltaAccumulator: no models were accumulated")
        B, A = self._impl.factors()
        return B.to(dtype), A.to(dtype)

    def gram(self, center: Optional[bool] = None) -> torch.Tensor:
        """K (float64, M × M) over the models in their current order: ⟨ΔW_i, ΔW_j⟩_F, double
        centred (H K H, the Gram of ΔW_i − mean ΔW) when ``center`` (default: the accumulator's).
        ``lora_gram`` runs once (uncentred, cached)."""
        if self.count == 0:
            raise RuntimeError("LoraDeltaAccumulator: no models were accumulated")
        return self._impl.gram(self.center if center is None else bool(center))

    def eigh(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Descending eigenvalues (σ² of the model-axis unfolding) and eigenvectors (M × M) of the
        (centred) K, sign rule of ``svd``."""
        return sorted_eigh(self.gram())

    def eigen_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_i w_ik ΔW_i for each column k of ``weights[M, k]``, formed as the low-rank product
        [w_1k s_1 B_1 … w_Mk s_M B_M] · [A_1; …; A_M] (float64, ``[k, m, n]``)."""
        return self._impl.combine(weights)

    def release_factors(self) -> "LoraDeltaAccumulator":
        """Frees the stored factors (most of the accumulator's memory), computing K first: ``gram``,
        ``ids``, ``scalings`` and ``ranks`` still work, ``finalize`` too (without eigen-weights);
        whatever needs the factors (``B``, ``A``, ``factors``, ``add``, ``merge``, ``eigen_weights``,
        ``state_dict``) then raises ValueError."""
        if self._impl is not None:
            self._impl.release_factors()
        return self

    def finalize(self, rank: Optional[int] = None, energy: Optional[float] = None, slot: str = "",
                 metadata=None, eigen_weights: int = 0):
        """The :class:`~unisub.subspace.DeltaSubspace`: the whole spectrum of the (centred) K, the
        leading ``r`` eigenvectors (``rank`` / ``energy`` as for the mode Grams) and the per-model
        scores. ``eigen_weights`` > 0 also materialises the top min(eigen_weights, r) unit-norm
        eigen-weights E_k = Σ_i V_ik (ΔW_i − mean) / σ_k (and the mean ΔW) as dense m × n
        matrices: k·m·n numbers, so only on request."""
        from .subspace import DeltaSubspace

        _check_rank_energy(rank, energy)
        if self.count == 0:
            raise RuntimeError("LoraDeltaAccumulator: no models were accumulated")
        result = self.finalize_slot(slot, rank, energy, eigen_weights, 0, metadata or {})
        return DeltaSubspace.from_result(result)

    def finalize_slot(self, slot, rank, energy, eigen_weights, null_seed, metadata, taus=None, error_ranks=None,
                      release_factors=False):
        """libunisub's finished slot: ``(entry, tensors, meta)`` (report entry, subspace tensors by
        name, file metadata), what ``unisub analyze`` and ``unisub-analyze`` save.
        ``release_factors`` frees the stored factors once K is computed (see :meth:`release_factors`)."""
        from .metrics import ERROR_RANKS, TAUS

        entry, names, tensors, meta = self._impl.finalize_slot(
            slot, rank, None if energy is None else float(energy), int(eigen_weights), int(null_seed),
            json.dumps(metadata, ensure_ascii=False), [float(t) for t in (taus or TAUS)],
            [int(k) for k in (error_ranks or ERROR_RANKS)], bool(release_factors))
        return entry, dict(zip(names, tensors)), meta


def finalize_mode_slot(even: SubspaceAccumulator, odd: SubspaceAccumulator, slot, rank, energy, null_seed, metadata,
                       taus, error_ranks):
    """libunisub's finished slot from the two halves (models of even and odd index):
    ``(entry, tensors, meta)``."""
    _check_rank_energy(rank, energy)
    for h in (even, odd):
        if h._impl is None:
            h._init(even.shape or odd.shape, even.device or odd.device)
    entry, names, tensors, meta = even._impl.finalize_slot(
        odd._impl, slot, rank, None if energy is None else float(energy), int(null_seed), json.dumps(metadata, ensure_ascii=False),
        [float(t) for t in taus], [int(k) for k in error_ranks])
    return entry, dict(zip(names, tensors)), meta
