"""Where the app reads and writes: the workspace folder and the data roots users may point at.

The app writes only under its workspace (``MEDVISION_HOME``, default ``~/.medvision``)::

    data/      the synthetic demo cohort and prepared stores
    runs/      training runs started from the app
    cache/     prepared stores of server folders, EDA caches
    uploads/   uploaded scans (one temporary folder per upload, removed after reading)
    models/    extra checkpoints a user drops in (``*.safetensors`` + ``*.json``)
    tmp/       scratch folders (an uploaded or listed .zip extracted while it is read, then removed)

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

from medvision.confinement import Confinement, real_path
from medvision.errors import PathNotAllowedError

__all__ = [
    "AppSettings",
    "PathNotAllowedError",
    "Workspace",
    "confine",
    "default_data_roots",
    "settings_from_env",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Characters of a refused path quoted back: a 300-character name would flood the sidebar.
MAX_SHOWN_PATH = 120


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

    @property
    def scratch(self) -> Path:
        return self.home / "tmp"

    def ensure(self) -> Workspace:
        for folder in (self.data, self.runs, self.cache, self.uploads, self.models, self.scratch):
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
    def default_checkpoint(self) -> Path:
        """The shipped default model: real cases, any subset of the modalities."""
        return self.repo_root / "checkpoints" / "default.safetensors"

    @property
    def phantom_checkpoint(self) -> Path:
        """The shipped phantom-only model (all four modalities), kept for comparison."""
        return self.repo_root / "checkpoints" / "demo.safetensors"

    @property
    def shipped_checkpoints(self) -> tuple[Path, Path]:
        return (self.default_checkpoint, self.phantom_checkpoint)


def data_folders(settings: AppSettings, limit: int = 50) -> list[Path]:
    """The folders directly inside the allowed data roots other than the workspace (e.g. the real BraTS
    cases in ../shared/data), for the sidebar's quick pick; hidden folders and links are left out."""
    found: list[Path] = []
    for root in settings.data_roots:
        if root == settings.workspace.home or not root.is_dir():
            continue
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        found += [p for p in entries if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
    return found[:limit]


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
    """Resolve a user-typed path and make sure it exists and really lies under one of ``roots``.

    Symlinks and ``..`` are resolved first (:class:`medvision.confinement.Confinement`), so neither can
    step outside a root. Every refusal is a PathNotAllowedError that quotes the path as typed (shortened
    when long), never where a link leads: ``/proc/self/exe`` must not reveal the server's executable.
    Returns the real path.
    """
    text = (path_text or "").strip()
    if not text:
        raise PathNotAllowedError("", "no path given")
    shown = text if len(text) <= MAX_SHOWN_PATH else text[: MAX_SHOWN_PATH - 1] + "…"
    if "\x00" in text:
        raise PathNotAllowedError(shown.replace("\x00", "\\0"), "the path contains a NUL character")
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):  # ~nosuchuser: left as it is, it would be read as a relative name
            raise PathNotAllowedError(shown, "unknown user in a ~user path")
        text = expanded
    if not roots:
        raise PathNotAllowedError(shown, "no data folders are allowed. Set MEDVISION_DATA_ROOTS.")
    path = Path(text)
    if not path.is_absolute():
        # A relative path is read relative to the first data root, not the server's working directory.
        path = roots[0] / path
    allowed = Confinement.of(roots)
    real = real_path(path)
    if real is None or not allowed.allows(real):
        folders = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(
            shown,
            f"is outside the allowed data folders ({folders}). "
            "Set MEDVISION_DATA_ROOTS to allow another folder.",
        )
    try:
        exists = real.exists()
    except OSError:
        exists = False
    if not exists:
        raise PathNotAllowedError(shown, "does not exist")
    return real
