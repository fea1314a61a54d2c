"""Which tensors are analysed, and as which matrix."""
import fnmatch
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import CheckpointError
from .safetensors import DTYPES

ANALYSABLE = ("F64", "F32", "F16", "BF16")


def matches(key: str, patterns: Sequence[str]) -> bool:
    """``re:`` prefixes a regular expression (searched); anything else is a glob on the full name."""
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


def select(checkpoint_slots: Dict[str, Tuple[str, Tuple[int, ...]]], patterns: Optional[List[str]],
           include_1d: bool, where: str) -> Tuple[List[str], Dict[str, str]]:
    """Returns the selected slot names (sorted) and, for the rest, why each was skipped.

    With no patterns every floating-point tensor of 2 or more dimensions is taken and other
    tensors are skipped quietly; a tensor the user named explicitly that cannot be analysed is an
    error, not a silent skip."""
    chosen, skipped = [], {}
    for key in sorted(checkpoint_slots):
        dtype, shape = checkpoint_slots[key]
        explicit = patterns is not None
        if explicit and not matches(key, patterns):
            continue
        if dtype not in ANALYSABLE:
            if explicit:
                raise CheckpointError(where, f"dtype {dtype} cannot be analysed (need one of "
                                             f"{', '.join(ANALYSABLE)})", slot=key)
            skipped[key] = f"dtype {dtype}"
            continue
        if len(shape) == 0 or (len(shape) == 1 and not include_1d):
            skipped[key] = f"{len(shape)}-D tensor" + ("" if len(shape) == 0 else " (pass include_1d to analyse)")
            continue
        if 0 in shape:
            skipped[key] = f"empty shape {list(shape)}"
            continue
        chosen.append(key)
    return chosen, skipped


assert all(k in DTYPES for k in ANALYSABLE)
