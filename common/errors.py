"""The project's exceptions: the bottom of `common/`, importing nothing of ours.

A script's `main` runs under `common.cli.run_cli`, which turns these into one
line on the terminal (exit status 1, or 130 for an interruption) instead of a
traceback: the message itself must say what is wrong and what to do.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a flag, a file, a folder): say which and what to do."""


class DatasetError(InputError):
    """A dataset folder, split or file that cannot be read as the flags describe."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training; the message says what is saved and how to resume."""


class TrainingDiverged(InputError):
    """The training loss became NaN or infinite: the settings need changing."""


class StopRequested(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (`common.stops`); `cause` names it for the message."""

    def __init__(self, cause: str = "Ctrl-C"):
        super().__init__(cause)
        self.cause = cause


class WorkerLost(Exception):
    """A worker of a multi-worker run died: the message names it and how to resume."""
