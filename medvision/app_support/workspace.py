"""Where the app reads and writes: the workspace folder and the data roots users may point at.

The app writes only under its workspace (``MEDVISION_HOME``, default ``~/.medvision``)::

    data/      the synthetic demo cohort and prepared stores
    runs/      training runs started from the app
    cache/     prepared stores of server folders, EDA caches
    uploads/   uploaded scans (one temporary folder per upload, removed after reading)
    models/    extra checkpoints a user drops in (``*.safetensors`` + ``*.json``)

Server paths a user types into the sidebar must lie under one of the data roots
(``MEDVISION_DATA_ROOTS``, separated by ``os.pathsep``; default: the workspace and ``../shared/data``
next to the repository when it exists), so the app cannot be used to browse the server's disk.
The environment is read once, by the entry point, through :func:`settings_from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medvision.errors import MedVisionError

REPO_ROOT = Path(__file__).resolve().parents[2]


class PathNotAllowedError(MedVisionError):
    """A path typed by a user lies outside the configured data roots."""


@dataclass(frozen=True)
class Workspace:
    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def uploads(self) -> Path:
        return self.home / "uploads"

    @property
    def models(self) -> Path:
        return self.home / "models"

    def ensure(self) -> Workspace:
        for folder in (self.data, self.runs, self.cache, self.uploads, self.models):
            folder.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class AppSettings:
    """Everything the app reads from its environment, read once at start."""

    workspace: Workspace
    data_roots: tuple[Path, ...]
    repo_root: Path = REPO_ROOT
    demo_cases: int = 8
    demo_size: tuple[int, int, int] = (96, 128, 128)
    max_upload_mb: int = 1000

    def __post_init__(self) -> None:
        if self.demo_cases < 2:
            raise ValueError("the demo cohort needs at least 2 cases")
        if any(s < 16 for s in self.demo_size):
            raise ValueError(f"demo volume size too small: {self.demo_size}")
        if self.max_upload_mb <= 0:
            raise ValueError("max_upload_mb must be positive")

    @property
    def demo_checkpoint(self) -> Path:
        return self.repo_root / "checkpoints" / "demo.safetensors"


def default_data_roots(workspace: Workspace, repo_root: Path = REPO_ROOT) -> tuple[Path, ...]:
    roots = [workspace.home]
    shared = repo_root.parent / "shared" / "data"
    if shared.is_dir():
        roots.append(shared)
    return tuple(roots)


def settings_from_env(env: Mapping[str, str] | None = None, repo_root: Path = REPO_ROOT) -> AppSettings:
    """Build the app settings from environment variables (the one place the app reads them).

    MEDVISION_HOME: workspace folder. MEDVISION_DATA_ROOTS: allowed server data folders.
    MEDVISION_DEMO_CASES and MEDVISION_DEMO_SIZE ("D,H,W"): size of the first-start synthetic cohort.
    """
    env = os.environ if env is None else env
    home = Path(env.get("MEDVISION_HOME") or "~/.medvision").expanduser().resolve()
    workspace = Workspace(home)
    roots_text = env.get("MEDVISION_DATA_ROOTS", "").strip()
    if roots_text:
        roots = tuple(Path(p).expanduser().resolve() for p in roots_text.split(os.pathsep) if p.strip())
    else:
        roots = default_data_roots(workspace, repo_root)
    kwargs: dict = {}
    if env.get("MEDVISION_DEMO_CASES"):
        kwargs["demo_cases"] = int(env["MEDVISION_DEMO_CASES"])
    if env.get("MEDVISION_DEMO_SIZE"):
        parts = tuple(int(p) for p in env["MEDVISION_DEMO_SIZE"].replace("x", ",").split(","))
        if len(parts) != 3:
            raise ValueError(f"MEDVISION_DEMO_SIZE must be D,H,W, got {env['MEDVISION_DEMO_SIZE']!r}")
        kwargs["demo_size"] = parts
    return AppSettings(workspace=workspace, data_roots=roots, repo_root=repo_root, **kwargs)


def confine(path_text: str, roots: tuple[Path, ...]) -> Path:
    """Resolve a user-typed path and make sure it exists and lies under one of ``roots``.

    Symlinks and ``..`` are resolved first, so neither can be used to step outside a root.
    """
    text = (path_text or "").strip()
    if not text:
        raise PathNotAllowedError("no path given")
    if "\x00" in text:
        raise PathNotAllowedError("the path contains a NUL character")
    path = Path(text).expanduser()
    if not path.is_absolute() and roots:
        # A relative path is read relative to the first data root, not the server's working directory.
        path = roots[0] / path
    resolved = path.resolve()
    allowed = ", ".join(str(r) for r in roots) or "(none configured)"
    if not any(resolved == r.resolve() or resolved.is_relative_to(r.resolve()) for r in roots):
        raise PathNotAllowedError(
            f"{resolved} is outside the allowed data folders ({allowed}). "
            "Set MEDVISION_DATA_ROOTS to allow another folder."
        )
    if not resolved.exists():
        raise PathNotAllowedError(f"{resolved} does not exist")
    return resolved
