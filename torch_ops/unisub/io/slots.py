"""Which tensors are analysed, and as which matrix."""
import fnmatch
import json
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError
from .safetensors import DTYPES

ANALYSABLE = ("F64", "F32", "F16", "BF16")


def matches(key: str, patterns: Sequence[str]) -> bool:
    """``re:`` prefixes a regular expression (searched); anything else is a glob on the full name.
    (``unisub.lora`` matches module names with it; the analysis selects slots in libunisub, ``plan``,
    with the same rules.)"""
    for p in patterns:
        if p.startswith("re:"):
            if re.search(p[3:], key):
                return True
        elif fnmatch.fnmatchcase(key, p):
            return True
    return False


def matrix_shape(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The m × n matrix a tensor is analysed as: conv kernels (C_out, C_in, kh, kw) become
    C_out × C_in·kh·kw; vectors become 1 × n; scalars cannot be analysed."""
    if len(shape) == 0:
        return None
    if len(shape) == 1:
        return (1, shape[0])
    return (shape[0], math.prod(shape[1:]))


# A Gram above this many bytes is skipped unless raised (libunisub's kDefaultMaxGramBytes, plan.h).
DEFAULT_MAX_GRAM_BYTES = 2 << 30


def plan(models, patterns: Optional[Sequence[str]], include_1d: bool, modes: Sequence[str],
         max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES, batch_size: int = 8) -> Tuple[Dict, str]:
    """The slot plan of libunisub (``torch.ops.unisub.plan_slots``, csrc/analysis/plan.cpp), the one
    ``unisub-analyze`` makes too: ``models`` a list of (name, {key: (dtype, shape)}, file_of). Returns
    the plan (selected, slots with their modes and costs, skipped with reasons, peak memory, time)
    and the text both front ends print. Bad input raises ``CheckpointError`` naming the file."""
    payload = [{"name": str(name), "tensors": {k: [dt, [int(d) for d in shape], str(file_of(k))]
                                               for k, (dt, shape) in slots.items()}}
               for name, slots, file_of in models]
    res = json.loads(torch.ops.unisub.plan_slots(json.dumps(payload), None if patterns is None else list(patterns),
                                                 bool(include_1d), list(modes), int(max_gram_bytes), int(batch_size)))
    if "usage" in res:
        raise ValueError(res["usage"])
    if "error" in res:
        e = res["error"]
        raise CheckpointError(e["path"], e["message"], slot=e["slot"] or None)
    res["plan"]["totals"] = res["totals"]  # report.json's "plan" as libunisub writes it (same bytes from both)
    return res["plan"], res["text"]


def select(checkpoint_slots: Dict[str, Tuple[str, Tuple[int, ...]]], patterns: Optional[List[str]],
           include_1d: bool, where: str) -> Tuple[List[str], Dict[str, str]]:
    """Returns the selected slot names (sorted) and, for the rest, why each was skipped (the plan's
    selection step on one model's table).

    With no patterns every floating-point tensor of 2 or more dimensions is taken and other
    tensors are skipped quietly; a tensor the user named explicitly that cannot be analysed is an
    error, not a silent skip."""
    p, _ = plan([(where, checkpoint_slots, lambda k: where)], patterns, include_1d, [])
    return p["selected"], p["skipped"]


assert all(k in DTYPES for k in ANALYSABLE)
