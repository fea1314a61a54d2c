"""The demo's report folder: the demo replaces only what it wrote there itself.

A rerun must clear the previous run's subfolders (stale adapters and analyses must not pass for
this run's), but
``--out`` may name a folder of the user's: so a folder the demo uses carries a marker file, and a
non-empty folder without one is refused before anything in it is touched."""
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

MARKER = ".unisub-demo"


class DemoError(ValueError):
    """A demo argument that cannot be used; the message names the argument (``--out`` /
    ``--cache``), so the command line can print it as a usage error."""


def _check_folder(path: Path, flag: str) -> None:
    """``path`` is a folder or can become one: neither it nor its nearest existing ancestor is a file."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: '{probe}' is a file"
        raise DemoError(f"{flag} '{path}' {what}, not a folder")


def _demos(out: Path) -> bool:
    """The folder is the demo's: it carries the marker, or (written before the marker existed) a
    finished demo's report.json."""
    if (out / MARKER).is_file():
        return True
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"zoo", "verdicts", "seconds"} <= set(report)


def prepare_out(out, cache: Optional[str], owned: Sequence[str]) -> Path:
    """Check ``out`` and ``cache`` before any work, mark ``out`` as the demo's, and remove the
    subfolders ``owned`` that a previous run of the demo wrote there."""
    out = Path(out)
    _check_folder(out, "--out")
    if cache is not None:
        _check_folder(Path(cache), "--cache")
    if out.is_dir() and not _demos(out) and any(out.iterdir()):
        raise DemoError(f"--out '{out}' is a non-empty folder that unisub demo did not create (no {MARKER} "
                        f"marker); the demo replaces {', '.join(f'{s}/' for s in owned)} there: give a new or "
                        f"empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by unisub demo: its subfolders are replaced by the next run\n")
    except OSError as e:
        raise DemoError(f"--out '{out}' is not writable: {e.strerror or e}") from e
    for sub in owned:  # only now: the folder is the demo's own
        shutil.rmtree(out / sub, ignore_errors=True)
    return out
