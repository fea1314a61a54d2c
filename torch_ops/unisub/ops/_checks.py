"""Shape checks shared by the fake kernels (the C++ kernels have their own in csrc/ops/checks.h)."""
import torch


def wrap_dim(dim: int, order: int, op: str) -> int:
    torch._check(-order <= dim < order,
                 lambda: f"unisub.{op}: dim must be in [{-order}, {order - 1}], got {dim}")
    return dim % order
