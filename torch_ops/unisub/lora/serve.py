"""Serve every adapter of a ``LoraZoo`` from one base model, and train new tasks inside the zoo's
subspace.

``MultiTaskLoRA(model, zoo)`` swaps each adapted ``nn.Linear`` of ``model`` (in place: the base
weights are shared, never copied) for a ``SharedSubspaceLinear`` that adds U C_t Vᵀ x for the
selected task t: per module only U [m, k_out], V [n, k_in] and a table of T coefficient cores
[k_out, k_in]. ``set_task(name)`` picks one task for the whole batch; ``set_task([names or ids])``
one per batch row (a mixed batch, the adapters' outputs row by row). The forward is plain tensor
code, so ``torch.compile`` traces it (the task ids are a tensor: switching tasks does not
recompile). ``remove()`` puts the original modules back.

``attach_trainable(model, zoo, rank)`` swaps the same modules for ``unisub.nn.SubspaceLoRALinear``
on the zoo's bases (only the loadings train: k·r numbers per factor); ``add_task(zoo, model,
name)`` turns the trained loadings into a coefficient core C = s L_B L_Aᵀ (exact: the trained ΔW
lies in the subspace) and appends it to the zoo, which then saves, exports and serves it like any
other adapter."""
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..nn import SubspaceLoRALinear
from .compress import GramFactor, basis
from .lowrank import gram_factors
from .zoo import LoraZoo, ModuleBasis


class _Selector:
    """The task ids every layer of one ``MultiTaskLoRA`` reads (one shared tensor)."""

    def __init__(self):
        self.ids = torch.zeros(1, dtype=torch.long)
        self.per_row = False  # ids holds one task per batch row (set_task with a sequence / tensor)


class SharedSubspaceLinear(torch.nn.Module):
    """``y = base(x) + U C[t] Vᵀ x``; ``C`` [T + 1, k_out, k_in] (the last core is zero: no task)."""

    def __init__(self, base: torch.nn.Linear, U: torch.Tensor, V: torch.Tensor, cores: torch.Tensor,
                 selector: _Selector):
        super().__init__()
        if not isinstance(base, torch.nn.Linear):
            raise TypeError(f"SharedSubspaceLinear: the adapted module must be a torch.nn.Linear, got "
                            f"{type(base).__name__}")
        if (base.out_features, base.in_features) != (U.shape[0], V.shape[0]):
            raise ValueError(f"SharedSubspaceLinear: the zoo's ΔW is {U.shape[0]} x {V.shape[0]}, the layer's weight "
                             f"{base.out_features} x {base.in_features}")
        self.base = base
        dev, dt = base.weight.device, base.weight.dtype
        self.register_buffer("U", U.to(dev, dt).contiguous())
        self.register_buffer("Vt", V.to(dev, dt).T.contiguous())
        zero = cores.new_zeros(1, *cores.shape[1:])
        self.register_buffer("cores", torch.cat([cores, zero]).to(dev, dt).transpose(1, 2).contiguous())
        self._selector = selector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self._selector.ids
        if self._selector.per_row and (x.dim() < 2 or x.shape[0] % ids.shape[0] != 0):
            # the grouping below serves t runs of consecutive rows ([B, S, H] by batch row, and a
            # flattened [B·S, H] by runs of S rows); rows that do not split into t runs are an error
            raise ValueError(f"MultiTaskLoRA: set_task was given {ids.shape[0]} tasks (one per batch row), but the "
                             f"input's first dimension ({x.shape[0] if x.dim() >= 2 else 'none'}, input of shape "
                             f"{list(x.shape)}) is not a multiple of it")
        C = self.cores.index_select(0, ids)  # [t, k_in, k_out], t = 1 or one per batch row
        h = torch.nn.functional.linear(x, self.Vt)  # x V: [..., k_in]
        shape = h.shape
        h = torch.matmul(h.reshape(ids.shape[0], -1, shape[-1]), C)  # [t, rows, k_out]
        return self.base(x) + torch.nn.functional.linear(h.reshape(*shape[:-1], -1), self.U)


def _swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, attr)
    setattr(owner, attr, new)
    return old


def _module_names(zoo: LoraZoo, model: torch.nn.Module) -> Dict[str, str]:
    """zoo module -> the model's module name (adapter keys may carry a ``model.`` level more or less)."""
    names = dict(model.named_modules())
    out = {}
    for mod in zoo.modules:
        if mod in names:
            out[mod] = mod
            continue
        hits = [n for n in names if n.endswith("." + mod) or mod.endswith("." + n)]
        if len(hits) != 1:
            raise KeyError(f"the model has no module matching the zoo's '{mod}'")
        out[mod] = hits[0]
    return out


class MultiTaskLoRA(torch.nn.Module):
    """``model`` with every adapter of ``zoo`` (or the ``tasks`` named) available by name."""

    def __init__(self, model: torch.nn.Module, zoo: LoraZoo, tasks: Optional[Sequence[str]] = None):
        super().__init__()
        self.model = model
        self.tasks: List[str] = list(zoo.names if tasks is None else tasks)
        rows = torch.tensor([zoo.index(t) for t in self.tasks], dtype=torch.long)
        self._selector = _Selector()
        self._names = _module_names(zoo, model)
        self._originals = {}
        for mod, mb in zoo.modules.items():
            where = self._names[mod]
            layer = SharedSubspaceLinear(model.get_submodule(where), mb.U, mb.V, mb.coefficients[rows],
                                         self._selector)
            self._originals[where] = _swap(model, where, layer)
        self.set_task(self.tasks[0] if self.tasks else None)

    def _id(self, task) -> int:
        if task is None:
            return len(self.tasks)  # the zero core: the base model alone
        if isinstance(task, str):
            if task not in self.tasks:
                raise KeyError(f"no task {task!r} (tasks: {self.tasks})")
            return self.tasks.index(task)
        if not (isinstance(task, int) and -len(self.tasks) <= task < len(self.tasks)):
            raise IndexError(f"task index {task!r} out of range for {len(self.tasks)} tasks")
        return task % len(self.tasks)

    def set_task(self, task: Union[None, str, int, Sequence, torch.Tensor]) -> "MultiTaskLoRA":
        """One task (name, index, or None for the base model) for the whole batch, or a sequence /
        1-D tensor of them, one per batch row (the batch's first dimension)."""
        if isinstance(task, torch.Tensor):
            ids = task.to(torch.long).reshape(-1)
        elif isinstance(task, (list, tuple)):
            ids = torch.tensor([self._id(t) for t in task], dtype=torch.long)
        else:
            ids = torch.tensor([self._id(task)], dtype=torch.long)
        device = next(iter(self._originals.values())).weight.device
        self._selector.ids = ids.to(device)
        # a single task, however given (a 0-d tensor, a one-element list), serves the whole batch
        self._selector.per_row = isinstance(task, (torch.Tensor, list, tuple)) and ids.numel() > 1
        return self

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def remove(self) -> torch.nn.Module:
        """Put the original layers back; returns the base model, unchanged."""
        for where, layer in self._originals.items():
            _swap(self.model, where, layer)
        self._originals = {}
        return self.model


def attach_trainable(model: torch.nn.Module, zoo: LoraZoo, rank: int, alpha: Optional[float] = None,
                     rslora: bool = False, generator: Optional[torch.Generator] = None) -> List[torch.nn.Parameter]:
    """Swap each of the zoo's modules in ``model`` for a ``SubspaceLoRALinear`` on the zoo's bases
    (B = U L_B, A = (V L_A)ᵀ) and return the trainable loadings (everything else is frozen)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for mod, where in _module_names(zoo, model).items():
        mb = zoo.modules[mod]
        layer = SubspaceLoRALinear(model.get_submodule(where), mb.V.float(), mb.U.float(), rank,
                                   alpha=float(rank if alpha is None else alpha), rslora=rslora, generator=generator)
        _swap(model, where, layer)
        params += [layer.L_A, layer.L_B]
    return params


@torch.no_grad()
def add_task(zoo: LoraZoo, model: torch.nn.Module, name: str, detach: bool = True) -> LoraZoo:
    """Append the task trained with ``attach_trainable`` as adapter ``name`` (C = s L_B L_Aᵀ per
    module; residual 0); with ``detach`` the original ``nn.Linear`` layers go back into ``model``."""
    if name in zoo.names:
        raise ValueError(f"add_task: the zoo already has an adapter named {name!r}")
    if zoo.extras:
        raise ValueError(f"add_task: the zoo's adapters carry non-LoRA tensors ({sorted(zoo.extras)[:3]}, e.g. "
                         f"modules_to_save heads) that training in the subspace does not produce")
    modules, nbytes = {}, 0
    for mod, where in _module_names(zoo, model).items():
        layer = model.get_submodule(where)
        if not isinstance(layer, SubspaceLoRALinear):
            raise TypeError(f"add_task: '{where}' is a {type(layer).__name__}, not a SubspaceLoRALinear "
                            f"(call attach_trainable first)")
        mb = zoo.modules[mod]
        C = layer.scaling * layer.L_B.double() @ layer.L_A.double().T  # k_out × k_in
        st_out, st_in = mb.state_out, mb.state_in
        if st_out is not None:  # keep the absorb state covering every adapter of the zoo
            U, V = mb.U.double(), mb.V.double()
            X_out, X_in = gram_factors(U @ C, V.T)
            st_out = basis(GramFactor(U.shape[0], st_out).add(X_out), None, None)[2]
            st_in = basis(GramFactor(V.shape[0], st_in).add(X_in), None, None)[2]
        n2 = float((C * C).sum())
        modules[mod] = ModuleBasis(mb.spec, mb.U, mb.V, torch.cat([mb.coefficients, C[None].to(mb.coefficients.dtype)]),
                                   mb.eigenvalues_out, mb.eigenvalues_in, torch.cat([mb.norm2, torch.tensor([n2]).double()]),
                                   torch.cat([mb.residual2, torch.zeros(1, dtype=torch.float64)]), st_out, st_in)
        nbytes += 4 * layer.rank * sum(mb.spec.shape)
        if detach:
            _swap(model, where, layer.base)
    return LoraZoo(zoo.names + [name], modules, zoo.peft_config, {}, zoo.source_dtypes + ["float32"], zoo.source_nbytes + [nbytes], dict(zoo.options))
