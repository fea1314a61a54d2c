"""Drives the one CMake build (CMakeLists.txt) for `pip install` and `python -m build`; the
project's metadata is in pyproject.toml.

unisub is compiled against the torch of the environment that builds it, so build without isolation
in an environment that has that torch (see pyproject.toml for why):
    pip install --no-build-isolation .          # -v shows CMake and ninja's [n/N] progress
    python -m build --wheel --no-isolation
The wheel holds the package, libunisub, the C++ headers, the CMake package (prefix:
unisub.cmake_prefix_path) and the C++ tools; it requires the torch release it was built against.

Environment knobs (all optional):
  UNISUB_BUILD_DIR           CMake build folder (default: build/cmake, reused between builds)
  UNISUB_CMAKE_ARGS          extra arguments for the CMake configure step
  UNISUB_CUDA                AUTO | ON | OFF (CUDA kernels; AUTO = when torch has CUDA and nvcc exists)
  UNISUB_CUDA_CHECK_INCLUDE  cuBLAS/cuSOLVER headers: compile-check the CUDA sources with a CPU torch
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _installed_torch():
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__), torch.version.cuda


def _missing_torch_message() -> str:
    isolated = "pip-build-env" in os.environ.get("PYTHONPATH", "") or "build-env" in sys.prefix
    why = ("build isolation hides the torch of your environment" if isolated
           else f"no torch is importable by {sys.executable}")
    return (f"unisub compiles against the torch it will run with, but {why}: in an environment with "
            "torch installed (e.g. `pip install torch==2.13.0`), run `pip install --no-build-isolation .` "
            "(or `python -m build --wheel --no-isolation`).")


TORCH = _installed_torch()
# Only a source distribution can be made without torch (egg_info is how setuptools answers "which
# build requirements?" for wheels and sdists alike). Anything towards a wheel stops here, before pip
# would resolve an unpinned `torch` dependency to several GB of CUDA wheels.
if TORCH is None and not {"sdist", "egg_info"} & set(sys.argv[1:]):
    sys.exit(_missing_torch_message())
# The wheel requires the torch release it was compiled against (C++ has no stable ABI across
# releases; `==2.13.0` also accepts local builds such as 2.13.0+cpu and 2.13.0+cu130).
TORCH_REQUIREMENT = f"torch=={TORCH[0].split('+')[0]}" if TORCH else "torch>=2.11"


class CMakeExtension(Extension):
    """The ops library, built by CMakeLists.txt rather than by setuptools."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname):
        # torch.ops.load_library takes any path; a plain name keeps C++ users' -lunisub working.
        return os.path.join(*fullname.split(".")[:-1], "libunisub.so")

    def run(self):
        if TORCH is None:
            sys.exit(_missing_torch_message())
        build_dir = Path(os.environ.get("UNISUB_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DUNISUB_CUDA={os.environ.get('UNISUB_CUDA', 'AUTO')}",
            # the package's layout: unisub/{lib,bin,include}, whatever the platform's defaults
            "-DCMAKE_INSTALL_LIBDIR=lib", "-DCMAKE_INSTALL_BINDIR=bin",
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        if os.environ.get("UNISUB_CUDA_CHECK_INCLUDE"):
            configure.append(f"-DUNISUB_CUDA_CHECK_INCLUDE={os.environ['UNISUB_CUDA_CHECK_INCLUDE']}")
        configure += shlex.split(os.environ.get("UNISUB_CMAKE_ARGS", ""))
        subprocess.check_call(configure)
        # The default target: the library and the tools (the C++ tests and the CUDA compile check
        # are target unisub_tests). Ninja prints [n/N] per step, which `pip install -v` shows.
        subprocess.check_call(["cmake", "--build", str(build_dir)])
        # The CMake install tree goes into the Python package itself (the build folder for a wheel,
        # torch_ops/unisub for `pip install -e`): lib/libunisub.so (what `import unisub` loads),
        # include/, lib/cmake/unisub/, bin/ (the tools behind the unisub-* commands).
        package_dir = Path(self.get_ext_fullpath(self.extensions[0].name)).parents[1]
        subprocess.check_call(["cmake", "--install", str(build_dir), "--prefix", str(package_dir)])
        version, cuda = TORCH
        (package_dir / "_build_info.py").write_text(
            "# Written by setup.py: the torch this build of libunisub was compiled against.\n"
            f"TORCH_VERSION = {version!r}\nTORCH_CUDA = {cuda!r}\n")


setup(
    ext_modules=[CMakeExtension("unisub.lib.libunisub")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[TORCH_REQUIREMENT, "numpy", "tqdm", "matplotlib"],
)
