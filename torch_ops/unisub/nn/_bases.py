"""Turning a user's subspace spec into frozen (offset, U, V, C₀) for a given weight."""
from typing import Optional, Tuple

import torch

from ..mapping import MappedParameter
from ..ops.projection import coefficients, reconstruct


def split_weight(mp: MappedParameter, keep_residual: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(offset, C₀)`` with ``W = offset + U C₀ Vᵀ``.

    ``keep_residual=True`` folds the part of W outside the subspace into the frozen offset, so the
    layer computes exactly what it did before; ``False`` drops it (W starts at μ + U C₀ Vᵀ, the
    weight's projection, as the paper's coefficient-only training does).
    """
    W = mp.param.detach().reshape(mp.matrix_shape).to(mp.U.dtype if mp.U is not None else mp.V.dtype)
    mean = mp.mean if mp.mean is not None else torch.zeros_like(W)
    C0 = coefficients(W - mean, mp.U, mp.V, check_basis=False)
    offset = W - reconstruct(C0, mp.U, mp.V, check_basis=False) if keep_residual else mean.clone()
    return offset, C0


def optional_buffer(module: torch.nn.Module, name: str, value: Optional[torch.Tensor]) -> None:
    module.register_buffer(name, None if value is None else value.detach().clone())
