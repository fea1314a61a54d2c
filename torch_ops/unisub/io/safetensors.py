"""A safetensors reader and writer of our own.

Why not the ``safetensors`` package: we need errors that name the file, the slot and the
offending value (its messages are "invalid header"-style), strict validation of every header field
before any analysis starts (a fuzz test feeds mutated headers), and reading one slot through a
memory map that is closed straight after, so hundreds of checkpoints never pile up in resident
memory. The format is small: an 8-byte little-endian header length N, N bytes of JSON, then the
data; each tensor entry gives ``dtype``, ``shape`` and ``data_offsets`` [begin, end) into the data.
"""
import json
import math
import mmap
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .atomic import atomic_path
from .errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in DTYPES.items()}
# Larger headers are a corrupt length field, not a model (real ones are a few MB at most).
MAX_HEADER_BYTES = 100 << 20

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("unisub's safetensors reader assumes a little-endian host")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: Tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Header:
    path: str
    file_size: int
    tensors: Dict[str, TensorInfo]
    metadata: Dict[str, str]


def read_header(path) -> Header:
    """Parse and validate the header of ``path``; every inconsistency is a CheckpointError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            if size < 8:
                raise CheckpointError(path, f"truncated: {size} bytes, a safetensors file has at least 8")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(path, f"header length field says {n} bytes but the file has "
                                            f"{size - 8} after it (truncated or not safetensors)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from e
    return parse_header(path, raw, size)


def parse_header(path, raw: bytes, file_size: int) -> Header:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"header must be a JSON object, got {type(obj).__name__}")
    data_start = 8 + len(raw)
    data_len = file_size - data_start
    metadata = obj.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "__metadata__ must map strings to strings")
    tensors = {}
    for key, entry in obj.items():
        tensors[key] = _parse_entry(path, key, entry, data_start, data_len)
    spans = sorted((t.begin, t.end, k) for k, t in tensors.items() if t.end > t.begin)
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(path, f"data_offsets overlap those of '{k0}' "
                                        f"([{b0 - data_start}, {e0 - data_start}))", slot=k1)
    return Header(str(path), file_size, tensors, dict(metadata))


def _parse_entry(path, key, entry, data_start, data_len) -> TensorInfo:
    def fail(msg):
        raise CheckpointError(path, msg, slot=key)

    if not isinstance(entry, dict):
        fail(f"header entry must be an object, got {type(entry).__name__}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        fail(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        fail(f"shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets)):
        fail(f"data_offsets must be two integers, got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        fail(f"data_offsets {offsets} must satisfy 0 <= begin <= end")
    if end > data_len:
        fail(f"data_offsets end {end} lies past the end of the data ({data_len} bytes; "
             f"file truncated or header lies)")
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        fail(f"data_offsets span {end - begin} bytes but shape {shape} of {dtype} needs {expected}")
    return TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)


class SafetensorsFile:
    """One checkpoint file; ``get(key)`` maps the file, copies that slot out and unmaps it."""

    def __init__(self, path, header: Optional[Header] = None):
        self.path = Path(path)
        self.header = header or read_header(self.path)

    def keys(self):
        return list(self.header.tensors)

    def info(self, key) -> TensorInfo:
        try:
            return self.header.tensors[key]
        except KeyError:
            raise CheckpointError(self.path, "no such tensor in this file", slot=key) from None

    def get(self, key) -> torch.Tensor:
        info = self.info(key)
        out = torch.empty(info.end - info.begin, dtype=torch.uint8)
        if info.end > info.begin:
            try:
                with open(self.path, "rb") as f:
                    size = f.seek(0, 2)
                    if size != self.header.file_size:
                        raise CheckpointError(self.path, f"file changed size since its header was read "
                                                         f"({self.header.file_size} -> {size} bytes)", slot=key)
                    # ACCESS_COPY: a private mapping is writable, which torch.frombuffer wants.
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
                        out.copy_(torch.frombuffer(mm, dtype=torch.uint8, count=out.numel(), offset=info.begin))
            except OSError as e:
                raise CheckpointError(self.path, f"cannot read: {e.strerror or e}", slot=key) from e
        return out.view(info.torch_dtype).reshape(info.shape)


def save_file(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None):
    """Write ``tensors`` (contiguous CPU copies are made) atomically."""
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        if t.dtype not in NAMES:
            raise TypeError(f"save_file: tensor '{key}' has dtype {t.dtype}, which safetensors cannot hold")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keeps the data 8-byte aligned, as the reference writer does
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for b in blobs:
                f.write(b)


def load_file(path) -> Dict[str, torch.Tensor]:
    f = SafetensorsFile(path)
    return {k: f.get(k) for k in f.keys()}


def open_unisub_file(path, expected_format: str, what: str):
    """``(SafetensorsFile, metadata dict)`` of a file unisub wrote, whose JSON metadata entry
    "unisub" names ``expected_format``; otherwise a ValueError naming the file and what it holds."""
    f = SafetensorsFile(path)
    try:
        meta = json.loads(f.header.metadata.get("unisub", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the 'unisub' metadata entry is not valid JSON ({e})") from None
    if meta.get("format") != expected_format:
        raise ValueError(f"{path}: not a {what} (metadata format {meta.get('format')!r}, expected {expected_format!r})")
    return f, meta
