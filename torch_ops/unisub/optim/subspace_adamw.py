"""AdamW whose moments live in coefficient space.

For a parameter W (viewed as the m × n matrix the analysis uses; conv kernels C_out × rest) mapped
to bases U[m, k] and/or V[n, l], every step takes the gradient's coefficients C = Uᵀ G V, keeps
Adam's moments on C (k × l instead of m × n), and maps the normalised update back with
``reconstruct``::

    W ← W − lr·wd·W                       (decoupled weight decay, as torch.optim.AdamW)
    m ← β₁ m + (1 − β₁) C,  v ← β₂ v + (1 − β₂) C²
    W ← W − lr/(1 − β₁ᵗ) · U [m / (√v / √(1 − β₂ᵗ) + ε)] Vᵀ

Parameters without a subspace get plain AdamW (the same operations as torch.optim.AdamW's
single-tensor path). A parameter may instead be mapped to :class:`GradientSubspace`: the
optimizer then computes its basis from the parameter's gradient with a truncated ``unisub.svd``
(GaLore-style) at the first step and every ``every`` steps, keeps it in the optimizer state, and
carries the moments over into the new basis (see :meth:`SubspaceAdamW.refresh`).

The optimizer state holds tensors and plain values only, so ``torch.load(weights_only=True)``
reads a saved ``state_dict``, and a new optimizer that loads it continues bit for bit.
"""
import difflib
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..mapping import basis_dtype, check_matrix_parameter, map_parameters, matrix_shape
from ..ops.decompositions import svd
from ..ops.projection import coefficients, reconstruct

_SIDES = ("out", "in", "both")
_SVD_METHODS = ("auto", "gram", "jacobi", "randomized", "lapack")


@dataclass(frozen=True)
class GradientSubspace:
    """Map a parameter to this (instead of fixed bases) to have :class:`SubspaceAdamW` compute
    its basis from the gradient: the leading ``rank`` singular vectors of the parameter's
    gradient, on the ``"out"`` side (left, U[m, rank]), the ``"in"`` side (right, V[n, rank]) or
    ``"both"``, recomputed at the first step and every ``every`` steps. ``method`` is passed to
    :func:`unisub.svd` (``"randomized"`` is the fast choice for rank ≪ min(m, n))."""

    rank: int
    side: str = "out"
    every: int = 200
    method: str = "auto"


@dataclass
class _Target:
    """How one parameter is optimised: fixed bases (either may be None), or a GradientSubspace
    (the bases then live in the optimizer state), or neither (plain AdamW)."""

    name: str
    shape: Tuple[int, int]
    U: Optional[torch.Tensor] = None
    V: Optional[torch.Tensor] = None
    gradient: Optional[GradientSubspace] = None

    @property
    def plain(self) -> bool:
        return self.U is None and self.V is None and self.gradient is None

    def coefficient_shape(self) -> Tuple[int, int]:
        m, n = self.shape
        if self.gradient is not None:
            r, side = self.gradient.rank, self.gradient.side
            return (r if side in ("out", "both") else m, r if side in ("in", "both") else n)
        return (self.U.shape[1] if self.U is not None else m, self.V.shape[1] if self.V is not None else n)


def moment_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Moments are float32 for float16/bfloat16/float32 parameters, float64 for float64."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _named_groups(named_params) -> List[dict]:
    """Normalise the first argument into param groups whose "params" are (name, tensor) pairs."""
    bare = ("SubspaceAdamW needs parameter names to match `subspaces`: pass the model itself, "
            "model.named_parameters(), or param groups {'params': [(name, parameter), ...], ...}")
    if isinstance(named_params, torch.nn.Module):
        return [{"params": list(named_params.named_parameters())}]
    if isinstance(named_params, torch.Tensor):
        raise TypeError(f"{bare}; got a bare tensor")
    items = list(named_params)
    if not items:
        raise ValueError("SubspaceAdamW got an empty parameter list")
    groups = []
    if all(isinstance(g, Mapping) for g in items):
        for g in items:
            g = dict(g)
            if "params" not in g:
                raise ValueError("every param group must have a 'params' entry")
            ps = g["params"]
            g["params"] = list(ps.named_parameters()) if isinstance(ps, torch.nn.Module) else list(ps)
            groups.append(g)
    else:
        groups.append({"params": items})
    for g in groups:
        for item in g["params"]:
            if isinstance(item, torch.Tensor):
                raise TypeError(f"{bare}; got a bare tensor of shape {tuple(item.shape)}")
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], torch.Tensor)):
                raise TypeError(f"{bare}; got {type(item).__name__} {item!r:.80}")
    return groups


def _check_gradient_spec(name: str, spec: GradientSubspace, param: torch.Tensor) -> None:
    check_matrix_parameter(name, param)
    if spec.side not in _SIDES:
        raise ValueError(f"subspaces[{name!r}]: GradientSubspace side must be one of {_SIDES}, got {spec.side!r}")
    m, n = matrix_shape(param)
    full = min(m, n)
    if not isinstance(spec.rank, int) or isinstance(spec.rank, bool) or not 0 < spec.rank <= full:
        raise ValueError(f"subspaces[{name!r}]: GradientSubspace rank must be an integer in [1, {full}] for a "
                         f"{m} × {n} parameter (a gradient has at most min(m, n) = {full} singular directions), "
                         f"got {spec.rank!r}")
    if not isinstance(spec.every, int) or isinstance(spec.every, bool) or spec.every < 1:
        raise ValueError(f"subspaces[{name!r}]: GradientSubspace every must be a positive integer "
                         f"(steps between basis refreshes), got {spec.every!r}")
    if spec.method not in _SVD_METHODS:
        raise ValueError(f"subspaces[{name!r}]: GradientSubspace method must be one of {_SVD_METHODS}, "
                         f"got {spec.method!r}")


def _check_hyperparameters(lr, betas, eps, weight_decay, where: str) -> None:
    if not (isinstance(lr, (int, float)) and lr >= 0):
        raise ValueError(f"{where}lr must be a non-negative number, got {lr!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{where}eps must be a non-negative number, got {eps!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"{where}betas must be two numbers in [0, 1), got {betas!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"{where}weight_decay must be a non-negative number, got {weight_decay!r}")


class SubspaceAdamW(torch.optim.Optimizer):
    """AdamW with Adam's moments kept in coefficient space (k × l per mapped matrix).

    Args:
        named_params: an ``nn.Module``, an iterable of ``(name, parameter)`` pairs (e.g.
            ``model.named_parameters()``), or param groups ``{"params": <pairs or module>, "lr": ...}``.
            Names are what ``subspaces`` refers to.
        subspaces: ``{name: spec}``; a spec is anything :func:`unisub.mapping.map_parameters`
            accepts (a :class:`unisub.Subspace`, a ``(U, V)`` pair with either side ``None``, a dict
            ``{"out": U, "in": V}``) or a :class:`GradientSubspace`. Parameters not named here
            get plain AdamW. Everything is validated here, at construction.
        lr, betas, eps, weight_decay: as :class:`torch.optim.AdamW` (decoupled weight decay,
            applied to the whole parameter, not only its subspace component).

    Bases are used on the device the parameters had at construction: build the optimizer after
    moving the model. A ``Subspace``'s mean is not used (the optimizer moves W by updates that lie
    in the subspace; where W starts is up to the caller).
    """

    def __init__(self, named_params, subspaces: Mapping[str, object], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        _check_hyperparameters(lr, betas, eps, weight_decay, "")
        if not isinstance(subspaces, Mapping):
            raise TypeError(f"subspaces must map parameter names to subspaces, got {type(subspaces).__name__}")

        groups = _named_groups(named_params)
        named: Dict[str, torch.Tensor] = {}
        for g in groups:
            for name, p in g["params"]:
                if name in named:
                    raise ValueError(f"parameter name {name!r} appears twice")
                named[name] = p

        gradient_specs = {n: s for n, s in subspaces.items() if isinstance(s, GradientSubspace)}
        fixed = {n: s for n, s in subspaces.items() if not isinstance(s, GradientSubspace)}
        missing = [n for n in gradient_specs if n not in named]
        if missing:
            hints = {n: difflib.get_close_matches(n, list(named), n=1) for n in missing}
            detail = "; ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
            raise KeyError(f"subspaces name parameters that the model does not have: {detail}")
        for n, spec in gradient_specs.items():
            _check_gradient_spec(n, spec, named[n])
        mapped = {mp.name: mp for mp in map_parameters(named.items(), fixed)}

        self._targets: Dict[torch.Tensor, _Target] = {}
        for name, p in named.items():
            shape = matrix_shape(p)
            if name in mapped:
                self._targets[p] = _Target(name, shape, mapped[name].U, mapped[name].V)
            else:
                self._targets[p] = _Target(name, shape, gradient=gradient_specs.get(name))
        self._by_name = {t.name: p for p, t in self._targets.items()}

        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(groups, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; parameters added after construction get plain AdamW
        (a subspace can only be given at construction, where it is validated)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a group's own values bypass the constructor's checks
            _check_hyperparameters(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                                   f"param group {len(self.param_groups) - 1}: ")
        except ValueError:
            self.param_groups.pop()
            raise
        if not hasattr(self, "_targets"):
            return  # called from __init__: the targets are already set
        names = group.get("param_names") or [f"<added {i}>" for i in range(len(group["params"]))]
        for name, p in zip(names, group["params"]):
            if p not in self._targets:
                self._targets[p] = _Target(name, matrix_shape(p))
                self._by_name.setdefault(name, p)

    # ------------------------------------------------------------------------------------------
    def _init_state(self, p: torch.Tensor, target: _Target) -> dict:
        state = self.state[p]
        dtype = moment_dtype(p.dtype)
        # The step count as torch.optim.AdamW keeps it (a float32 CPU scalar tensor).
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        shape = tuple(p.shape) if target.plain else target.coefficient_shape()
        state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=p.device)
        if target.gradient is not None:
            state["refresh_pending"] = True
        return state

    def _bases(self, p: torch.Tensor, target: _Target, state: dict):
        if target.gradient is None:
            return target.U, target.V
        return state.get("U"), state.get("V")

    def _refresh_basis(self, p: torch.Tensor, target: _Target, state: dict, G: torch.Tensor) -> None:
        """Recompute a GradientSubspace basis from the gradient G (m × n) and carry the moments
        into it: with R_U = U_newᵀ U_old and R_V = V_newᵀ V_old, m ← R_U m R_Vᵀ (the old first
        moment's matrix U_old m V_oldᵀ, projected on the new subspace) and v ← (R_U∘R_U) v (R_V∘R_V)ᵀ
        (the variance of each new coordinate if the old ones were uncorrelated; non-negative, and
        exact when the new basis is a signed permutation of the old)."""
        spec = target.gradient
        try:
            Uf, _, Vh = svd(G.to(basis_dtype(p.dtype)), spec.rank, spec.method)
        except RuntimeError as e:
            raise RuntimeError(f"SubspaceAdamW: recomputing the basis of {target.name!r} from its gradient "
                               f"failed: {e}") from e
        U_new = Uf.contiguous() if spec.side in ("out", "both") else None
        V_new = Vh.T.contiguous() if spec.side in ("in", "both") else None
        U_old, V_old = state.get("U"), state.get("V")
        if float(state["step"]) > 0:
            dt = state["exp_avg"].dtype
            RU = (U_new.T @ U_old).to(dt) if U_new is not None else None
            RV = (V_new.T @ V_old).to(dt) if V_new is not None else None
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if RU is not None:
                m, v = RU @ m, RU.square() @ v
            if RV is not None:
                m, v = m @ RV.T, v @ RV.square().T
            state["exp_avg"], state["exp_avg_sq"] = m.contiguous(), v.contiguous()
        if U_new is not None:
            state["U"] = U_new
        if V_new is not None:
            state["V"] = V_new
        state["refresh_pending"] = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("SubspaceAdamW does not support sparse gradients")
                target = self._targets[p]
                state = self.state[p]
                if len(state) == 0:
                    state = self._init_state(p, target)
                step_t = state["step"]
                if target.gradient is not None and (state["refresh_pending"]
                                                    or int(step_t) % target.gradient.every == 0):
                    self._refresh_basis(p, target, state, target_matrix(grad, target))
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                # The operations of torch.optim.AdamW's single-tensor path, in its order.
                step_t += 1
                if wd != 0:
                    p.mul_(1 - lr * wd)
                step = step_t.item()
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5

                if target.plain:
                    g = grad if grad.dtype == exp_avg.dtype else grad.to(exp_avg.dtype)
                    exp_avg.lerp_(g, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    if p.dtype == exp_avg.dtype:
                        p.addcdiv_(exp_avg, denom, value=-step_size)
                    else:
                        p.add_(exp_avg.mul(-step_size).div_(denom))
                    continue

                U, V = self._bases(p, target, state)
                C = coefficients(target_matrix(grad, target), U, V, False)
                if C.dtype != exp_avg.dtype:
                    C = C.to(exp_avg.dtype)
                exp_avg.lerp_(C, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(C, C, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                # -step_size·m / denom, as addcdiv_ evaluates it, then mapped back to m × n.
                delta = exp_avg.mul(-step_size).div_(denom)
                p.add_(reconstruct(delta, U, V, False).view(p.shape))
        return loss

    # ------------------------------------------------------------------------------------------
    def refresh(self, name: Optional[str] = None) -> None:
        """Recompute the basis of the GradientSubspace parameter ``name`` (all of them for None)
        from its gradient at the next step, besides the regular every-``every``-steps refresh."""
        if name is None:
            names = [t.name for t in self._targets.values() if t.gradient is not None]
        else:
            if name not in self._by_name:
                hint = difflib.get_close_matches(name, list(self._by_name), n=1)
                raise KeyError(f"refresh: {name!r} is not a parameter of this optimizer"
                               + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            if self._targets[self._by_name[name]].gradient is None:
                raise ValueError(f"refresh: {name!r} is not mapped to a GradientSubspace; only bases computed "
                                 "from gradients can be refreshed")
            names = [name]
        for n in names:
            state = self.state[self._by_name[n]]
            if state:  # before the first step the basis is computed anyway
                state["refresh_pending"] = True

    def bases(self, name: str) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The (U, V) the parameter ``name`` is currently optimised in (None: that side is whole)."""
        if name not in self._by_name:
            raise KeyError(f"bases: {name!r} is not a parameter of this optimizer")
        p = self._by_name[name]
        return self._bases(p, self._targets[p], self.state[p])

    def load_state_dict(self, state_dict) -> None:
        """torch's loader casts every floating state tensor to its parameter's dtype; here moments
        and bases keep their own dtypes (float32 for low-precision parameters), so they are put
        back from ``state_dict`` after it. Shapes are checked against this optimizer's subspaces."""
        saved = state_dict["state"]
        for mine, theirs in zip(self.param_groups, state_dict["param_groups"]):
            a, b = mine.get("param_names"), theirs.get("param_names")
            if a is not None and b is not None and list(a) != list(b):
                diff = next((x, y) for x, y in zip(a + [None], b + [None]) if x != y)
                raise ValueError(f"load_state_dict: the state_dict was saved for parameters named {diff[1]!r} where "
                                 f"this optimizer has {diff[0]!r}; parameters must come in the same order")
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            if i not in saved:
                continue
            target, state = self._targets[p], self.state[p]
            expected = tuple(p.shape) if target.plain else target.coefficient_shape()
            for key in ("exp_avg", "exp_avg_sq"):
                if key not in saved[i]:
                    raise ValueError(f"load_state_dict: the state of {target.name!r} has no {key!r}")
                if tuple(saved[i][key].shape) != expected:
                    raise ValueError(f"load_state_dict: {target.name!r} has {key} of shape "
                                     f"{tuple(saved[i][key].shape)} in the state_dict, but this optimizer keeps "
                                     f"{expected} (different subspaces than the run that saved it?)")
                state[key] = saved[i][key].to(device=p.device, dtype=moment_dtype(p.dtype), copy=True)
            if target.gradient is not None:
                for key in ("U", "V"):
                    if key in saved[i]:
                        state[key] = saved[i][key].to(device=p.device, dtype=basis_dtype(p.dtype), copy=True)
                need = {"out": ("U",), "in": ("V",), "both": ("U", "V")}[target.gradient.side]
                if not all(k in state for k in need) and not state.get("refresh_pending", False):
                    raise ValueError(f"load_state_dict: the state of {target.name!r} lacks its basis {need}")


def target_matrix(t: torch.Tensor, target: _Target) -> torch.Tensor:
    return t.reshape(target.shape)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (moments, steps, stored bases): what a
    checkpoint of the optimizer stores and what it keeps in memory beyond the parameters."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                total += v.untyped_storage().nbytes()
    return total


def basis_bytes(optimizer: "SubspaceAdamW") -> int:
    """Bytes of the fixed bases the optimizer holds outside its state (shared bases counted once)."""
    seen, total = set(), 0
    for t in optimizer._targets.values():
        for B in (t.U, t.V):
            if B is not None and B.untyped_storage().data_ptr() not in seen:
                seen.add(B.untyped_storage().data_ptr())
                total += B.untyped_storage().nbytes()
    return total


__all__ = ["SubspaceAdamW", "GradientSubspace", "state_bytes", "basis_bytes", "moment_dtype"]
