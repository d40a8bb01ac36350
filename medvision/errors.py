"""The error types MedVision raises for things a user can fix (bad files, busy run folders).

Everything a reader, the store, a checkpoint loader or the trainer refuses is reported with one of
these, so the CLI and the app can show a single clear line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedVisionError(Exception):
    """Base class of every error MedVision raises on purpose."""


class InputDataError(MedVisionError, ValueError):
    """A file or folder cannot be used as input; the message names it and says why."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:
        # Rebuilt from (path, problem), so the error survives the trip back from a worker process.
        return (type(self), (self.path, self.problem))


class PathNotAllowedError(InputDataError):
    """A path lies outside the folders MedVision may read, or cannot be checked; the message names the path
    as it was typed or listed, never where a symbolic link in it leads."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(path, problem)
        if not self.path:  # nothing was typed: the problem alone is the message
            self.args = (problem,)

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointError(MedVisionError):
    """A checkpoint is missing, corrupt, or not a MedVision checkpoint."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.problem))


class RunBusyError(MedVisionError):
    """A training run directory is already used by a live training process."""
