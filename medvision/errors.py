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


class CheckpointError(MedVisionError):
    """A checkpoint is missing, corrupt, or not a MedVision checkpoint."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RunBusyError(MedVisionError):
    """A training run directory is already used by a live training process."""
