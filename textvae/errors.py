"""The project's exceptions. Imported by every module; imports nothing of textvae.

A :class:`TextVAEError` is a user-facing fault (a bad file, key, value or
directory, or a run that cannot go on); the command line prints it as one line
``error: ...`` and exits with code 2, without a traceback.
"""

from __future__ import annotations

from contextlib import contextmanager


class TextVAEError(Exception):
    """A user-facing error: bad input, bad key, bad file. Printed as one line, exit code 2."""


class TrainingInterrupted(TextVAEError):
    """Training stopped on SIGINT after writing a checkpoint; the message says how to resume (exit code 130)."""

    exit_code = 130


class TrainingDiverged(TextVAEError):
    """Training stopped after ``train.max_bad_steps`` non-finite steps; the run directory holds ``diverged.json``
    (a study records the run as diverged instead of stopping)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


@contextmanager
def reading(path, what: str = "damaged or unreadable", detail: bool = True):
    """Turn any failure while reading ``path`` into one TextVAEError line naming it.

    A file that is truncated, empty or garbage makes its reader (json, yaml, safetensors,
    torch.load, tokenizers, ...) raise whatever that library raises; the user sees
    ``<path>: damaged or unreadable (<reason>)`` (the reason is the exception's type alone
    without ``detail``, for readers whose messages mislead). A TextVAEError from inside (a bad
    value in a config file) gets the path put in front.
    """
    try:
        yield
    except TextVAEError as err:
        if str(path) in str(err):
            raise
        raise type(err)(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - every reader's own exception types
        reason = f"{type(err).__name__}: {first_line(err)}" if detail else type(err).__name__
        raise TextVAEError(f"{path}: {what} ({reason})") from None
