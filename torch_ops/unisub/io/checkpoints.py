"""Checkpoints as read-one-slot-at-a-time objects: safetensors files (sharded or not), PEFT
adapter folders and ``.pt`` / ``.bin`` state dicts, behind one small interface.

The reading rules of safetensors files, Hugging Face model folders (shards by their index) and
PEFT adapters (config, names, scaling) are libunisub's (csrc/analysis/), reached through
``torch.classes.unisub.Checkpoint`` / ``AdapterConfig``: the C++ tool unisub-analyze runs the same
code. ``.pt`` / ``.bin`` files are read here, with ``torch.load``."""

import abc
import os
import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .errors import CheckpointError, reader_call
from .safetensors import NAMES, shapes_from_layout

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


class _LibraryCheckpoint(Checkpoint):
    """A model the C++ reader opened (``kind`` "files", "folder" or "adapter")."""

    def __init__(self, kind, paths, name):
        self._ck = reader_call(torch.classes.unisub.Checkpoint, kind, [_utf8_path(p) for p in paths], _utf8_path(name))
        self.name = _utf8_names(self._ck.name)
        keys = self._ck.keys()
        shapes = shapes_from_layout(len(keys), self._ck.layout())
        self.slots = {k: (dt, shape) for k, dt, (shape, _) in zip(keys, self._ck.dtypes(), shapes)}
        self._files = dict(zip(keys, _utf8_names(self._ck.files)))  # a folder's shards: names it found

    def _get(self, key, scale):
        if key not in self.slots:
            raise CheckpointError(self.name, "no such tensor in this checkpoint", slot=key)
        return reader_call(self._ck.get, key, scale)

    def get(self, key):
        return self._get(key, False)

    def file_of(self, key):
        return self._files.get(key, self.name)


class SafetensorsCheckpoint(_LibraryCheckpoint):
    """One model in one or more safetensors files (each tensor in one of them only)."""

    def __init__(self, files: List[Path], name=None):
        super().__init__("files", files, name or files[0])

    @classmethod
    def from_folder(cls, folder: Path) -> "SafetensorsCheckpoint":
        """A Hugging Face model folder: the shards its ``*.safetensors.index.json`` names (each must
        be there, inside the folder, and hold the tensors the index assigns to it), or all its
        ``*.safetensors`` files where there is no index."""
        self = cls.__new__(cls)
        _LibraryCheckpoint.__init__(self, "folder", [folder], folder)
        return self


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
                _check_dense(path, k, v)
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


def _check_dense(path, key, t):
    """The analysis reads a tensor's values from plain CPU memory. A sparse (or other non-strided)
    tensor, or a meta one (which map_location leaves where it is), would fail deep inside an op
    once the output folder exists; it is refused now, with the headers."""
    if t.layout == torch.strided and t.device.type == "cpu" and not t.is_nested:
        return
    what = ("a nested tensor" if t.is_nested else "a tensor" if t.layout == torch.strided
            else f"a {str(t.layout).replace('torch.', '')} tensor")
    where = "" if t.device.type == "cpu" else f" on device '{t.device}'"
    hint = "a meta tensor holds no values" if t.device.type == "meta" else "save it with .to_dense() / .cpu()"
    raise CheckpointError(path, f"{what}{where}; expected a dense (strided) tensor in CPU memory ({hint})", slot=key)


class PeftAdapter(Checkpoint):
    """A PEFT LoRA folder. Tensor names lose the ``base_model.model.`` prefix. With ``scale``,
    every ``lora_B`` (and ``lora_embedding_B``) is multiplied by its module's scaling
    (lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA, with rank_pattern / alpha_pattern
    overrides matched as PEFT matches them), so B·A is the ΔW the adapter adds: adapters trained
    with different alphas become comparable, which per-factor analysis without the scaling
    silently gets wrong. The rules are libunisub's (csrc/analysis/peft.cpp)."""

    PREFIX = "base_model.model."

    def __init__(self, folder: Path, scale: bool = True):
        self.name = str(folder)
        self.folder = Path(folder)
        self.scale = scale
        st, pt = self.folder / "adapter_model.safetensors", self.folder / "adapter_model.bin"
        if st.exists() or not pt.exists():
            self.inner = _LibraryCheckpoint("adapter", [self.folder], self.folder)
            text = self.inner._ck.config_text()
            self.scalings = dict(self.inner._ck.scalings())
            self.slots = dict(self.inner.slots)
            self._raw = None
        else:  # adapter_model.bin: torch.load reads the tensors, the library the config's rules
            cfg = reader_call(torch.classes.unisub.AdapterConfig, str(self.folder))
            text = cfg.text()
            self.inner = TorchCheckpoint(pt)
            raw_keys = list(self.inner.slots)
            names = reader_call(cfg.names, raw_keys, str(pt))
            self._raw = dict(zip(names, raw_keys))
            self.slots = {n: self.inner.slots[k] for n, k in self._raw.items()}
            layout = [x for n in names for x in (len(self.slots[n][1]), *self.slots[n][1])]
            self.scalings = dict(reader_call(cfg.scalings, names, layout, str(pt)))
        self.config = json.loads(text)  # already validated (strict JSON, typed) by the library

    def get(self, key):
        if self._raw is None:
            if key not in self.slots:
                raise CheckpointError(self.name, "no such tensor in this adapter", slot=key)
            return self.inner._get(key, self.scale)
        t = self.get_unscaled(key)
        if self.scale and key in self.scalings:  # as the library does: in float64, rounded once
            scaled = t.to(torch.float64) * self.scalings[key]
            t = scaled if t.dtype == torch.float64 else scaled.to(torch.float32)
        return t

    def get_unscaled(self, key) -> torch.Tensor:
        """The tensor as stored (no scaling, stored dtype)."""
        if key not in self.slots:
            raise CheckpointError(self.name, "no such tensor in this adapter", slot=key)
        return self.inner.get(key if self._raw is None else self._raw[key])

    def scaling(self, b_key) -> float:
        """s of ΔW = s·B·A for the module of ``b_key`` (1.0 when built with ``scale=False``)."""
        return self.scalings[b_key] if self.scale else 1.0

    def library_checkpoint(self):
        """The torch.classes.unisub.Checkpoint libunisub reads this adapter with (None for an
        adapter_model.bin, which torch.load reads): what ``DeltaAccumulator.add_model`` takes."""
        return self.inner._ck if self._raw is None else None

    def lora_pairs(self) -> Dict[str, Tuple[str, str]]:
        """module name -> (lora_A key, lora_B key), for modules holding both factors
        (``lora_A``/``lora_B`` of linear and conv layers, ``lora_embedding_A``/``_B``)."""
        return lora_pairs(self.slots)

    def file_of(self, key):
        return self.inner.file_of(key if self._raw is None else self._raw.get(key, key))


def lora_pairs(slots) -> Dict[str, Tuple[str, str]]:
    """module name -> (lora_A key, lora_B key) for every module whose two LoRA factors are both in
    ``slots`` (sorted by module name): libunisub's rule (``torch.ops.unisub.lora_pairs``), the
    tool's."""
    modules, a_keys, b_keys = torch.ops.unisub.lora_pairs(list(slots))
    return {m: (a, b) for m, a, b in zip(modules, a_keys, b_keys)}


def open_checkpoint(path: Path, scale_lora: bool = True) -> Checkpoint:
    path = Path(_utf8_path(path))
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            return PeftAdapter(path, scale=scale_lora)
        if any(path.glob("*.safetensors.index.json")) or any(path.glob("*.safetensors")):
            return SafetensorsCheckpoint.from_folder(path)
        for name in ("pytorch_model.bin", "model.pt", "model.bin"):
            if (path / name).exists():
                return TorchCheckpoint(path / name)
        raise CheckpointError(path, "folder holds no checkpoint")
    if path.suffix == ".safetensors":
        return SafetensorsCheckpoint([path])
    if path.suffix in WEIGHT_SUFFIXES:
        return TorchCheckpoint(path)
    raise CheckpointError(path, f"unknown checkpoint type (expected a folder or one of {WEIGHT_SUFFIXES})")


def _is_model_folder(path: Path) -> bool:
    """A folder is one model if it is a PEFT adapter or a Hugging Face model folder; otherwise it
    is a folder *of* models."""
    return ((path / "adapter_config.json").exists() or (path / "config.json").exists()
            or any(path.glob("*.safetensors.index.json")) or (path / "model.safetensors").exists()
            or (path / "pytorch_model.bin").exists())


def discover(paths, scale_lora: bool = True) -> List[Checkpoint]:
    """Resolve the user's PATHs into checkpoints, ordered by path: libunisub's rule (which folders
    are models, which are folders of models), the one unisub-analyze follows (docs/format.md)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    # libunisub refuses, by name, a model it finds whose name is not UTF-8 (discover.cpp)
    found, kinds = reader_call(torch.ops.unisub.discover_sources, [_utf8_path(p) for p in paths])
    return [_open_source(Path(p), kind, scale_lora) for p, kind in zip(found, kinds)]


# Paths cross into libunisub as UTF-8 strings, and the run's description (state/run.json) and
# report.json record every model's file name as JSON text: a name that is not valid UTF-8 (a
# Linux file name is any bytes) is refused by name, while the models are found, before any output.
_NOT_UTF8 = "file names must be valid UTF-8 (the run's description and report.json record them); rename it"


def _utf8_path(path) -> str:
    """``path`` as the str libunisub takes; a CheckpointError if its bytes are not UTF-8 (Python
    carries such a name from the command line or os.listdir as lone surrogates)."""
    path = os.fsdecode(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CheckpointError(shown, _NOT_UTF8) from None
    return path


def _utf8_names(fn, *args):
    """``fn(*args)`` for a libunisub call that returns paths it found on disk (a folder's models or
    shards): a name that is not UTF-8 fails to decode on its way back, and is named."""
    try:
        return fn(*args)
    except UnicodeDecodeError as e:
        if not isinstance(e.object, (bytes, bytearray)):
            raise
        raise CheckpointError(bytes(e.object).decode("utf-8", "backslashreplace"), _NOT_UTF8) from None


def _open_source(path: Path, kind: str, scale_lora: bool) -> Checkpoint:
    if kind == "safetensors":
        return SafetensorsCheckpoint([path])
    if kind == "torch":
        return TorchCheckpoint(path)
    return open_checkpoint(path, scale_lora)  # an adapter or a model folder
