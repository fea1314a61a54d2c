import os
from pathlib import Path

import pytest
import torch

import unisub  # noqa: F401  (loads the ops)

ROOT = Path(__file__).resolve().parents[2]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build_dir() -> Path:
    return Path(os.environ.get("UNISUB_BUILD_DIR", ROOT / "build" / "cmake"))


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def gen():
    """A generator with a fresh seed per test (fresh random inputs every run). The seed is printed,
    so a failing test shows it; UNISUB_SEED=<n> replays it."""
    seed = int(os.environ.get("UNISUB_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random seed: UNISUB_SEED={seed}")
    return torch.Generator().manual_seed(seed)
