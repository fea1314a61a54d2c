"""Coefficient-only training of any layer through ``torch.nn.utils.parametrize``."""
from typing import Dict, List, Mapping, Optional

import torch
from torch.nn.utils import parametrize

from ..mapping import SubspaceSpec, map_parameters
from ._bases import optional_buffer, split_weight


class SubspaceParametrization(torch.nn.Module):
    """``W = offset + U C Vᵀ`` (reshaped to the parameter's shape, so conv kernels work): the
    parametrized tensor's trainable ``original`` is C; ``right_inverse`` maps a weight to its
    coefficients ``Uᵀ (W − offset) V``. The subspace is kept in the bases' precision; C and the
    weight it gives are in the parameter's own dtype (parametrize requires it, and a bfloat16
    model must get bfloat16 weights back)."""

    def __init__(self, offset: torch.Tensor, U: Optional[torch.Tensor], V: Optional[torch.Tensor], shape):
        super().__init__()
        self.register_buffer("offset", offset.detach().clone())
        optional_buffer(self, "U", U)
        optional_buffer(self, "V", V)
        self.shape = tuple(shape)

    def forward(self, C: torch.Tensor) -> torch.Tensor:
        W = self.offset + torch.ops.unisub.reconstruct(C.to(self.offset.dtype), self.U, self.V, False)
        return W.reshape(self.shape).to(C.dtype)

    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        D = W.reshape(self.offset.shape).to(self.offset.dtype) - self.offset
        return torch.ops.unisub.coefficients(D, self.U, self.V, False).to(W.dtype)


def _owner(model: torch.nn.Module, name: str):
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name) if module_name else model, attr


def train_coefficients(model: torch.nn.Module, subspaces: Mapping[str, SubspaceSpec], keep_residual: bool = True,
                       freeze_others: bool = True) -> List[torch.nn.Parameter]:
    """Reparametrise every mapped weight as ``offset + U C Vᵀ`` and return the coefficient
    parameters C (what to give the optimizer). ``freeze_others`` sets ``requires_grad=False`` on
    every other parameter, so that training changes nothing but the coefficients.
    ``keep_residual`` (default) leaves the model's function unchanged at the start; ``False``
    starts from the weights' projections ``μ + U Uᵀ (W − μ) V Vᵀ``."""
    mapped = map_parameters(model.named_parameters(), subspaces)
    # every parametrization is built before the model is touched: a failure leaves it as it was
    plans = []
    for mp in mapped:
        offset, C0 = split_weight(mp, keep_residual)
        plans.append((mp, C0, SubspaceParametrization(offset, mp.U, mp.V, tuple(mp.param.shape))))
    if freeze_others:
        for p in model.parameters():
            p.requires_grad_(False)
    coeffs = []
    for mp, C0, param in plans:
        module, attr = _owner(model, mp.name)
        parametrize.register_parametrization(module, attr, param, unsafe=True)
        original = module.parametrizations[attr].original
        with torch.no_grad():  # right_inverse rounds twice; start from the exact coefficients
            original.data = C0.to(original.dtype).clone()
        original.requires_grad_(True)
        coeffs.append(original)
    return coeffs


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every subspace parametrization by the plain weight it computes (in place)."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for attr in list(module.parametrizations.keys()):
            if any(isinstance(p, SubspaceParametrization) for p in module.parametrizations[attr]):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model
