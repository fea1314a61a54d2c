"""Finds and loads libunisub, which registers the torch.ops.unisub.* operators."""
import os
from pathlib import Path

import torch

_ENV_OVERRIDE = "UNISUB_LIBRARY"


def library_path() -> Path:
    """Path of the ops library: $UNISUB_LIBRARY, else the copy shipped inside this package."""
    override = os.environ.get(_ENV_OVERRIDE)
    path = Path(override) if override else Path(__file__).with_name("libunisub.so")
    if not path.is_file():
        raise ImportError(
            f"unisub: the ops library was not found at {path}. Build and install the package "
            "with `pip install --no-build-isolation .` (or `pip install -e .`) from the source "
            f"tree, or point {_ENV_OVERRIDE} at a built libunisub.so."
        )
    return path


def load_library() -> Path:
    path = library_path()
    torch.ops.load_library(str(path))
    return path
