"""Write a standard PEFT LoRA adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) from per-module low-rank factors of ΔW.

Every module's factors are written with scaling 1: ``lora_alpha`` equals the module's rank
(``rank_pattern`` / ``alpha_pattern`` name the modules whose rank differs from ``r``, each by its
whole escaped name, which PEFT matches as ``(.*\\.)?(name)$``), rsLoRA off, so PEFT adds exactly
B·A. The factors are balanced (B = U√S, A = √S Vᵀ) for float16 / bfloat16 output."""
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..io import ensure_writable_dir, save_file, write_json
from .adapters import ModuleSpec

PREFIX = "base_model.model."
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def lora_config(template: Mapping, ranks: Mapping[str, int]) -> Dict:
    """``template`` (an adapter_config.json) with r, lora_alpha and the patterns set for ``ranks``
    (module -> rank) at scaling 1."""
    cfg = dict(template)
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(mod): k for mod, k in ranks.items() if k != r}
    cfg.update({"peft_type": "LORA", "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
                "use_rslora": False, "use_dora": False})
    cfg.setdefault("target_modules", sorted({mod.rsplit(".", 1)[-1] for mod in ranks}))
    return cfg


def write_adapter(folder, factors: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], specs: Mapping[str, ModuleSpec],
                  template: Mapping, dtype: torch.dtype = torch.float32,
                  extras: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write ``factors`` (module -> (B [m, r], A [r, n]) with ΔW = B @ A) as a PEFT adapter folder.
    An adapter already in ``folder`` is replaced (its adapter_model.bin too, which would otherwise
    sit beside the new weights)."""
    folder = Path(folder)
    ensure_writable_dir(folder)
    tensors = {}
    ranks = {}
    for mod, (B, A) in factors.items():
        spec = specs[mod]
        r = B.shape[1]
        ranks[mod] = r
        tensors[PREFIX + spec.b_key] = B.to(dtype).reshape(spec.b_shape(r)).contiguous()
        tensors[PREFIX + spec.a_key] = A.to(dtype).reshape(spec.a_shape(r)).contiguous()
    for k, t in (extras or {}).items():
        tensors[PREFIX + k] = t
    config = lora_config(template, ranks)
    # The weights are written aside first: a failure there (a full disk, a dtype safetensors cannot
    # hold) leaves the old adapter whole. Then the config goes and comes back last: interrupted in
    # between, the folder holds no config, which PEFT refuses loudly, never new weights beside an
    # old config, which PEFT would load with the old lora_alpha / r scaling (silently wrong).
    staged = folder / f".adapter_model.safetensors.{os.getpid()}.new"
    try:
        save_file(tensors, staged, metadata={"format": "pt"})
        _remove(folder / "adapter_config.json")
        os.replace(staged, folder / "adapter_model.safetensors")
    finally:
        _remove(staged)
    _remove(folder / "adapter_model.bin")
    write_json(folder / "adapter_config.json", config)
    return folder


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_rank(name: str, rank) -> None:
    """A written adapter needs r ≥ 1: 0 would write empty factors, a negative rank would slice."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"{name} must be a positive integer, got {rank!r}")


def refuse_inputs_as_output(folder, inputs: Iterable) -> None:
    """A ValueError when ``folder`` is one of the ``inputs`` (paths): writing there would replace
    an input adapter while, or before, it is read."""
    out = Path(folder)
    for src in inputs:
        src = Path(src)
        same = out.resolve() == src.resolve()
        if not same and out.exists() and src.exists():
            same = os.path.samefile(out, src)
        if same:
            raise ValueError(f"the output folder '{folder}' is the input adapter '{src}': it would be overwritten; "
                             f"write the result to another folder")


def dtype_of(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "").lower()
    key = {"f32": "float32", "fp32": "float32", "f16": "float16", "fp16": "float16", "half": "float16",
           "bf16": "bfloat16", "f64": "float64", "float": "float32"}.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} (use one of {sorted(DTYPES)})")
    return DTYPES[key]


def read_config(folder) -> Dict:
    return json.loads((Path(folder) / "adapter_config.json").read_text())
