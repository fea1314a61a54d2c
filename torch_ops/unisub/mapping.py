"""Which parameter trains in which subspace: the one validated mapping every training tool uses.

Users write ``{"layers.0.q_proj.weight": subspace, ...}`` where a value is a :class:`Subspace`
(its ``"out"`` basis projects from the left, ``"in"`` from the right), a ``(U, V)`` pair with either
side ``None`` (no projection on that side), or a dict ``{"out": U, "in": V}``. Everything is checked
here, once, at construction: a name that is not a parameter, a basis whose rows do not match the
parameter's, non-floating parameters, bases that are not orthonormal. The training loop then runs
the ops with ``check_basis=False``.

Parameters with more than two dimensions (conv kernels) are treated as matrices
``C_out × (C_in·kh·kw)``, as the analysis reshapes them.
"""
import difflib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .subspace import Subspace

BasisPair = Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]
SubspaceSpec = Union[Subspace, BasisPair, Mapping[str, Optional[torch.Tensor]]]


@dataclass
class MappedParameter:
    """A parameter, its name, and the bases (on its device; float64 for float64 parameters,
    float32 otherwise) that constrain it. ``U`` projects rows (out), ``V`` columns (in)."""

    name: str
    param: torch.Tensor
    U: Optional[torch.Tensor]
    V: Optional[torch.Tensor]
    mean: Optional[torch.Tensor] = None

    @property
    def matrix_shape(self) -> Tuple[int, int]:
        return matrix_shape(self.param)

    def as_matrix(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (shaped like the parameter) viewed as the m × n matrix the bases act on."""
        return t.reshape(self.matrix_shape)


def matrix_shape(param: torch.Tensor) -> Tuple[int, int]:
    return (param.shape[0], param[0].numel()) if param.dim() >= 1 else (1, 1)


def check_matrix_parameter(name: str, param: torch.Tensor) -> None:
    """A parameter a subspace can constrain: floating point, at least two dimensions."""
    if not param.is_floating_point():
        raise TypeError(f"subspaces[{name!r}]: the parameter is {param.dtype}; only floating-point parameters "
                        "can be constrained to a subspace")
    if param.dim() < 2:
        raise ValueError(f"subspaces[{name!r}]: the parameter has shape {tuple(param.shape)}; subspaces act on "
                         "matrices (2-D weights, or conv kernels read as C_out × rest)")


def basis_dtype(param_dtype: torch.dtype) -> torch.dtype:
    # project_ computes float16/bfloat16/float32 gradients in float32 and takes float32 bases.
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _bases_of(name: str, spec: SubspaceSpec) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    if isinstance(spec, Subspace):
        return spec.bases.get("out"), spec.bases.get("in"), spec.mean if spec.center else None
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"out", "in"}
        if unknown:
            raise ValueError(f"subspaces[{name!r}]: a dict of bases has keys 'out' and/or 'in', got {sorted(unknown)}")
        return spec.get("out"), spec.get("in"), None
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return spec[0], spec[1], None
    raise TypeError(f"subspaces[{name!r}]: expected a unisub.Subspace, a (U, V) pair or a dict "
                    f"{{'out': U, 'in': V}}, got {type(spec).__name__}")


def _check_basis(name: str, side: str, B: Optional[torch.Tensor], rows: int, dtype, device) -> Optional[torch.Tensor]:
    if B is None:
        return None
    if not isinstance(B, torch.Tensor):
        raise TypeError(f"subspaces[{name!r}]: basis {side} must be a tensor or None, got {type(B).__name__}")
    if B.dim() != 2:
        raise ValueError(f"subspaces[{name!r}]: basis {side} must be a matrix [{rows}, k], got shape {tuple(B.shape)}")
    if B.shape[0] != rows:
        raise ValueError(f"subspaces[{name!r}]: basis {side} has {B.shape[0]} rows but the parameter "
                         f"has {rows} ({'rows' if side == 'U (out)' else 'columns'}); got shape {tuple(B.shape)}")
    if B.shape[1] < 1:
        raise ValueError(f"subspaces[{name!r}]: basis {side} has no columns")
    if not B.is_floating_point():
        raise TypeError(f"subspaces[{name!r}]: basis {side} must be floating point, got {B.dtype}")
    if not torch.isfinite(B).all():
        raise ValueError(f"subspaces[{name!r}]: basis {side} has non-finite entries")
    # Orthonormality is judged in the precision the basis was made in, before any rounding.
    err = float((B.T.double() @ B.double() - torch.eye(B.shape[1], dtype=torch.float64, device=B.device)).abs().max())
    tol = 10 * torch.finfo(B.dtype if B.dtype in (torch.float32, torch.float64) else torch.float32).eps ** 0.5
    if err > tol:
        raise ValueError(f"subspaces[{name!r}]: basis {side} must have orthonormal columns "
                         f"(max|BᵀB − I| = {err:.2e} > {tol:.1e})")
    return B.detach().to(device=device, dtype=dtype).contiguous()


def _missing_hint(name: str, params: Mapping[str, torch.Tensor]) -> str:
    # A parametrized tensor (train_coefficients, torch.nn.utils.parametrize) is no longer a
    # parameter under its own name; a close-match guess would point at an unrelated layer.
    module, _, attr = name.rpartition(".")
    original = f"{module}.parametrizations.{attr}.original" if module else f"parametrizations.{attr}.original"
    if original in params:
        return (f"{name!r} (it is parametrized, e.g. by unisub.nn.train_coefficients: the trainable tensor is now "
                f"{original!r}, its subspace coefficients, which need no projection or tracking)")
    close = difflib.get_close_matches(name, list(params), n=1)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def map_parameters(named_parameters: Iterable[Tuple[str, torch.Tensor]],
                   subspaces: Mapping[str, SubspaceSpec]) -> List[MappedParameter]:
    """Validate ``subspaces`` against a model's named parameters, in the model's parameter order."""
    if not isinstance(subspaces, Mapping):
        raise TypeError(f"subspaces must map parameter names to subspaces, got {type(subspaces).__name__}")
    params: Dict[str, torch.Tensor] = dict(named_parameters)
    missing = [n for n in subspaces if n not in params]
    if missing:
        raise KeyError(f"subspaces name parameters that the model does not have: "
                       f"{'; '.join(_missing_hint(n, params) for n in missing)}")
    mapped = []
    for name, param in params.items():
        if name not in subspaces:
            continue
        check_matrix_parameter(name, param)
        U, V, mean = _bases_of(name, subspaces[name])
        if U is None and V is None:
            raise ValueError(f"subspaces[{name!r}]: both bases are None; map the parameter to at least one basis")
        m, n = matrix_shape(param)
        dtype = basis_dtype(param.dtype)
        U = _check_basis(name, "U (out)", U, m, dtype, param.device)
        V = _check_basis(name, "V (in)", V, n, dtype, param.device)
        if mean is not None:
            if tuple(mean.shape) != (m, n) and tuple(mean.shape) != tuple(param.shape):
                raise ValueError(f"subspaces[{name!r}]: the subspace's mean has shape {tuple(mean.shape)}, "
                                 f"the parameter {tuple(param.shape)}")
            mean = mean.detach().to(device=param.device, dtype=dtype).reshape(m, n)
        mapped.append(MappedParameter(name, param, U, V, mean))
    return mapped
