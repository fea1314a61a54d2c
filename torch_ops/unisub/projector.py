"""GradientProjector: keep fine-tuning inside (or outside) a universal subspace by projecting
gradients in place, with one batched ``project_list_`` call per backward pass."""
from typing import Dict, List, Mapping, Optional

import torch

from .mapping import MappedParameter, SubspaceSpec, map_parameters
from .ops.projection import project, project_, project_list_


class GradientProjector:
    """Project each mapped parameter's gradient onto its subspace (``U Uᵀ G V Vᵀ``, either side
    optional), or onto the orthogonal complement with ``complement=True``.

    How the projection is scheduled:

    * plain and ``torch.compile``d models: a post-accumulate-grad hook per mapped parameter marks it,
      and one autograd-engine callback at the end of the backward pass projects all marked gradients
      with a single ``project_list_`` call. Gradient accumulation is exact: projections are linear
      and idempotent, so projecting the running sum after every micro-batch equals projecting the
      final sum.
    * ``DistributedDataParallel``: the projection runs inside a DDP communication hook, on the
      averaged bucket *after* the all-reduce (projecting before it would be equal in exact
      arithmetic, but ranks would each round differently).
    * AMP: float16/bfloat16 gradients are projected in float32 and rounded once (``project_``).
      Non-finite gradients (a GradScaler overflow step) are left as they are, for the scaler to skip.

    Projecting gradients keeps SGD's updates in the subspace; it does not keep Adam's (its
    element-wise normalisation rotates the step out of any subspace) nor decoupled weight decay.
    For those call :meth:`attach` with the optimizer: after every step the update since construction
    is projected, ``W ← W₀ + P(W − W₀)``, so the constraint holds for any optimizer (it costs a copy
    of the mapped weights).
    """

    def __init__(self, model: torch.nn.Module, subspaces: Mapping[str, SubspaceSpec], complement: bool = False):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"GradientProjector: model must be a torch.nn.Module, got {type(model).__name__}")
        self.complement = bool(complement)
        self._ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        inner = model.module if self._ddp else model
        self.mapped: List[MappedParameter] = map_parameters(inner.named_parameters(), subspaces)
        _refuse_sparse(inner, self.mapped)
        self._by_param: Dict[int, MappedParameter] = {id(mp.param): mp for mp in self.mapped}
        self._handles = []
        self._pending: List[MappedParameter] = []
        self._callback_queued = False
        self._initial: Optional[Dict[int, torch.Tensor]] = None
        if self._ddp:
            model.register_comm_hook(None, self._ddp_hook)
        else:
            for mp in self.mapped:  # frozen ones too: gradual unfreezing must not escape the projection
                handle = _grad_hook(mp.param, self._on_grad)
                if handle is not None:
                    self._handles.append(handle)

    # -- gradient projection -------------------------------------------------------------------
    def _on_grad(self, param: torch.Tensor) -> None:
        self._pending.append(self._by_param[id(param)])
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)

    def _flush(self) -> None:
        pending, self._pending, self._callback_queued = self._pending, [], False
        self._project([(mp, mp.param.grad) for mp in pending if mp.param.grad is not None])

    def _project(self, items) -> None:
        grads, Us, Vs, copies = [], [], [], []
        for mp, g in items:
            if g.is_sparse:  # aten's own error here ("Could not run ... SparseCPU") does not say why
                raise RuntimeError(f"GradientProjector does not support sparse gradients (parameter '{mp.name}'; "
                                   f"e.g. an nn.Embedding(sparse=True))")
            if not torch.isfinite(g).all():
                continue  # an AMP overflow step: GradScaler skips it; projecting would spread the inf
            if g.requires_grad:  # backward(create_graph=True): the projection stays in the graph
                mp.param.grad = project(g.reshape(mp.matrix_shape), mp.U, mp.V, self.complement,
                                        check_basis=False).reshape(g.shape).to(g.dtype)
                continue
            mat = g.view(mp.matrix_shape) if g.is_contiguous() else g.reshape(mp.matrix_shape).clone()
            if not g.is_contiguous():
                copies.append((g, mat))
            grads.append(mat)
            Us.append(mp.U)
            Vs.append(mp.V)
        if grads:
            project_list_(grads, Us, Vs, self.complement, check_basis=False)
        for g, mat in copies:
            g.copy_(mat.view_as(g))

    def project_now(self) -> None:
        """Project the current ``.grad`` of every mapped parameter (e.g. after gradients were
        written by something other than backward)."""
        self._project([(mp, mp.param.grad) for mp in self.mapped if mp.param.grad is not None])

    def _ddp_hook(self, state, bucket):
        world = torch.distributed.get_world_size()
        buffer = bucket.buffer().div_(world)
        fut = torch.distributed.all_reduce(buffer, async_op=True).get_future()
        params = bucket.parameters()

        def project_bucket(f):
            flat = f.value()[0]
            items, offset = [], 0
            for p in params:
                mp = self._by_param.get(id(p))
                if mp is not None:
                    items.append((mp, flat[offset:offset + p.numel()].view(p.shape)))
                offset += p.numel()
            self._project(items)
            return flat

        return fut.then(project_bucket)

    # -- constraining whole optimizer steps ------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> "GradientProjector":
        """After each ``optimizer.step()`` set ``W ← W₀ + P(W − W₀)`` for the mapped parameters
        (``P`` the projection, or its complement), W₀ being the weights at this call. Use it with
        Adam-type optimizers and weight decay, whose steps leave the subspace."""
        self._initial = {id(mp.param): mp.param.detach().clone() for mp in self.mapped}
        self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.constrain_weights()))
        return self

    @torch.no_grad()
    def constrain_weights(self) -> None:
        if self._initial is None:
            raise RuntimeError("GradientProjector.constrain_weights: call attach(optimizer) first (it records W₀)")
        for mp in self.mapped:
            W0 = self._initial[id(mp.param)]
            delta = (mp.param - W0).reshape(mp.matrix_shape).to(mp.U.dtype if mp.U is not None else mp.V.dtype)
            project_(delta, mp.U, mp.V, self.complement, check_basis=False)
            mp.param.copy_((W0.reshape(mp.matrix_shape).to(delta.dtype) + delta).view_as(mp.param))

    # -- lifetime --------------------------------------------------------------------------------
    def remove(self) -> None:
        """Unregister every hook (a DDP communication hook cannot be unregistered: DDP forbids it)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._initial = None

    def __enter__(self) -> "GradientProjector":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        side = "complement of " if self.complement else ""
        return f"GradientProjector({len(self.mapped)} parameters, onto the {side}subspaces)"


def _grad_hook(param: torch.Tensor, fn):
    """``param.register_post_accumulate_grad_hook(fn)``, also for a parameter frozen now (torch
    refuses a hook on a tensor that does not require grad): the hook stays with the parameter and
    fires once it is unfrozen and gets a gradient."""
    frozen = not param.requires_grad
    if frozen:
        try:
            param.requires_grad_(True)
        except RuntimeError:  # an inference tensor can never require grad, so never needs the hook
            return None
    try:
        return param.register_post_accumulate_grad_hook(fn)
    finally:
        if frozen:
            param.requires_grad_(False)


def _refuse_sparse(model: torch.nn.Module, mapped: List[MappedParameter]) -> None:
    """The layers known to produce sparse gradients (nn.Embedding / nn.EmbeddingBag with
    sparse=True) cannot be projected: refused here, before any training step."""
    ids = {id(mp.param): mp.name for mp in mapped}
    for module in model.modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and module.sparse \
                and id(module.weight) in ids:
            raise ValueError(f"GradientProjector does not support sparse gradients: '{ids[id(module.weight)]}' "
                             f"belongs to an {type(module).__name__}(sparse=True)")
