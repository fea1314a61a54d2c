"""LoRA whose factors live in universal subspaces: only the loadings train."""
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..mapping import map_parameters
from ..subspace import Subspace


class SubspaceLoRALinear(torch.nn.Module):
    """``y = base(x) + s · x Aᵀ Bᵀ`` with ``A = (C_A L_A)ᵀ`` (r × in) and ``B = C_B L_B`` (out × r).

    ``C_A`` (in × k_A) and ``C_B`` (out × k_B) are frozen bases — the universal subspaces of a LoRA
    zoo's A rows (``lora_A`` slot, mode "in") and B columns (``lora_B`` slot, mode "out") — and
    only the loadings ``L_A`` (k_A × r) and ``L_B`` (k_B × r) train: k_A·r + k_B·r parameters
    instead of LoRA's r·(in + out). ``s = alpha / r`` (``alpha / √r`` with ``rslora``), as PEFT.
    Initialised as LoRA: L_B = 0 (the layer starts as ``base``), L_A random. The base layer is frozen.
    """

    def __init__(self, base: torch.nn.Linear, basis_A: torch.Tensor, basis_B: torch.Tensor, rank: int,
                 alpha: float = 1.0, rslora: bool = False, generator: Optional[torch.Generator] = None):
        super().__init__()
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(f"SubspaceLoRALinear: base must be a torch.nn.Linear, got {type(base).__name__}")
        if not (isinstance(rank, int) and not isinstance(rank, bool) and rank > 0):
            raise ValueError(f"SubspaceLoRALinear: rank must be a positive integer, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
            raise ValueError(f"SubspaceLoRALinear: alpha must be a finite number, got {alpha!r}")
        mp, = map_parameters([("weight", base.weight)], {"weight": (basis_B, basis_A)})  # B acts on out, A on in
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.register_buffer("basis_A", mp.V)
        self.register_buffer("basis_B", mp.U)
        self.rank = rank
        self.scaling = alpha / rank ** 0.5 if rslora else alpha / rank
        bound = 1.0 / self.basis_A.shape[1] ** 0.5  # LoRA's kaiming-uniform(a=√5) bound for a fan-in of k_A
        L_A = (torch.rand(self.basis_A.shape[1], rank, generator=generator, dtype=self.basis_A.dtype) * 2 - 1) * bound
        self.L_A = torch.nn.Parameter(L_A.to(self.basis_A.device))
        self.L_B = torch.nn.Parameter(self.basis_B.new_zeros(self.basis_B.shape[1], rank))

    @classmethod
    def from_subspaces(cls, base: torch.nn.Linear, lora_A: Subspace, lora_B: Subspace, rank: int,
                       alpha: float = 1.0, rslora: bool = False, generator: Optional[torch.Generator] = None):
        """Bases from an analysis of a LoRA zoo: ``lora_A``'s "in" basis and ``lora_B``'s "out" basis."""
        for name, sub, mode in (("lora_A", lora_A, "in"), ("lora_B", lora_B, "out")):
            if mode not in sub.bases:
                raise ValueError(f"SubspaceLoRALinear.from_subspaces: {name} has no {mode!r} basis "
                                 f"(analysed modes: {sorted(sub.bases)})")
        return cls(base, lora_A.bases["in"], lora_B.bases["out"], rank, alpha, rslora, generator)

    def factors(self):
        """``(A, B)``: the LoRA factors A (r × in) and B (out × r) the loadings define."""
        A = torch.ops.unisub.reconstruct(self.L_A.T, None, self.basis_A, False)
        B = torch.ops.unisub.reconstruct(self.L_B, self.basis_B, None, False)
        return A, B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.factors()
        return self.base(x) + self.scaling * F.linear(F.linear(x, A.to(x.dtype)), B.to(x.dtype))

    @torch.no_grad()
    def merge(self) -> torch.nn.Linear:
        """A plain ``nn.Linear`` with ``W + s·B A``."""
        A, B = self.factors()
        out = torch.nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                              dtype=self.base.weight.dtype, device=self.base.weight.device)
        out.weight.copy_(self.base.weight + (self.scaling * (B @ A)).to(self.base.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out
