"""safetensors files: the reader is libunisub's (csrc/analysis/safetensors.cpp, reached through
``torch.classes.unisub.SafetensorsFile``), the same code the C++ tool unisub-analyze runs, so both
front ends accept and refuse the same bytes; the writer is here.

Why not the ``safetensors`` package: we need errors that name the file, the slot and the
offending value (its messages are "invalid header"-style) and strict validation of every header
field before any analysis starts. The format is small: an 8-byte little-endian header length N, N
bytes of JSON, then the data; each tensor entry gives ``dtype``, ``shape`` and ``data_offsets``
[begin, end) into the data, and the tensors must cover the data exactly (docs/analysis.md,
"Reading rules"). A tensor is read straight from the file into its own memory.
"""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .errors import CheckpointError, reader_call

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("unisub's safetensors writer assumes a little-endian host")


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
    _reader: object = field(default=None, repr=False, compare=False)


def shapes_from_layout(n, layout, extra=0):
    """Decodes the flat int list the C++ reader returns shapes in (per tensor: the number of
    dimensions, the dimensions, then ``extra`` more values)."""
    out, i = [], 0
    for _ in range(n):
        d = layout[i]
        out.append((tuple(layout[i + 1:i + 1 + d]), tuple(layout[i + 1 + d:i + 1 + d + extra])))
        i += 1 + d + extra
    return out


def read_header(path) -> Header:
    """Parse and validate the header of ``path``; every inconsistency is a CheckpointError."""
    reader = reader_call(torch.classes.unisub.SafetensorsFile, str(path))
    keys = reader.keys()
    tensors = {k: TensorInfo(dt, shape, begin, end)
               for k, dt, (shape, (begin, end)) in zip(keys, reader.dtypes(), shapes_from_layout(len(keys), reader.layout(), 2))}
    return Header(str(path), reader.file_size(), tensors, dict(reader.metadata()), reader)


class SafetensorsFile:
    """One checkpoint file; ``get(key)`` reads that slot from disk now."""

    def __init__(self, path, header: Optional[Header] = None):
        self.path = Path(path)
        self.header = header if header is not None and header._reader is not None else read_header(self.path)

    def keys(self):
        return list(self.header.tensors)

    def info(self, key) -> TensorInfo:
        try:
            return self.header.tensors[key]
        except KeyError:
            raise CheckpointError(self.path, "no such tensor in this file", slot=key) from None

    def get(self, key) -> torch.Tensor:
        self.info(key)
        return reader_call(self.header._reader.get, key)


def save_file(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None):
    """Write ``tensors`` atomically through libunisub's writer (the one unisub-analyze uses): keys
    sorted, each tensor in its own dtype, a compact header padded to 8 bytes."""
    from .errors import writer_call

    names = sorted(tensors)
    for key in names:
        if tensors[key].dtype not in NAMES:
            raise TypeError(f"save_file: tensor '{key}' has dtype {tensors[key].dtype}, which safetensors cannot hold")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    writer_call(torch.ops.unisub.save_safetensors, str(path), names,
                [tensors[k].detach().cpu().contiguous() for k in names], list(meta), list(meta.values()))


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
