"""Any adapter of a ``LoraZoo`` back out as a standard PEFT adapter folder.

The reconstruction U C_i Vᵀ (float64 from the stored bases and coefficients) is written as the
LoRA factors of its SVD, computed from the small core (``lowrank.lowrank_svd``): rank
min(k_out, k_in) per module, so the adapter PEFT loads adds exactly the reconstruction (up to the
rounding of the output dtype). ``rank`` truncates further (the SVD's tail is the added error,
returned)."""
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .lowrank import balanced_factors, lowrank_svd
from .peft_out import check_rank, dtype_of, write_adapter
from .zoo import LoraZoo


def adapter_factors(zoo: LoraZoo, which, rank: Optional[int] = None):
    """``({module: (B, A)}, {module: ‖truncated tail‖²})`` for adapter ``which`` (name or
    index): B @ A = U C_i Vᵀ (float64), at the module's rank min(k_out, k_in) or ``rank``."""
    i = zoo.index(which)
    factors, tails = {}, {}
    for mod, mb in zoo.modules.items():
        U = mb.U.double() @ mb.coefficients[i].double()
        k = min(mb.ranks) if rank is None else min(int(rank), *mb.ranks)
        P, S, Q = lowrank_svd(U, mb.V.double().T)
        B, A = balanced_factors(P[:, :k], S[:k], Q[:, :k])
        factors[mod] = (B, A)
        tails[mod] = float((S[k:] ** 2).sum())
        if B.shape[1] < k:  # keep every adapter's rank per module the same: pad with zero directions
            B = torch.cat([B, B.new_zeros(B.shape[0], k - B.shape[1])], 1)
            A = torch.cat([A, A.new_zeros(k - A.shape[0], A.shape[1])], 0)
            factors[mod] = (B, A)
    return factors, tails


def export(zoo: LoraZoo, which, folder, dtype: Union[None, str, torch.dtype] = None,
           rank: Optional[int] = None) -> Dict:
    """Write adapter ``which`` (name or index) of ``zoo`` to ``folder`` as a PEFT adapter
    (``PeftModel.from_pretrained(base, folder)`` loads it). ``dtype``: of the written factors
    (default: the adapter's own stored dtype). Returns the adapter's reconstruction error as the
    zoo reports it, and the truncation's added error when ``rank`` is given."""
    i = zoo.index(which)
    check_rank("rank", rank)
    dt = dtype_of(dtype if dtype is not None else (zoo.source_dtypes[i] if zoo.source_dtypes else "float32"))
    factors, tails = adapter_factors(zoo, i, rank)
    extras = {k: ts[i] for k, ts in zoo.extras.items()}
    specs = {mod: mb.spec for mod, mb in zoo.modules.items()}
    write_adapter(folder, factors, specs, zoo.peft_config, dt, extras)
    err = zoo.error(i)
    norm2 = sum(float(mb.norm2[i]) for mb in zoo.modules.values())
    err["truncation_error"] = (sum(tails.values()) / norm2) ** 0.5 if norm2 > 0 else 0.0
    err["folder"] = str(Path(folder))
    err["dtype"] = str(dt).replace("torch.", "")
    return err
