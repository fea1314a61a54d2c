"""mode_gram against X_(mode) @ X_(mode).T in plain PyTorch.

Two baselines: the same dtype (fast, float32 accumulation inside one GEMM) and the float64 route
(`.double()` first), which is what matches unisub's accuracy for float32 inputs.
"""
import torch

import unisub
from harness import Case


def _unfold(X, dim):
    return X.movedim(dim, 0).reshape(X.shape[dim], -1)


def _plain(X, dim, center, dtype=None):
    def fn():
        Y = X if dtype is None else X.to(dtype)
        if center:
            Y = Y - Y.mean(0, keepdim=True)
        A = _unfold(Y, dim)
        return A @ A.T
    return fn


SIZES = {
    # (label, shape, dim, center)
    "quick": [
        ("LoRA-A stack", (100, 16, 1024), 1, True),
        ("LoRA-A stack", (100, 16, 1024), 2, True),
        ("layer slot", (32, 256, 256), 1, True),
        ("model axis", (64, 256, 256), 0, True),
    ],
    "full": [
        ("LoRA-A stack", (500, 16, 4096), 1, True),
        ("LoRA-A stack", (200, 16, 1024), 2, True),
        ("ViT-B slot", (64, 768, 768), 1, True),
        ("ViT-B slot", (64, 768, 768), 2, False),
        ("model axis", (200, 512, 512), 0, True),
    ],
}


def cases(device: str, size: str = "quick", dtypes=(torch.float32,)):
    gen = torch.Generator().manual_seed(0)
    for label, shape, dim, center in SIZES[size]:
        for dtype in dtypes:
            X = torch.randn(shape, generator=gen, dtype=dtype).to(device)
            baselines = {"torch same dtype": _plain(X, dim, center)}
            if dtype != torch.float64:
                baselines["torch float64"] = _plain(X, dim, center, torch.float64)
            yield Case(op="mode_gram", shape=f"{label} {tuple(shape)} dim={dim}{' c' if center else ''}",
                       dtype=dtype, device=device,
                       ours=lambda X=X, dim=dim, center=center: unisub.mode_gram(X, dim, center),
                       baselines=baselines)
