"""Finds and loads libunisub, which registers the torch.ops.unisub.* operators."""
import os
from pathlib import Path

import torch

_ENV_OVERRIDE = "UNISUB_LIBRARY"
_PACKAGE = Path(__file__).resolve().parent

#: The CMake prefix of the C++ package installed with this Python package (headers, libunisub,
#: ``find_package(unisub)``), as ``torch.utils.cmake_prefix_path`` is torch's:
#: ``cmake -DCMAKE_PREFIX_PATH="$(python -c 'import unisub; print(unisub.cmake_prefix_path)')"``.
cmake_prefix_path = str(_PACKAGE)


def library_path() -> Path:
    """Path of the ops library: $UNISUB_LIBRARY, else the copy installed inside this package."""
    override = os.environ.get(_ENV_OVERRIDE)
    path = Path(override) if override else _PACKAGE / "lib" / "libunisub.so"
    if not path.is_file():
        raise ImportError(
            f"unisub: the ops library was not found at {path}. Build and install the package "
            "with `pip install --no-build-isolation .` (or `pip install --no-build-isolation -e .`) "
            f"from the source tree, or point {_ENV_OVERRIDE} at a built libunisub.so."
        )
    return path


def _release(version: str) -> str:
    return str(version).split("+")[0]


def check_torch(built_version: str, built_cuda, running_version: str = None, running_cuda="unset") -> None:
    """Refuses a torch other than the one libunisub was compiled against, with a message that says
    what to do (loading it anyway fails with undefined symbols, or worse, does not fail)."""
    running_version = str(torch.__version__ if running_version is None else running_version)
    running_cuda = torch.version.cuda if running_cuda == "unset" else running_cuda
    if _release(built_version) != _release(running_version):
        raise ImportError(
            f"unisub was built against torch {built_version} but torch {running_version} is installed; "
            f"a C++ extension runs only with the torch release it was compiled against: install "
            f"torch=={_release(built_version)}, or rebuild unisub with this torch "
            "(`pip install --no-build-isolation --force-reinstall --no-deps <unisub source>`).")
    if built_cuda and not running_cuda:
        raise ImportError(
            f"unisub was built against a CUDA build of torch {built_version} (CUDA {built_cuda}) but the "
            f"installed torch {running_version} has no CUDA: install a CUDA build of torch, or rebuild "
            "unisub with this torch (`pip install --no-build-isolation --force-reinstall --no-deps "
            "<unisub source>`).")


def load_library() -> Path:
    path = library_path()
    if os.environ.get(_ENV_OVERRIDE) is None:
        try:
            from . import _build_info  # written by setup.py next to the library it built
        except ImportError:
            _build_info = None
        if _build_info is not None:
            check_torch(_build_info.TORCH_VERSION, _build_info.TORCH_CUDA)
    torch.ops.load_library(str(path))
    return path
