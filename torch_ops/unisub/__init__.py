"""unisub: universal weight subspaces as LibTorch custom operators.

Importing the package loads libunisub (registering ``torch.ops.unisub.*`` for CPU and, when
built with CUDA, for CUDA) and the fake kernels that let ``torch.compile`` trace the ops.
"""
from ._library import cmake_prefix_path, library_path, load_library
from ._version import __version__

load_library()

from .ops import *  # noqa: E402,F401,F403  (registers the fake kernels too)
from .ops import __all__ as _op_names  # noqa: E402

__all__ = [*_op_names, "library_path", "cmake_prefix_path", "__version__"]

from .accumulator import LoraDeltaAccumulator, SubspaceAccumulator  # noqa: E402
from .analysis import AnalysisResult, analyze  # noqa: E402
from .subspace import DeltaSubspace, Subspace  # noqa: E402

__all__ += ["Subspace", "DeltaSubspace", "SubspaceAccumulator", "LoraDeltaAccumulator", "analyze", "AnalysisResult"]

from .projector import GradientProjector  # noqa: E402

__all__ += ["GradientProjector"]
from . import nn, optim  # noqa: E402  (unisub.nn.SubspaceLinear, unisub.optim.SubspaceAdamW, ...)
from .compression import CompressedZoo, compress  # noqa: E402
from .merging import merge  # noqa: E402

__all__ += ["merge", "compress", "CompressedZoo"]
from .tracker import ConvergenceTracker  # noqa: E402

__all__ += ["ConvergenceTracker"]
