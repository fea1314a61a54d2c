"""The one error type of the readers, so callers (and the CLI) can tell bad input from bugs."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or analysed. The message names the file and, where one is
    involved, the slot, with the expected and the actual value."""

    def __init__(self, path, message, slot=None):
        where = f"{path}" if slot is None else f"{path}: slot '{slot}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.slot = slot
