"""A linear layer whose weight is W = offset + U C Vᵀ with only C trainable."""
from typing import Optional

import torch
import torch.nn.functional as F

from ..mapping import SubspaceSpec, map_parameters
from ._bases import optional_buffer, split_weight


class SubspaceLinear(torch.nn.Module):
    """``y = x Wᵀ + b`` with ``W = offset + U C Vᵀ``: ``U`` (out × k), ``V`` (in × l) and ``offset``
    (out × in; the subspace's mean μ) are frozen buffers, ``C`` (k × l) is the only trainable
    parameter (``bias`` too when ``train_bias``). Either basis may be ``None`` (no restriction on
    that side). The weight is formed with ``unisub.reconstruct`` on every forward, so the module runs
    under TorchScript, ``torch.compile`` and ``torch.export``. Build one from a trained layer with
    :meth:`from_linear`; :meth:`merge` gives back a plain ``nn.Linear`` for inference, in
    ``weight_dtype`` (the trained layer's dtype with ``from_linear``, else the offset's): the
    subspace is kept in the bases' precision, the merged layer must run where the original did."""

    def __init__(self, offset: torch.Tensor, U: Optional[torch.Tensor], V: Optional[torch.Tensor],
                 coefficients: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                 train_bias: bool = False, weight_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.weight_dtype = offset.dtype if weight_dtype is None else weight_dtype
        if offset.dim() != 2:
            raise ValueError(f"SubspaceLinear: offset must be an out × in matrix, got shape {tuple(offset.shape)}")
        mp, = map_parameters([("weight", offset)], {"weight": (U, V)})  # validates shapes, orthonormality
        self.out_features, self.in_features = offset.shape
        self.register_buffer("offset", offset.detach().clone())
        optional_buffer(self, "U", mp.U)
        optional_buffer(self, "V", mp.V)
        k = mp.U.shape[1] if mp.U is not None else self.out_features
        l = mp.V.shape[1] if mp.V is not None else self.in_features  # noqa: E741
        if coefficients is None:
            coefficients = offset.new_zeros(k, l)
        if tuple(coefficients.shape) != (k, l):
            raise ValueError(f"SubspaceLinear: coefficients must have shape ({k}, {l}), got {tuple(coefficients.shape)}")
        self.C = torch.nn.Parameter(coefficients.detach().clone().to(offset.dtype))
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"SubspaceLinear: bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=train_bias)
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, subspace: SubspaceSpec, keep_residual: bool = True,
                    train_bias: bool = False) -> "SubspaceLinear":
        """Start from a trained layer. ``subspace`` is a ``Subspace`` (its mean becomes the offset),
        a ``(U, V)`` pair or ``{"out": U, "in": V}``. ``keep_residual`` keeps the layer's function
        unchanged by folding the weight's out-of-subspace part into the frozen offset."""
        mp, = map_parameters([("weight", linear.weight)], {"weight": subspace})
        offset, C0 = split_weight(mp, keep_residual)
        return cls(offset, mp.U, mp.V, C0, None if linear.bias is None else linear.bias.detach(), train_bias,
                   weight_dtype=linear.weight.dtype)

    def weight(self) -> torch.Tensor:
        return self.offset + torch.ops.unisub.reconstruct(self.C, self.U, self.V, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def merge(self) -> torch.nn.Linear:
        """A plain ``nn.Linear`` computing the same function (weight = offset + U C Vᵀ)."""
        W = self.weight().to(self.weight_dtype)
        out = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=W.dtype, device=W.device)
        out.weight.copy_(W)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, coefficients={tuple(self.C.shape)}"
