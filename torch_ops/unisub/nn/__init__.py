"""Modules that train inside a universal subspace: only the coefficients C of W = μ + U C Vᵀ
(``SubspaceLinear``, or any layer through ``train_coefficients``), or only the loadings of LoRA
factors whose bases are frozen (``SubspaceLoRALinear``). Each merges back to a plain weight."""
from .lora import SubspaceLoRALinear
from .parametrize import SubspaceParametrization, merge, train_coefficients
from .subspace_linear import SubspaceLinear

__all__ = ["SubspaceLinear", "SubspaceLoRALinear", "SubspaceParametrization", "train_coefficients", "merge"]
