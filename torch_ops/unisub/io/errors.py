"""The one error type of the readers, so callers (and the CLI) can tell bad input from bugs."""
import re


class CheckpointError(ValueError):
    """A checkpoint cannot be read or analysed. The message names the file and, where one is
    involved, the slot, with the expected and the actual value."""

    def __init__(self, path, message, slot=None):
        where = f"{path}" if slot is None else f"{path}: slot '{slot}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.slot = slot


# libunisub's reader (csrc/analysis/reader_bindings.cpp) raises ValueError with its message and,
# on a line of its own, the path, slot and message hex-encoded.
_READER_ERROR = re.compile("\n\x1e([0-9a-f]*)\x1f([0-9a-f]*)\x1f([0-9a-f]*)")


def _unhex(s):
    return bytes.fromhex(s).decode("utf-8", "surrogateescape")


def reader_call(fn, *args):
    """``fn(*args)`` for a method of torch.classes.unisub.*: the reader's refusals come out as
    CheckpointError (same text, path and slot as the C++ tool prints)."""
    try:
        return fn(*args)
    except ValueError as e:
        m = _READER_ERROR.search(str(e))
        if m is None:
            raise
        path, slot, message = map(_unhex, m.groups())
        raise CheckpointError(path, message, slot=slot or None) from None


class WriteError(OSError):
    """An output file could not be written (a full disk, no permission): the message names the
    file and the system's reason. Nothing is left under the file's name."""


_WRITER_ERROR = re.compile("\n\x1d([0-9a-f]*)")


def writer_call(fn, *args):
    """``fn(*args)`` for libunisub's writers: their failures come out as WriteError."""
    try:
        return fn(*args)
    except RuntimeError as e:
        m = _WRITER_ERROR.search(str(e))
        if m is None:
            raise
        raise WriteError(_unhex(m.group(1))) from None
