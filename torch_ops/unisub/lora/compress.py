"""Compress a zoo of PEFT LoRA adapters into one shared subspace per module (``LoraZoo``).

Per module, ΔW_i = s_i B_i A_i (the scaling PEFT applies, read by ``unisub.io.PeftAdapter``):

1. the mode Grams G_out = Σ ΔW_i ΔW_iᵀ (m × m) and G_in = Σ ΔW_iᵀ ΔW_i (n × n), streamed in
   float64 as thin factors F with F Fᵀ = G (``GramFactor``): each adapter appends its m × r
   (n × r) factor (``lowrank.gram_factors``), never forming a ΔW; when F grows past 2d columns
   it is replaced by its SVD's U·S (d columns, the same Gram to rounding);
2. U, V: the Grams' leading eigenvectors = F's left singular vectors (``unisub.svd``: no d × d
   eigensolver while Σ r_i ≤ d; past that the d × d Gram's), ``rank`` components or the fewest reaching ``energy``
   (``unisub.subspace.choose_rank``), never more than the Gram's numerical rank;
3. C_i = Uᵀ ΔW_i V and each adapter's residual ‖ΔW_i − U C_i Vᵀ‖², exactly, from the factors.

Uncentred on purpose: ΔW is already a difference (to the base), every reconstruction U C_i Vᵀ
is then of rank ≤ min(k_out, k_in) and exports as a genuine LoRA of that rank (a centred model
would add a dense or separately truncated mean), and the Grams are sums of positive
semi-definite terms, so absorbing an adapter later updates them exactly. The mean ΔW's factors are
U C̄ Vᵀ with C̄ the mean coefficient (``LoraZoo.mean_factors``; its energy share: ``mean_share``).

Memory: one module at a time — its Gram factors (8·d·min(2d, Σ r_i) bytes per side) and that
module's factors of every adapter — plus the compressed result.
"""
from typing import Optional, Sequence, Tuple

import torch

from ..accumulator import sorted_eigh
from ..ops import svd
from ..subspace import choose_rank
from .adapters import AdapterSource, adapter_names, open_adapters, plan_modules, read_delta, stored_nbytes
from .lowrank import gram_factors, residual2
from .zoo import LoraZoo, ModuleBasis

# An eigenvalue of a Gram below this fraction of the largest is rounding, not a direction
# (σ below ~3e-7 σ_max: under float32's own rounding of the factors).
EIG_FLOOR = 1e-13


def numerical_rank(evals: torch.Tensor) -> int:
    if evals.numel() == 0 or float(evals[0]) <= 0:
        return 0
    return int((evals > evals[0] * EIG_FLOOR).sum())


class GramFactor:
    """A d × d Gram G = Σ X_i X_iᵀ kept as a thin float64 factor F (F Fᵀ = G), streamed.

    ``state``: eigenpairs (Q [d, R], λ [R]) to start from (F = Q √λ), as ``eig`` returns them."""

    def __init__(self, d: int, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.d = d
        self.F = torch.zeros(d, 0, dtype=torch.float64)
        if state is not None:
            self.F = state[0].double() * state[1].double().clamp_min(0).sqrt()

    def add(self, X: torch.Tensor) -> "GramFactor":
        self.F = torch.cat([self.F, X.double()], 1)
        if self.F.shape[1] > 2 * self.d:  # keep memory at O(d²): the same Gram through d columns
            evals, evecs = self.eig()
            self.F = evecs * evals.sqrt()
        return self

    def eig(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending, clamped at 0) and eigenvectors (the sign rule of ``svd``): the
        SVD of F while it is thin (under d/2 columns: cheaper, and no squaring of its condition),
        the d × d Gram's eigensolver past that (2-3x faster there; eigenvalues below ~ε λ_max are
        rounding either way and are dropped by ``numerical_rank``)."""
        if self.F.shape[1] == 0:
            return torch.zeros(1, dtype=torch.float64), torch.eye(self.d, 1, dtype=torch.float64)
        if 2 * self.F.shape[1] >= self.d:
            return sorted_eigh(self.F @ self.F.T)
        U, S, _ = svd(self.F)
        return S * S, U


def basis(gram: GramFactor, rank: Optional[int], energy: Optional[float]):
    """``(U, eigenvalues, state)`` of a Gram: the kept eigenvectors, the spectrum without its
    rounding-level tail, and the eigenpairs up to the numerical rank (the exact Gram, for absorb)."""
    evals, evecs = gram.eig()
    R = numerical_rank(evals)
    k = max(1, min(choose_rank(evals, rank, energy), R))
    R = max(R, 1)
    return evecs[:, :k].contiguous(), evals[:R].clone(), (evecs[:, :R].contiguous(), evals[:R].clone())


def fit_module(spec, factors, rank, energy, dtype, keep_state, grams=None) -> ModuleBasis:
    """One module's ``ModuleBasis`` from every adapter's (B, A) (scaling folded into B).
    ``grams``: (GramFactor out, GramFactor in) already holding other adapters, to which these are added."""
    m, n = factors[0][0].shape[0], factors[0][1].shape[1]
    g_out, g_in = grams if grams is not None else (GramFactor(m), GramFactor(n))
    for B, A in factors:
        X_out, X_in = gram_factors(B, A)
        g_out.add(X_out)
        g_in.add(X_in)
    U, ev_out, st_out = basis(g_out, rank, energy)
    V, ev_in, st_in = basis(g_in, rank, energy)
    del g_out, g_in
    return project_module(spec, factors, U, V, ev_out, ev_in, dtype, st_out if keep_state else None,
                          st_in if keep_state else None)


def project_module(spec, factors, U, V, ev_out, ev_in, dtype, st_out=None, st_in=None) -> ModuleBasis:
    """Coefficients and residuals of ``factors`` on fixed bases U, V (float64 in, ``dtype`` stored)."""
    coeffs, norms, res = [], [], []
    for B, A in factors:
        r2, n2, C = residual2(B, A, U, V)
        coeffs.append(C)
        norms.append(n2)
        res.append(r2)
    C = torch.stack(coeffs) if coeffs else torch.zeros(0, U.shape[1], V.shape[1], dtype=torch.float64)
    return ModuleBasis(spec, U.to(dtype), V.to(dtype), C.to(dtype), ev_out, ev_in,
                       torch.tensor(norms, dtype=torch.float64), torch.tensor(res, dtype=torch.float64),
                       st_out, st_in)


def compress(adapters: Sequence[AdapterSource], rank: Optional[int] = None, energy: Optional[float] = None,
             dtype: torch.dtype = torch.float32, keep_state: bool = False, progress: bool = False) -> LoraZoo:
    """Compress PEFT LoRA adapters (folders, folders of folders, or ``PeftAdapter`` objects; any
    mix of ranks, lora_alpha, rsLoRA, rank/alpha patterns and float16 / bfloat16 / float32) into a
    :class:`LoraZoo`.

    ``rank``: components kept per mode (out and in) and module; ``energy``: the fewest reaching
    this fraction of the zoo's energy Σ‖ΔW_i‖² per mode (both: the smaller); neither: every
    component above rounding (lossless to rounding, larger than the zoo: a check). ``dtype``:
    storage of bases and coefficients (errors are computed in float64 before rounding to it).
    ``keep_state``: also store each module's Grams (as eigenpairs) so that ``absorb`` can update
    the bases exactly later."""
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"compress: dtype must be a floating dtype, got {dtype}")
    cks = open_adapters(adapters)
    names = adapter_names(cks)
    specs, extras = plan_modules(cks)
    modules = {}
    items = list(specs.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="compress", unit="module")
    for mod, spec in items:
        factors = [read_delta(ck, spec) for ck in cks]
        modules[mod] = fit_module(spec, factors, rank, energy, dtype, keep_state)
        del factors
    first_a = lambda ck: ck.slots[next(iter(specs.values())).a_key][0]  # noqa: E731
    zoo = LoraZoo(names, modules, dict(cks[0].config),
                  {k: [ck.get_unscaled(k) for ck in cks] for k in extras},
                  [first_a(ck) for ck in cks], [stored_nbytes(ck) for ck in cks],
                  {"rank": rank, "energy": energy, "dtype": str(dtype).replace("torch.", "")})
    return zoo
