"""Write-then-rename, so a crash or a full disk never leaves a half-written output behind."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yields a temporary path in the destination's folder (same filesystem, so the final
    ``os.replace`` is atomic); the destination appears only if the block finishes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets what any new file gets
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path, data: bytes):
    """Through libunisub's writer (the one unisub-analyze uses): a full disk or a missing
    permission is a WriteError naming the file, and nothing is left under its name."""
    from .. import _library  # noqa: F401
    import torch

    from .errors import writer_call

    writer_call(torch.ops.unisub.write_file_atomically, str(path), data.decode("utf-8"))


def write_json(path, obj):
    write_bytes(path, (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())


def ensure_writable_dir(path):
    """Create ``path`` and prove we can write there before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".unisub-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"output folder '{path}' is not writable: {e.strerror or e}") from e
    return path
