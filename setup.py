"""pip install . / pip install -e . : drives the one CMake build and ships libunisub in the package.

Build against the torch that is already installed: `pip install --no-build-isolation .`
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

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """The ops library, built by CMakeLists.txt rather than by setuptools."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname):
        # torch.ops.load_library takes any path; a plain name keeps C++ users' -lunisub working.
        return os.path.join(*fullname.split(".")[:-1], "libunisub.so")

    def run(self):
        build_dir = Path(os.environ.get("UNISUB_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DUNISUB_CUDA={os.environ.get('UNISUB_CUDA', 'AUTO')}",
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        if os.environ.get("UNISUB_CUDA_CHECK_INCLUDE"):
            configure.append(f"-DUNISUB_CUDA_CHECK_INCLUDE={os.environ['UNISUB_CUDA_CHECK_INCLUDE']}")
        configure += shlex.split(os.environ.get("UNISUB_CMAKE_ARGS", ""))
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir)])
        for ext in self.extensions:
            target = Path(self.get_ext_fullpath(ext.name))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build_dir / "libunisub.so", target)


setup(
    name="unisub",
    version="0.1.0",
    description="Universal weight subspaces: mode-wise spectral analysis, projection and "
                "subspace training as LibTorch custom ops",
    package_dir={"": "torch_ops"},
    packages=find_packages("torch_ops"),
    ext_modules=[CMakeExtension("unisub.libunisub")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "tqdm", "matplotlib"],
    # `unisub demo` trains its zoo on scikit-learn's digits; the tracker logs to TensorBoard if asked
    extras_require={"demo": ["scikit-learn"], "tensorboard": ["tensorboard"]},
    entry_points={"console_scripts": ["unisub=unisub.cli:main"]},
    zip_safe=False,
)
