"""A zoo of PEFT LoRA adapters as the analysis job reads it (``unisub.io``: PeftAdapter applies
lora_alpha / r, rsLoRA and rank / alpha patterns), checked to be one architecture, and read one
module's factors at a time."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import torch

from ..io import CheckpointError, PeftAdapter, discover, lora_pairs, matrix_shape

AdapterSource = Union[str, Path, PeftAdapter]


@dataclass(frozen=True)
class ModuleSpec:
    """One LoRA module: its factor keys (without ``base_model.model.``), ΔW's shape (m, n) and the
    stored factors' trailing shapes (conv LoRA keeps kernel dims: lora_A [r, C_in, kh, kw],
    lora_B [C_out, r, 1, 1])."""

    a_key: str
    b_key: str
    shape: Tuple[int, int]
    a_tail: Tuple[int, ...]  # lora_A's shape without its leading r
    b_tail: Tuple[int, ...]  # lora_B's shape without its dim 1 (r)

    def a_shape(self, r: int) -> List[int]:
        return [r, *self.a_tail]

    def b_shape(self, r: int) -> List[int]:
        return [self.b_tail[0], r, *self.b_tail[1:]]


def open_adapters(sources: Sequence[AdapterSource]) -> List[PeftAdapter]:
    """PEFT adapter folders (or folders of them), in the order given (folders of adapters sorted),
    opened with the scaling folded in (``scale=True``)."""
    out = []
    paths = []
    for s in sources:
        if isinstance(s, PeftAdapter):
            if paths:
                out += discover(paths)
                paths = []
            out.append(s)
        else:
            paths.append(s)
    if paths:
        out += discover(paths)
    if not out:
        raise ValueError("no adapters given")
    for ck in out:
        if not isinstance(ck, PeftAdapter):
            raise CheckpointError(ck.name, "not a PEFT adapter folder (no adapter_config.json)")
        if ck.config.get("use_dora", False):
            raise CheckpointError(ck.name, "a DoRA adapter (use_dora): its weight change is a rescaled direction, "
                                           "not s·B·A, which a shared LoRA subspace cannot represent")
        if ck.config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(ck.name, f"peft_type {ck.config.get('peft_type')!r}: only LoRA adapters are supported")
    return out


def adapter_names(adapters: Sequence[PeftAdapter]) -> List[str]:
    """Each adapter's folder name, or its whole path where folder names repeat."""
    names = [Path(a.name).name for a in adapters]
    if len(set(names)) != len(names):
        names = [str(a.name) for a in adapters]
    if len(set(names)) != len(names):
        raise ValueError(f"the same adapter is given twice: {sorted(n for n in names if names.count(n) > 1)[:3]}")
    return names


def plan_modules(adapters: Sequence[PeftAdapter]) -> Tuple[Dict[str, ModuleSpec], List[str]]:
    """The LoRA modules every adapter must share (same names, same ΔW shapes; ranks may differ),
    and the keys of the other tensors (``modules_to_save`` heads and the like), which must also be
    the same in every adapter."""
    ref = adapters[0]
    pairs = lora_pairs(ref.slots)
    if not pairs:
        raise CheckpointError(ref.name, "holds no LoRA module (no lora_A / lora_B pair)")
    paired = {k for ab in pairs.values() for k in ab}
    extras = sorted(k for k in ref.slots if k not in paired)
    specs = {}
    for mod, (a_key, b_key) in pairs.items():
        a_shape, b_shape = ref.slots[a_key][1], ref.slots[b_key][1]
        (_, n), (m, _) = matrix_shape(a_shape), matrix_shape(b_shape)
        specs[mod] = ModuleSpec(a_key, b_key, (m, n), tuple(a_shape[1:]), (b_shape[0], *b_shape[2:]))
    for ck in adapters[1:]:
        other = lora_pairs(ck.slots)
        if set(other) != set(pairs):
            diff = sorted(set(other) ^ set(pairs))
            raise CheckpointError(ck.name, f"LoRA modules differ from '{ref.name}' (e.g. {diff[:3]}); every adapter of a "
                                           f"zoo must adapt the same modules")
        o_extras = sorted(k for k in ck.slots if k not in {k for ab in other.values() for k in ab})
        if o_extras != extras:
            raise CheckpointError(ck.name, f"non-LoRA tensors {o_extras[:3]} differ from '{ref.name}''s {extras[:3]}")
        for k in extras:
            if ck.slots[k][1] != ref.slots[k][1]:
                raise CheckpointError(ck.file_of(k), f"shape {list(ck.slots[k][1])} differs from "
                                                     f"{list(ref.slots[k][1])} in '{ref.name}'", slot=k)
        for mod, spec in specs.items():
            a_shape, b_shape = ck.slots[spec.a_key][1], ck.slots[spec.b_key][1]
            if a_shape[0] != b_shape[1]:
                raise CheckpointError(ck.file_of(spec.b_key), f"lora_B {list(b_shape)} and lora_A {list(a_shape)} "
                                                              f"have different ranks", slot=spec.b_key)
            if (tuple(a_shape[1:]), (b_shape[0], *b_shape[2:])) != (spec.a_tail, spec.b_tail):
                raise CheckpointError(ck.file_of(spec.b_key), f"ΔW of module '{mod}' has a different shape from "
                                                              f"'{ref.name}''s", slot=spec.b_key)
    return specs, extras


def read_delta(adapter: PeftAdapter, spec: ModuleSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` in float64 with the module's scaling folded into B: ΔW = B @ A exactly as PEFT
    adds it (lora_alpha / r, or / √r for rsLoRA, patterns applied)."""
    A = adapter.get_unscaled(spec.a_key)
    B = adapter.get_unscaled(spec.b_key)
    A = A.reshape(matrix_shape(tuple(A.shape))).double()
    B = B.reshape(B.shape[0], -1).double()  # conv lora_B [C_out, r, 1, 1] -> [C_out, r]
    for key, t in ((spec.a_key, A), (spec.b_key, B)):
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(adapter.file_of(key), "holds NaN or infinity", slot=key)
    return B * adapter.scaling(spec.b_key), A


def stored_nbytes(adapter: PeftAdapter) -> int:
    """Bytes of the adapter's tensors as stored."""
    from ..io.safetensors import DTYPES

    total = 0
    for dtype, shape in adapter.slots.values():
        n = 1
        for d in shape:
            n *= d
        total += n * (DTYPES[dtype].itemsize if dtype in DTYPES else 4)
    return total
