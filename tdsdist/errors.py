"""User-facing errors.

A `TdsError` is a problem with the user's input or environment, not a bug: the CLI prints its
message on one line (no traceback) and exits with code 2. Anything else is a bug and keeps its
traceback.
"""


class TdsError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
