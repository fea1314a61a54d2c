"""Optimizers that keep their state in a subspace: ``SubspaceAdamW`` (Adam's moments in
coefficient space, fixed bases or bases refreshed from gradients). See docs/optim.md."""
from .subspace_adamw import GradientSubspace, SubspaceAdamW, basis_bytes, moment_dtype, state_bytes

__all__ = ["SubspaceAdamW", "GradientSubspace", "state_bytes", "basis_bytes", "moment_dtype"]
