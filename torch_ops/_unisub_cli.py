"""The console commands of the unisub wheel: ``unisub``, ``unisub-analyze``, ``unisub-run-script``.

A module outside the ``unisub`` package on purpose: importing anything inside the package loads
torch and libunisub (seconds), which ``unisub --version`` and the C++ tools do not need. Everything
else of ``unisub`` is ``unisub.cli``.
"""
import importlib.util
import os
import sys
from pathlib import Path


def _package_dir() -> Path:
    spec = importlib.util.find_spec("unisub")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("unisub: the unisub package is not importable from this Python")
    return Path(list(spec.submodule_search_locations)[0])


def _version() -> str:
    path = _package_dir() / "_version.py"
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return scope["__version__"]


def unisub() -> int:
    if sys.argv[1:] in (["--version"], ["-V"]):
        print(f"unisub {_version()}")
        return 0
    from unisub.cli import main

    return main()


def _run_tool(name: str) -> None:
    """Replaces this process with the C++ tool installed in the package (unisub/bin)."""
    package = _package_dir()
    tool = package / "bin" / name
    if not tool.is_file():
        raise SystemExit(f"{name}: not part of this installation of unisub ({tool} is missing: "
                         "reinstall unisub)")
    # The tools' RPATH finds torch in the same site-packages; this covers a torch installed elsewhere.
    paths = [str(package / "lib")]
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is not None and torch_spec.submodule_search_locations:
        paths.append(str(Path(list(torch_spec.submodule_search_locations)[0]) / "lib"))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    # torch's C++ errors carry a backtrace when this is on; the tools print one line instead.
    env.setdefault("TORCH_SHOW_CPP_STACKTRACES", "0")
    os.execve(tool, [name, *sys.argv[1:]], env)


def unisub_analyze() -> None:
    _run_tool("unisub-analyze")


def unisub_run_script() -> None:
    _run_tool("unisub-run-script")
