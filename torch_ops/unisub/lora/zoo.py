"""``LoraZoo``: a zoo of LoRA adapters stored through one shared subspace per module, and its
file format ``unisub.lora_zoo/1`` (one safetensors file; docs/lora.md)."""
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..io.errors import CheckpointError
from ..io.safetensors import open_unisub_file, save_file
from .adapters import ModuleSpec

FORMAT = "unisub.lora_zoo/1"


@dataclass
class ModuleBasis:
    """One module's shared subspace: ΔW_i ≈ U C_i Vᵀ.

    ``U`` [m, k_out] and ``V`` [n, k_in] have orthonormal columns: the leading eigenvectors of the
    zoo's mode Grams Σ_i ΔW_i ΔW_iᵀ and Σ_i ΔW_iᵀ ΔW_i; ``coefficients`` [M, k_out, k_in] are
    C_i = Uᵀ ΔW_i V; ``eigenvalues_out`` / ``_in`` the whole spectra (float64; σ² of the mode
    unfoldings, zeros dropped); ``norm2`` / ``residual2`` [M] each adapter's ‖ΔW_i‖² and
    ‖ΔW_i − U C_i Vᵀ‖² (float64). ``state_*``: the Grams as eigenpairs (vectors [d, R], values
    [R], R their numerical rank), kept only for ``absorb(..., update_bases=True)``."""

    spec: ModuleSpec
    U: torch.Tensor
    V: torch.Tensor
    coefficients: torch.Tensor
    eigenvalues_out: torch.Tensor
    eigenvalues_in: torch.Tensor
    norm2: torch.Tensor
    residual2: torch.Tensor
    state_out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    state_in: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @property
    def ranks(self) -> Tuple[int, int]:
        return self.U.shape[1], self.V.shape[1]

    def reconstruct(self, i: int) -> torch.Tensor:
        """U C_i Vᵀ in float64 (m × n): what every export of adapter ``i`` adds to the base."""
        U, C, V = self.U.double(), self.coefficients[i].double(), self.V.double()
        return U @ C @ V.T


@dataclass
class LoraZoo:
    """Adapters ``names`` (in order) of one base model, per LoRA module a :class:`ModuleBasis`.

    ``peft_config``: the first adapter's adapter_config.json, the template every export starts
    from; ``extras[key]``: non-LoRA tensors (``modules_to_save`` heads), one per adapter, stored
    whole; ``source_dtypes`` / ``source_nbytes``: each adapter's stored dtype and size;
    ``options``: how the bases were chosen (rank, energy, storage dtype)."""

    names: List[str]
    modules: Dict[str, ModuleBasis]
    peft_config: Dict
    extras: Dict[str, List[torch.Tensor]] = field(default_factory=dict)
    source_dtypes: List[str] = field(default_factory=list)
    source_nbytes: List[int] = field(default_factory=list)
    options: Dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def has_state(self) -> bool:
        return all(mb.state_out is not None for mb in self.modules.values())

    def index(self, which) -> int:
        """An adapter's position, by name or (possibly negative) index."""
        if isinstance(which, str):
            if which not in self.names:
                raise KeyError(f"no adapter named {which!r} in this zoo (adapters: {self.names[:5]}"
                               f"{' ...' if self.count > 5 else ''})")
            return self.names.index(which)
        if isinstance(which, bool) or not isinstance(which, int) or not -self.count <= which < self.count:
            raise IndexError(f"adapter index {which!r} out of range for a zoo of {self.count}")
        return which % self.count

    def error(self, which) -> Dict:
        """Adapter ``which``'s relative reconstruction error √(Σ residual² / Σ ‖ΔW‖²) over all
        modules, and its worst module's relative error."""
        i = self.index(which)
        res = nrm = 0.0
        worst, worst_mod = -1.0, ""
        for mod, mb in self.modules.items():
            r2, n2 = float(mb.residual2[i]), float(mb.norm2[i])
            res, nrm = res + r2, nrm + n2
            e = (r2 / n2) ** 0.5 if n2 > 0 else 0.0
            if e > worst:
                worst, worst_mod = e, mod
        return {"name": self.names[i], "relative_error": (res / nrm) ** 0.5 if nrm > 0 else 0.0,
                "worst_module": worst_mod, "worst_module_error": worst}

    def errors(self) -> List[Dict]:
        """:meth:`error` of every adapter."""
        return [self.error(i) for i in range(self.count)]

    def mean_factors(self, module: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` with B @ A the mean reconstructed ΔW of ``module``: (U C̄, Vᵀ), C̄ the mean core."""
        mb = self.modules[module]
        return mb.U.double() @ mb.coefficients.double().mean(0), mb.V.double().T

    def mean_share(self) -> float:
        """The shared mean's part of the zoo's reconstructed energy, M Σ‖C̄‖² / Σ_i Σ‖C_i‖² over
        all modules (1: every adapter is the same; ~1/M: no common part). The paper's critics found
        much of the "universality" of model zoos in the mean: reported apart."""
        num = sum(self.count * float(mb.coefficients.double().mean(0).pow(2).sum()) for mb in self.modules.values())
        den = sum(float(mb.coefficients.double().pow(2).sum()) for mb in self.modules.values())
        return num / den if den > 0 else 0.0

    def nbytes(self, state: bool = False) -> int:
        """Bytes of the compressed zoo (bases, coefficients, extras; the absorb state only with
        ``state=True``)."""
        ts = [t for mb in self.modules.values() for t in (mb.U, mb.V, mb.coefficients)]
        ts += [t for ls in self.extras.values() for t in ls]
        if state:
            ts += [t for mb in self.modules.values() for st in (mb.state_out, mb.state_in) if st for t in st]
        return sum(t.numel() * t.element_size() for t in ts)

    def storage(self) -> Dict:
        orig = sum(self.source_nbytes)
        comp = self.nbytes()
        return {"original_bytes": orig, "compressed_bytes": comp, "state_bytes": self.nbytes(True) - comp,
                "ratio": orig / comp if comp else float("inf")}

    def report(self) -> Dict:
        return {"adapters": self.count, "modules": len(self.modules), "storage": self.storage(),
                "mean_share": self.mean_share(),
                "ranks": {mod: list(mb.ranks) for mod, mb in self.modules.items()}, "errors": self.errors(),
                "options": self.options}

    # ---------------------------------------------------------------- file
    def save(self, path) -> None:
        tensors = {}
        modules = {}
        for mod, mb in self.modules.items():
            p = f"module::{mod}::"
            tensors.update({p + "U": mb.U, p + "V": mb.V, p + "coefficients": mb.coefficients,
                            p + "eigenvalues.out": mb.eigenvalues_out, p + "eigenvalues.in": mb.eigenvalues_in,
                            p + "norm2": mb.norm2, p + "residual2": mb.residual2})
            for side, st in (("out", mb.state_out), ("in", mb.state_in)):
                if st is not None:
                    tensors[p + f"state.{side}.vectors"], tensors[p + f"state.{side}.values"] = st
            s = mb.spec
            modules[mod] = {"a_key": s.a_key, "b_key": s.b_key, "shape": list(s.shape), "a_tail": list(s.a_tail),
                            "b_tail": list(s.b_tail)}
        for key, ts in self.extras.items():
            for i, t in enumerate(ts):
                tensors[f"extra::{i}::{key}"] = t
        meta = {"format": FORMAT, "names": self.names, "modules": modules, "peft_config": self.peft_config,
                "extras": list(self.extras), "source_dtypes": self.source_dtypes, "source_nbytes": self.source_nbytes,
                "options": self.options}
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"unisub": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> "LoraZoo":
        """Read a zoo file; a file whose metadata and tensors do not fit together (a damaged or
        hand-edited file) is a CheckpointError naming the file and what is wrong, here rather
        than a traceback, or a wrong adapter, at export."""
        f, meta = open_unisub_file(path, FORMAT, "unisub LoRA zoo")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise CheckpointError(path, f"the zoo's metadata lacks {missing}")
        names = meta["names"]
        _check_names(path, names, meta)
        have = set(f.keys())
        modules = {}
        for mod, d in meta["modules"].items():
            p = f"module::{mod}::"
            absent = [p + t for t in _MODULE_TENSORS if p + t not in have]
            if absent:
                raise CheckpointError(path, f"module '{mod}': tensor '{absent[0]}' is missing")
            spec = ModuleSpec(d["a_key"], d["b_key"], tuple(d["shape"]), tuple(d["a_tail"]), tuple(d["b_tail"]))
            st = {side: (f.get(p + f"state.{side}.vectors"), f.get(p + f"state.{side}.values"))
                  if p + f"state.{side}.vectors" in have else None for side in ("out", "in")}
            modules[mod] = ModuleBasis(spec, f.get(p + "U"), f.get(p + "V"), f.get(p + "coefficients"),
                                       f.get(p + "eigenvalues.out"), f.get(p + "eigenvalues.in"),
                                       f.get(p + "norm2"), f.get(p + "residual2"), st["out"], st["in"])
            _check_module(path, mod, modules[mod], len(names))
        absent = [key for k in meta["extras"] for key in (f"extra::{i}::{k}" for i in range(len(names)))
                  if key not in have]
        if absent:
            raise CheckpointError(path, f"tensor '{absent[0]}' is missing")
        extras = {k: [f.get(f"extra::{i}::{k}") for i in range(len(names))] for k in meta["extras"]}
        return cls(names, modules, meta["peft_config"], extras, meta["source_dtypes"], meta["source_nbytes"],
                   meta["options"])

    def __repr__(self):
        ranks = sorted({mb.ranks for mb in self.modules.values()})
        return (f"LoraZoo({self.count} adapters, {len(self.modules)} modules, ranks (out, in) {ranks[:4]}"
                f"{' ...' if len(ranks) > 4 else ''}, {self.nbytes()} bytes{', with absorb state' if self.has_state else ''})")


_META_KEYS = ("names", "modules", "peft_config", "extras", "source_dtypes", "source_nbytes", "options")
_MODULE_TENSORS = ("U", "V", "coefficients", "eigenvalues.out", "eigenvalues.in", "norm2", "residual2")


def _check_names(path, names, meta) -> None:
    """The adapters' names: a non-empty list of distinct strings, one per entry of the per-adapter lists."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(path, f"the zoo's adapter names must be a non-empty list of strings, got {names!r:.80}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CheckpointError(path, f"adapter names repeat: {dup[:3]} (an export by name would pick the first)")
    for key in ("source_dtypes", "source_nbytes"):
        if meta[key] and len(meta[key]) != len(names):
            raise CheckpointError(path, f"{len(meta[key])} {key} for {len(names)} adapters")
    if not isinstance(meta["modules"], dict) or not meta["modules"]:
        raise CheckpointError(path, "the zoo holds no LoRA module")


def _check_module(path, mod: str, mb: ModuleBasis, count: int) -> None:
    """Shapes that fit together (U [m, k_out], V [n, k_in], coefficients [M, k_out, k_in], one
    norm per adapter) and finite values: what every export and merge relies on."""
    m, n = mb.spec.shape
    k_out = mb.U.shape[1] if mb.U.dim() == 2 else -1
    k_in = mb.V.shape[1] if mb.V.dim() == 2 else -1
    expected = {"U": (mb.U, (m, k_out)), "V": (mb.V, (n, k_in)),
                "coefficients": (mb.coefficients, (count, k_out, k_in)), "norm2": (mb.norm2, (count,)), "residual2": (mb.residual2, (count,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise CheckpointError(path, f"module '{mod}': {name} has shape {list(t.shape)}, expected {list(shape)} "
                                        f"(ΔW {m} x {n}, {count} adapters)")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(path, f"module '{mod}': {name} holds NaN or infinite values")
