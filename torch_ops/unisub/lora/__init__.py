"""LoRA zoos in, PEFT adapters out: compress many PEFT LoRA adapters of one base model into one
shared subspace per module (``compress`` -> ``LoraZoo``, one safetensors file), export any of
them back as a PEFT adapter (``export``), absorb new ones (``absorb``), merge adapters into one
(``merge``: mean, task arithmetic, TIES, DARE, subspace) and serve them all from one base model
(``MultiTaskLoRA``), training new tasks inside the subspace (``attach_trainable`` / ``add_task``).
See docs/lora.md."""
from .absorb import absorb
from .compress import compress
from .export import adapter_factors, export
from .merge import METHODS, dare_mask, merge
from .serve import MultiTaskLoRA, SharedSubspaceLinear, add_task, attach_trainable
from .zoo import FORMAT, LoraZoo, ModuleBasis

__all__ = ["compress", "export", "adapter_factors", "absorb", "merge", "dare_mask", "METHODS", "MultiTaskLoRA",
           "SharedSubspaceLinear", "attach_trainable", "add_task", "LoraZoo", "ModuleBasis", "FORMAT"]
