"""unisub: universal weight subspaces as LibTorch custom operators.

Importing the package loads libunisub (registering ``torch.ops.unisub.*`` for CPU and, when
built with CUDA, for CUDA) and the fake kernels that let ``torch.compile`` trace the ops.
"""
from ._library import library_path, load_library

load_library()

from . import _fake  # noqa: E402,F401  (registers fake kernels)
from .ops import gram_update_, mode_gram  # noqa: E402

__version__ = "0.1.0"
__all__ = ["mode_gram", "gram_update_", "library_path", "__version__"]
