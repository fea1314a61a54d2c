"""Absorb a new adapter into an existing ``LoraZoo`` without redoing the zoo.

Without ``update_bases`` the new adapter gets its coefficients C = Uᵀ ΔW V in the shared
subspace and its residual ‖ΔW − U C Vᵀ‖² (how much of it the subspace cannot hold); nothing else
changes.

With ``update_bases`` (the zoo must have been compressed with ``keep_state=True``) the stored
Grams (exact, as eigenpairs) get the new adapter's terms, and the bases are chosen again with the
zoo's own rank / energy: mean-free streaming makes this exactly the bases, spectra and new
coefficients that compressing the enlarged zoo from scratch gives (to rounding). The adapters
already in the zoo are then re-expressed from their stored reconstructions,
C_i' = U'ᵀ (U C_i Vᵀ) V': equal to from-scratch when their reconstructions were exact (a zoo
compressed at full numerical rank); otherwise their residual R_i is gone and from-scratch would
have kept U'ᵀ R_i V' besides. Their stored residuals then become the bound
(‖R_i‖ + ‖(I − P')(U C_i Vᵀ)‖)², and ``zoo.options["residual_bounds"]`` names them.

The absorb state (when kept) always takes the new adapter, with or without ``update_bases``, so a
later update covers every adapter in the zoo."""
from typing import Dict, Optional, Tuple

import torch

from ..io import CheckpointError
from .adapters import AdapterSource, adapter_names, open_adapters, plan_modules, read_delta, stored_nbytes
from .compress import GramFactor, basis
from .lowrank import gram_factors, residual2
from .zoo import LoraZoo, ModuleBasis


def _check_fits(zoo: LoraZoo, ck, specs, extras):
    if set(specs) != set(zoo.modules):
        diff = sorted(set(specs) ^ set(zoo.modules))
        raise CheckpointError(ck.name, f"its LoRA modules differ from the zoo's (e.g. {diff[:3]})")
    for mod, spec in specs.items():
        have = zoo.modules[mod].spec
        if (spec.a_key, spec.b_key, spec.shape, spec.a_tail, spec.b_tail) != (have.a_key, have.b_key, have.shape,
                                                                               have.a_tail, have.b_tail):
            raise CheckpointError(ck.name, f"module '{mod}' has ΔW shape {list(spec.shape)}, the zoo's is "
                                           f"{list(have.shape)}")
    if sorted(extras) != sorted(zoo.extras):
        raise CheckpointError(ck.name, f"non-LoRA tensors {extras[:3]} differ from the zoo's {sorted(zoo.extras)[:3]}")


def absorb(zoo: LoraZoo, adapter: AdapterSource, name: Optional[str] = None,
           update_bases: bool = False) -> Tuple[LoraZoo, Dict]:
    """A new ``LoraZoo`` with ``adapter`` (a PEFT folder) appended, and a report: the new
    adapter's relative reconstruction error and, with ``update_bases``, each module's new ranks."""
    if update_bases and not zoo.has_state:
        raise ValueError("absorb: update_bases needs the zoo's Grams; compress with keep_state=True "
                         "(CLI: --keep-state)")
    ck, = open_adapters([adapter])
    name = name or adapter_names([ck])[0]
    if name in zoo.names:
        raise ValueError(f"absorb: the zoo already has an adapter named {name!r}; pass another name")
    specs, extras = plan_modules([ck])
    _check_fits(zoo, ck, specs, extras)
    rank, energy = zoo.options.get("rank"), zoo.options.get("energy")
    dtype = getattr(torch, zoo.options.get("dtype", "float32"))
    bounds = set(zoo.options.get("residual_bounds", []))
    modules = {}
    for mod, mb in zoo.modules.items():
        B, A = read_delta(ck, specs[mod])
        st_out = st_in = None
        U, V = mb.U.double(), mb.V.double()
        ev_out, ev_in = mb.eigenvalues_out, mb.eigenvalues_in
        if mb.state_out is not None:
            X_out, X_in = gram_factors(B, A)
            g_out = GramFactor(U.shape[0], mb.state_out).add(X_out)
            g_in = GramFactor(V.shape[0], mb.state_in).add(X_in)
            U2, ev_out2, st_out = basis(g_out, rank, energy)
            V2, ev_in2, st_in = basis(g_in, rank, energy)
            del g_out, g_in
            if update_bases:
                U, V, ev_out, ev_in = U2, V2, ev_out2, ev_in2
        coeffs, norm2, res2 = [], mb.norm2.tolist(), mb.residual2.tolist()
        if update_bases:
            for i in range(zoo.count):
                r2, _, C = residual2(mb.U.double() @ mb.coefficients[i].double(), mb.V.double().T, U, V)
                coeffs.append(C)
                tiny = 1e-20 * norm2[i]  # rounding-level residuals (a lossless zoo): nothing is lost
                if r2 > tiny and res2[i] > tiny:
                    bounds.add(zoo.names[i])
                res2[i] = (res2[i] ** 0.5 + r2 ** 0.5) ** 2
        else:
            coeffs = list(mb.coefficients.double())
        r2, n2, C = residual2(B, A, U, V)
        coeffs.append(C)
        norm2.append(n2)
        res2.append(r2)
        modules[mod] = ModuleBasis(mb.spec, U.to(dtype), V.to(dtype), torch.stack(coeffs).to(dtype), ev_out, ev_in,
                                   torch.tensor(norm2, dtype=torch.float64), torch.tensor(res2, dtype=torch.float64),
                                   st_out, st_in)
    options = dict(zoo.options)
    if bounds:
        options["residual_bounds"] = sorted(bounds)
    new = LoraZoo(zoo.names + [name], modules, zoo.peft_config,
                  {k: ts + [ck.get_unscaled(k)] for k, ts in zoo.extras.items()},
                  zoo.source_dtypes + [ck.slots[next(iter(specs.values())).a_key][0]],
                  zoo.source_nbytes + [stored_nbytes(ck)], options)
    report = new.error(-1)
    report["updated_bases"] = bool(update_bases)
    report["ranks"] = {mod: list(mb.ranks) for mod, mb in modules.items()}
    return new, report
