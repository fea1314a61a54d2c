"""Checkpoints as read-one-slot-at-a-time objects: safetensors files (sharded or not), PEFT
adapter folders and ``.pt`` / ``.bin`` state dicts, behind one small interface."""

import abc
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .errors import CheckpointError
from .safetensors import NAMES, SafetensorsFile, read_header

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")


class Checkpoint(abc.ABC):
    """``slots`` maps each tensor name to (dtype name, shape) without reading any data;
    ``get(name)`` reads that one tensor (each format implements it)."""

    name: str
    slots: Dict[str, Tuple[str, Tuple[int, ...]]]

    @abc.abstractmethod
    def get(self, key) -> torch.Tensor:
        """The tensor stored under ``key``, read from disk now."""

    def file_of(self, key) -> str:
        return self.name


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, files: List[Path], name=None):
        self.name = str(name or files[0])
        self._where, self.slots = {}, {}
        for path in files:
            f = SafetensorsFile(path)
            for key, info in f.header.tensors.items():
                if key in self._where:
                    raise CheckpointError(path, f"tensor also present in shard '{self._where[key].path}'", slot=key)
                self._where[key] = f
                self.slots[key] = (info.dtype, info.shape)

    def get(self, key):
        if key not in self._where:
            raise CheckpointError(self.name, "no such tensor in this checkpoint", slot=key)
        return self._where[key].get(key)

    def file_of(self, key):
        return str(self._where[key].path) if key in self._where else self.name


class TorchCheckpoint(Checkpoint):
    """A ``torch.save``-d state dict. Loaded with ``weights_only=True`` (never unpickles code) and
    ``mmap=True`` where the file is in the zip format, so a slot is read without the rest."""

    def __init__(self, path: Path):
        self.name = str(path)
        self.path = path
        sd = self._load()
        self.slots = {}
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                if not isinstance(k, str):
                    raise CheckpointError(path, f"tensor names must be strings, got key {k!r} "
                                                f"({type(k).__name__})")
                self.slots[k] = (NAMES.get(v.dtype, str(v.dtype).replace("torch.", "")), tuple(v.shape))

    def _load(self):
        try:
            try:
                sd = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                sd = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a corrupt file; name the file.
            raise CheckpointError(self.path, f"cannot load as a state dict: {e}") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise CheckpointError(self.path, f"expected a dict of tensors, got {type(sd).__name__}")
        return sd

    def get(self, key):
        sd = self._load()
        if key not in sd or not isinstance(sd[key], torch.Tensor):
            raise CheckpointError(self.path, "no such tensor in this checkpoint", slot=key)
        return sd[key].clone()


def _pattern_key(patterns, module, where):
    """PEFT's rule: the first key (file order) that matches the module name on a dot boundary."""
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        except re.error as e:
            raise CheckpointError(where, f"pattern {key!r} is not a valid regular expression ({e})") from None
    return None


def _config_value(where, key, value, rank):
    """``value`` (of ``key`` in adapter_config.json) checked: a positive integer rank, or a finite
    real alpha; anything else would give a scaling of NaN, infinity or a TypeError deep inside."""
    ok = type(value) in (int, float) and math.isfinite(value)
    if rank:
        ok = ok and value > 0 and value == int(value)
    if not ok:
        raise CheckpointError(where, f"{key} must be {'a positive integer' if rank else 'a finite number'}, "
                                     f"got {value!r}")
    return value


class PeftAdapter(Checkpoint):
    """A PEFT LoRA folder. Tensor names lose the ``base_model.model.`` prefix. With ``scale``,
    every ``lora_B`` (and ``lora_embedding_B``) is multiplied by its module's scaling
    (lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA, with rank_pattern / alpha_pattern
    overrides), so B·A is the ΔW the adapter adds: adapters trained with different alphas become
    comparable, which per-factor analysis without the scaling silently gets wrong."""

    PREFIX = "base_model.model."

    def __init__(self, folder: Path, scale: bool = True):
        self.name = str(folder)
        self.folder = folder
        cfg_path = folder / "adapter_config.json"
        try:
            self.config = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(cfg_path, f"cannot read adapter config: {e}") from e
        if not isinstance(self.config, dict):
            raise CheckpointError(cfg_path, f"adapter config must be a JSON object, got {type(self.config).__name__}")
        for key in ("rank_pattern", "alpha_pattern"):
            if not isinstance(self.config.get(key) or {}, dict):
                raise CheckpointError(cfg_path, f"{key} must map module patterns to values, "
                                                f"got {type(self.config[key]).__name__}")
        st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
        if st.exists():
            self.inner = SafetensorsCheckpoint([st])
        elif pt.exists():
            self.inner = TorchCheckpoint(pt)
        else:
            raise CheckpointError(folder, "PEFT folder has adapter_config.json but neither "
                                          "adapter_model.safetensors nor adapter_model.bin")
        self.scale = scale
        self._raw = {self._rename(k): k for k in self.inner.slots}
        self.slots = {self._rename(k): v for k, v in self.inner.slots.items()}
        self.scalings = {}
        for key, (_, shape) in self.slots.items():
            if ".lora_B" in key or ".lora_embedding_B" in key:
                self.scalings[key] = self._scaling(key, shape)

    def _rename(self, key):
        return key[len(self.PREFIX):] if key.startswith(self.PREFIX) else key

    def _scaling(self, key, shape):
        module = re.split(r"\.lora_(?:embedding_)?B", key)[0]
        cfg = self.config
        where = self.folder / "adapter_config.json"
        rank_key = _pattern_key(cfg.get("rank_pattern") or {}, module, where)
        alpha_key = _pattern_key(cfg.get("alpha_pattern") or {}, module, where)
        r = _config_value(where, f"rank_pattern[{rank_key!r}]" if rank_key else "r",
                          cfg["rank_pattern"][rank_key] if rank_key else cfg.get("r", 8), rank=True)
        alpha = _config_value(where, f"alpha_pattern[{alpha_key!r}]" if alpha_key else "lora_alpha",
                              cfg["alpha_pattern"][alpha_key] if alpha_key else cfg.get("lora_alpha", 8), rank=False)
        actual_r = shape[1]  # lora_B [out, r] and PEFT's lora_embedding_B [embedding_dim, r] alike
        if len(shape) >= 2 and actual_r != r:
            raise CheckpointError(self.folder, f"adapter_config.json gives rank {r} for module "
                                               f"'{module}' but lora_B has shape {list(shape)}", slot=key)
        return alpha / math.sqrt(r) if cfg.get("use_rslora", False) else alpha / r

    def get(self, key):
        t = self.get_unscaled(key)
        if self.scale and key in self.scalings:
            t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32) * self.scalings[key]
        return t

    def get_unscaled(self, key) -> torch.Tensor:
        """The tensor as stored (no scaling, stored dtype)."""
        if key not in self._raw:
            raise CheckpointError(self.name, "no such tensor in this adapter", slot=key)
        return self.inner.get(self._raw[key])

    def scaling(self, b_key) -> float:
        """s of ΔW = s·B·A for the module of ``b_key`` (1.0 when built with ``scale=False``)."""
        return self.scalings[b_key] if self.scale else 1.0

    def lora_pairs(self) -> Dict[str, Tuple[str, str]]:
        """module name -> (lora_A key, lora_B key), for modules holding both factors
        (``lora_A``/``lora_B`` of linear and conv layers, ``lora_embedding_A``/``_B``)."""
        return lora_pairs(self.slots)

    def file_of(self, key):
        return self.inner.file_of(self._raw.get(key, key))


_LORA_A = re.compile(r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?A(?P<suffix>\.weight)?$")


def lora_pairs(slots) -> Dict[str, Tuple[str, str]]:
    """module name -> (lora_A key, lora_B key) for every module whose two LoRA factors are both
    in ``slots`` (sorted by module name)."""
    pairs = {}
    for key in sorted(slots):
        m = _LORA_A.match(key)
        if m is None:
            continue
        b_key = f"{m['module']}.lora_{m['emb'] or ''}B{m['suffix'] or ''}"
        if b_key in slots:
            pairs[m["module"]] = (key, b_key)
    return pairs


def open_checkpoint(path: Path, scale_lora: bool = True) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            return PeftAdapter(path, scale=scale_lora)
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            return _indexed_checkpoint(path, indexes[0])
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            return SafetensorsCheckpoint(shards, name=path)
        for name in ("pytorch_model.bin", "model.pt", "model.bin"):
            if (path / name).exists():
                return TorchCheckpoint(path / name)
        raise CheckpointError(path, "folder holds no checkpoint")
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint([path])
    if path.suffix in WEIGHT_SUFFIXES:
        return TorchCheckpoint(path)
    raise CheckpointError(path, f"unknown checkpoint type (expected a folder or one of {WEIGHT_SUFFIXES})")


def _indexed_checkpoint(folder: Path, index: Path) -> SafetensorsCheckpoint:
    """A sharded model as its ``*.safetensors.index.json`` describes it: every shard it names
    must be there and hold the tensors it assigns to it (a missing shard would otherwise drop its
    tensors from the analysis without a word)."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(index, f"cannot read the shard index: {e}") from e
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "the shard index needs a non-empty 'weight_map' of tensor name -> shard file")
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(index, f"names shard(s) that are not in the folder: {', '.join(missing[:3])}")
    ck = SafetensorsCheckpoint([folder / n for n in names], name=folder)
    for key, shard in weight_map.items():
        if key not in ck.slots:
            raise CheckpointError(folder / shard, "the shard index places this tensor here, but the file does "
                                                  "not hold it", slot=key)
        if Path(ck.file_of(key)).name != shard:
            raise CheckpointError(index, f"places this tensor in '{shard}', but it is in '{ck.file_of(key)}'", slot=key)
    return ck


def _is_model_folder(path: Path) -> bool:
    """A folder is one model if it is a PEFT adapter or a Hugging Face model folder; otherwise it
    is a folder *of* models."""
    return ((path / "adapter_config.json").exists() or (path / "config.json").exists()
            or any(path.glob("*.safetensors.index.json")) or (path / "model.safetensors").exists()
            or (path / "pytorch_model.bin").exists())


def discover(paths, scale_lora: bool = True) -> List[Checkpoint]:
    """Resolve the user's PATHs into checkpoints, in a deterministic (sorted) order."""
    found = []

    def visit(p: Path, top: bool):
        if p.is_dir():
            if _is_model_folder(p):
                found.append(p)
                return
            children = sorted(p.iterdir())
            n0 = len(found)
            for c in children:
                if c.is_dir() or c.suffix in WEIGHT_SUFFIXES:
                    visit(c, False)
            if top and len(found) == n0:
                raise CheckpointError(p, "no checkpoints found in this folder (looked for *.safetensors, "
                                         "*.pt, *.bin and model/adapter folders)")
        elif p.exists():
            found.append(p)
        else:
            raise CheckpointError(p, "no such file or folder")

    for p in paths:
        visit(Path(p), True)
    if not found:
        raise CheckpointError(", ".join(map(str, paths)) or "(none)", "no checkpoints given")
    return [open_checkpoint(p, scale_lora) for p in found]
