"""unisub as a user installs and consumes it: a wheel built from this checkout, installed into a
fresh virtual environment that has only torch, used from outside the checkout (the Python package,
the command line, the C++ tools, and C++ programs built against the installed CMake package:
examples/cpp and the AOTInductor example). Also the import-time torch check and the messages of
the installation path.

The wheel comes from the already configured build folder (incremental: the library is not rebuilt),
torch from the package index pip is configured with; where no index has it the slow tests skip.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import unisub
from unisub import _library

from conftest import ROOT, build_dir

TORCH_RELEASE = str(torch.__version__).split("+")[0]


# ---- fast: the messages and checks of the installation path -----------------------------------

def test_import_refuses_another_torch_release():
    with pytest.raises(ImportError) as e:
        _library.check_torch("2.13.0+cpu", None, running_version="2.12.1", running_cuda=None)
    message = str(e.value)
    assert "built against torch 2.13.0+cpu but torch 2.12.1 is installed" in message
    assert "torch==2.13.0" in message and "--no-build-isolation" in message
    # a local build of the same release (CPU wheel vs CUDA wheel) is the same C++ ABI
    _library.check_torch("2.13.0+cpu", None, running_version="2.13.0+cu130", running_cuda="13.0")
    with pytest.raises(ImportError, match="has no CUDA"):
        _library.check_torch("2.13.0+cu130", "13.0", running_version="2.13.0+cpu", running_cuda=None)


def test_setup_without_torch_says_what_to_run(tmp_path):
    # setup.py run by an interpreter that cannot import torch (as in pip's isolated build)
    (tmp_path / "torch.py").write_text("raise ImportError('no torch here')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, str(ROOT / "setup.py"), "dist_info"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "pip install --no-build-isolation ." in lines[0] and "torch" in lines[0]


def test_cli_help_shows_an_example_per_command(capsys):
    from unisub import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    parser = cli._build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"demo", "analyze", "inspect"} <= set(commands)
    for name, sub in commands.items():
        assert f"  unisub {name} " in out, f"no example of `unisub {name}` in unisub --help"
        assert sub.format_help().rstrip().splitlines()[-1].strip().startswith(f"unisub {name}")
    assert "The ``unisub`` command line" not in out


def test_tracker_without_tensorboard_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    model = torch.nn.Sequential(torch.nn.Linear(8, 10))
    U = torch.linalg.qr(torch.randn(10, 3))[0]
    with pytest.raises(ImportError, match=r"pip install tensorboard"):
        unisub.ConvergenceTracker(model, {"0.weight": (U, None)}, csv=tmp_path / "run" / "c.csv",
                                  tensorboard=tmp_path / "tb")
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()


# ---- slow: wheel -> fresh venv -> everything from outside the checkout --------------------------

def _run(cmd, *, env=None, cwd=None, timeout=900, check=True):
    run = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and run.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited with {run.returncode}:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    dist = tmp / "dist"
    # The wheel, from the configured build folder (what `python -m build --wheel --no-isolation`
    # runs too; pip wheel is used as `build` is not a test requirement).
    env = {**os.environ, "UNISUB_BUILD_DIR": str(build_dir())}
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", dist, ROOT],
         env=env, cwd=tmp)
    wheel = next(dist.glob("unisub-*.whl"))

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    torch_install = _run([py, "-m", "pip", "install", "-q", "--retries", "0", f"torch=={TORCH_RELEASE}"],
                         check=False, timeout=600)
    if torch_install.returncode != 0:
        pytest.skip(f"torch=={TORCH_RELEASE} cannot be installed into a fresh venv here (no package index?): "
                    f"{torch_install.stderr.strip().splitlines()[-1:]}")
    # With its dependencies: torch==<release> is satisfied by the torch there, the rest is small.
    _run([py, "-m", "pip", "install", "-q", wheel])

    # A user's shell: the venv's bin first, no PYTHONPATH, nothing of the checkout or its build.
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "UNISUB_LIBRARY", "LD_LIBRARY_PATH", "VIRTUAL_ENV")}
    clean["PATH"] = f"{venv / 'bin'}{os.pathsep}{clean.get('PATH', '/usr/bin:/bin')}"
    work = tmp / "work"
    work.mkdir()
    prefix = _run([py, "-c", "import unisub; print(unisub.cmake_prefix_path)"], env=clean, cwd=work).stdout.strip()
    return SimpleNamespace(wheel=wheel, venv=venv, py=py, env=clean, work=work, prefix=Path(prefix))


@pytest.mark.slow
def test_wheel_contents(installed):
    with zipfile.ZipFile(installed.wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        build_info = z.read("unisub/_build_info.py").decode()
    for needed in ("unisub/lib/libunisub.so", "unisub/include/unisub/unisub.h", "unisub/bin/unisub-run-script",
                   "unisub/lib/cmake/unisub/unisubConfig.cmake", "unisub/lib/cmake/unisub/unisubTargets.cmake",
                   "_unisub_cli.py"):
        assert needed in names, f"{needed} is not in the wheel"
    assert f"Requires-Dist: torch=={TORCH_RELEASE}" in metadata
    assert f"TORCH_VERSION = {str(torch.__version__)!r}" in build_info
    for command in ("unisub =", "unisub-analyze =", "unisub-run-script ="):
        assert command in entry_points


@pytest.mark.slow
def test_installed_package_is_relocatable(installed):
    cmake_dir = installed.prefix / "lib" / "cmake" / "unisub"
    text = "".join(p.read_text() for p in cmake_dir.glob("*.cmake"))
    for build_path in (str(ROOT), str(Path(torch.__file__).parent), str(build_dir())):
        assert build_path not in text, f"the installed CMake package names {build_path}"
    links = [line for line in text.splitlines() if "INTERFACE_LINK_LIBRARIES" in line]
    assert links and all("libc10" not in line for line in links), links


@pytest.mark.slow
def test_python_package_and_commands(installed):
    env, work, py = installed.env, installed.work, installed.py
    run = _run([py, "-c", "import unisub, torch; X = torch.randn(5, 4, 3, dtype=torch.float64);"
                          "G = torch.ops.unisub.mode_gram(X, 1, True); Xc = X - X.mean(0);"
                          "assert torch.allclose(G, torch.einsum('kij,klj->il', Xc, Xc)); print(unisub.__file__)"],
               env=env, cwd=work)
    assert Path(run.stdout.strip()).is_relative_to(installed.venv), run.stdout

    # `unisub --version` must not load torch: with a torch that cannot be imported it still answers.
    poisoned = work / "poisoned"
    (poisoned / "torch").mkdir(parents=True)
    (poisoned / "torch" / "__init__.py").write_text("raise ImportError('unisub --version loaded torch')\n")
    run = _run(["unisub", "--version"], env={**env, "PYTHONPATH": str(poisoned)}, cwd=work)
    assert run.stdout.strip() == f"unisub {unisub.__version__}"

    help_text = _run(["unisub", "--help"], env=env, cwd=work).stdout
    assert "unisub demo --quick" in help_text and "unisub analyze " in help_text

    # The mismatch check at import: the same package with a torch that says it is another release.
    run = _run([py, "-c", "import torch; torch.__version__ = '2.99.0'; import unisub"], env=env, cwd=work, check=False)
    assert run.returncode != 0 and "built against torch" in run.stderr and "2.99.0" in run.stderr


@pytest.mark.slow
def test_run_script_tool(installed):
    env, work, py = installed.env, installed.work, installed.py
    script = ("import torch, unisub\n"
              "class M(torch.nn.Module):\n"
              "    def forward(self, X: torch.Tensor) -> torch.Tensor:\n"
              "        return torch.ops.unisub.mode_gram(X, 2, True)\n"
              "X = torch.randn(6, 5, 4, dtype=torch.float64)\n"
              "torch.jit.script(M()).save('m.pt'); torch.save(X, 'in.pt'); torch.save(M()(X), 'want.pt')\n")
    (work / "make_script.py").write_text(script)  # TorchScript compiles from source files only
    _run([py, "make_script.py"], env=env, cwd=work)
    _run(["unisub-run-script", "m.pt", "in.pt", "out.pt"], env=env, cwd=work)
    torch.testing.assert_close(torch.load(work / "out.pt"), torch.load(work / "want.pt"), rtol=0, atol=0)

    run = _run(["unisub-run-script", "missing.pt", "in.pt", "out.pt"], env=env, cwd=work, check=False)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("unisub-run-script: "), run.stderr
    # an error inside the script's op: the op's message, still one line
    torch.save(torch.randn(6, 5, dtype=torch.float64), work / "bad.pt")  # a 2-D stack: mode 2 does not exist
    run = _run(["unisub-run-script", "m.pt", "bad.pt", "out.pt"], env=env, cwd=work, check=False)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and "mode_gram" in lines[0], run.stderr


@pytest.mark.slow
def test_analyze_tool(installed):
    assert (installed.prefix / "bin" / "unisub-analyze").is_file(), "the install has no unisub-analyze"
    env, work, py = installed.env, installed.work, installed.py
    (work / "zoo").mkdir()
    _run([py, "-c", "import torch, unisub.io as io\n"
                    "for i in range(4): io.save_file({'w': torch.randn(8, 6)}, f'zoo/m{i}.safetensors')"],
         env=env, cwd=work)
    _run(["unisub-analyze", "zoo", "--out", "analysis", "--energy", "0.9"], env=env, cwd=work)
    report = json.loads((work / "analysis" / "report.json").read_text())
    assert "w" in report["slots"]


def _cmake_consumer(installed, example: str, *extra):
    """Configures and builds examples/<example> against the installed package, as a user would:
    CMAKE_PREFIX_PATH is unisub.cmake_prefix_path and nothing else (torch is found beside it)."""
    build = installed.work / f"build-{example}"
    configure = ["cmake", "-S", ROOT / "examples" / example, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={installed.prefix}", *extra]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if shutil.which("ccache"):
        configure.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    run = _run(configure, env=installed.env, cwd=installed.work)
    assert "CMake Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    _run(["cmake", "--build", build], env=installed.env, cwd=installed.work)
    return build


@pytest.mark.slow
def test_cpp_example_against_the_wheel(installed):
    build = _cmake_consumer(installed, "cpp")
    run = _run([build / "unisub_example"], env=installed.env, cwd=installed.work)
    assert "unisub example: ok" in run.stdout
    # linked against the torch of the venv (found through the package), not the build's
    ldd = _run(["ldd", build / "unisub_example"], env=installed.env).stdout
    c10 = next(line for line in ldd.splitlines() if "libc10.so" in line)
    assert str(installed.venv) in c10, c10


@pytest.mark.slow
def test_aoti_example_against_the_wheel(installed):
    out = installed.work / "aoti"
    _run([installed.py, ROOT / "examples" / "aoti" / "export.py", "--out", out], env=installed.env, cwd=installed.work)
    # --as-needed whatever the toolchain's default: the program calls no unisub:: symbol
    build = _cmake_consumer(installed, "aoti", "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed")
    run = _run([build / "unisub_aoti_example", out / "model.pt2", out / "data.pt"], env=installed.env,
               cwd=installed.work)
    assert "unisub AOTInductor example: ok" in run.stdout, run.stdout
