"""One error type for bad input: the CLI turns it into a one-line message and exit code 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def command_name(module: str) -> str:
    """How the user called the command of ``forgetting.<module>``: ``forgetting-<module>`` from the console
    script, else ``python -m forgetting.<module>``; what its messages name it."""
    script = f"forgetting-{module}"
    return script if Path(sys.argv[0] if sys.argv else "").name == script else f"python -m forgetting.{module}"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty): what a
    one-line error quotes of a library's multi-line one."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class BadInput(ValueError):
    """Input that the user can fix: a bad option value, a missing or malformed file.

    The message is one line that names the bad value and says what is allowed.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RunFailed(RuntimeError):
    """A run that started but could not finish (a NaN loss, for example); its results are kept.

    ``where`` says where it stopped (task, epoch, step) for the manifest.
    """

    def __init__(self, message: str, **where):
        super().__init__(message)
        self.where = where


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input on one line (no usage block) and exits with code 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())}\n")


class WriteFailed(RunFailed):
    """A results file could not be written (a full disk, a lost mount): the run stops at once.

    Every file is written whole and renamed into place, so what is on disk stays a consistent
    earlier version; ``path`` is the file that could not be written.
    """

    def __init__(self, path, error: OSError, **where):
        at = ", ".join(f"{k} {v}" for k, v in where.items())
        super().__init__(f"cannot write {path}: {error.strerror or error}" + (f" (at {at})" if at else ""), **where)
        self.path = str(path)
