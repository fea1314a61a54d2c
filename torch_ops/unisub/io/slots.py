"""Which tensors are analysed, and as which matrix."""
import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError
from .safetensors import DTYPES

ANALYSABLE = ("F64", "F32", "F16", "BF16")


def matches(key: str, patterns: Sequence[str]) -> bool:
    """``re:`` prefixes a regular expression (searched); anything else is a glob on the full name.
    libunisub's matcher (csrc/analysis/pattern.h: Python's fnmatchcase / re.search rules through
    PCRE2), the one the slot plan and the tool use."""
    return bool(torch.ops.unisub.slot_patterns_match([key], list(patterns))[0]) if patterns else False


def matrix_shape(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The m × n matrix a tensor is analysed as: conv kernels (C_out, C_in, kh, kw) become
    C_out × C_in·kh·kw; vectors become 1 × n; scalars cannot be analysed (None). libunisub's rule
    (``torch.ops.unisub.analysis_matrix_shape``), the one the slot plan and the tool use."""
    mn = torch.ops.unisub.analysis_matrix_shape([int(d) for d in shape])
    return tuple(mn) if mn else None


# A Gram above this many bytes is skipped unless raised (libunisub's kDefaultMaxGramBytes, plan.h).
DEFAULT_MAX_GRAM_BYTES = 2 << 30


def plan(models, patterns: Optional[Sequence[str]], include_1d: bool, modes: Sequence[str],
         max_gram_bytes: int = DEFAULT_MAX_GRAM_BYTES, batch_size: int = 8) -> Tuple[Dict, str]:
    """The slot plan of libunisub (``torch.ops.unisub.plan_slots``, csrc/analysis/plan.cpp), the one
    ``unisub-analyze`` makes too: ``models`` a list of (name, {key: (dtype, shape)}, file_of). Returns
    the plan (selected, slots with their modes and costs, skipped with reasons, peak memory, time)
    and the text both front ends print. Bad input raises ``CheckpointError`` naming the file."""
    payload = _payload(models)
    res = json.loads(torch.ops.unisub.plan_slots(payload, None if patterns is None else list(patterns),
                                                 bool(include_1d), list(modes), int(max_gram_bytes), int(batch_size)))
    if "usage" in res:
        raise ValueError(res["usage"])
    if "error" in res:
        e = res["error"]
        raise CheckpointError(e["path"], e["message"], slot=e["slot"] or None)
    res["plan"]["totals"] = res["totals"]  # report.json's "plan" as libunisub writes it (same bytes from both)
    return res["plan"], res["text"]


def _payload(models) -> str:
    """models as plan_slots / plan_deltas read them: (name, slots, file_of[, adapter, dora[, peft_type]])."""
    out = []
    for name, slots, file_of, *kind in models:
        item = {"name": str(name), "tensors": {k: [dt, [int(d) for d in shape], str(file_of(k))]
                                               for k, (dt, shape) in slots.items()}}
        if kind:
            item["adapter"], item["dora"] = bool(kind[0]), bool(kind[1])
        if len(kind) > 2 and kind[2]:
            item["peft_type"] = str(kind[2])
        out.append(item)
    return json.dumps(out, ensure_ascii=False)


def plan_deltas(models, selected: Sequence[str], named: bool = False) -> Dict[str, Tuple[str, str, Tuple[int, int]]]:
    """--modes delta's modules (libunisub's ``plan_deltas``, the tool's rule): module -> (lora_A key,
    lora_B key, (m, n)); ``models`` a list of (name, slots, file_of, is_adapter, is_dora[, peft_type]).
    ``named``: ``selected`` came from slot patterns, so a module that does not fit every model is an
    error rather than skipped (the plan lists those as skipped). Bad input raises ``CheckpointError``
    naming the file."""
    res = json.loads(torch.ops.unisub.plan_deltas(_payload(models), list(selected), named))
    if "error" in res:
        e = res["error"]
        raise CheckpointError(e["path"], e["message"], slot=e["slot"] or None)
    return {mod: (a, b, (m, n)) for mod, a, b, m, n in res["modules"]}


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
