"""The one exception type that means "the user gave us something we cannot use"."""


class UserError(Exception):
    """A problem the user can fix. The CLI prints its message as one line and exits with 2.

    The message names the problem and the fix, e.g.
    ``"checksum mismatch for /data/train-images-idx3-ubyte.gz: delete it and run again"``.
    """


class DataError(UserError):
    """Missing, damaged or unexpected data files."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint; `code` is the exit status
    (128 + the signal number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
