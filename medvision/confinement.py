"""The one check every data file passes before it is listed or opened: its real path is in an allowed folder.

A :class:`Confinement` is a set of allowed folders (real paths). :meth:`Confinement.check` follows every
symbolic link in a path (``os.path.realpath``) and refuses the path unless where it really leads lies
under one of those folders, so a link planted in a shared data folder cannot make MedVision read
``/etc/passwd`` or another user's files.

Which folders are allowed:

- The app: a path typed into the sidebar must lie under a data root (``MEDVISION_DATA_ROOTS``, see
  ``medvision.app_support.workspace.confine``). The folder it names then becomes the root of its own
  listing, preparing and reading, as for the CLI below.
- Readers, the dataset walk and the store writer take ``roots``; with none given, *the folder given* is
  the root (for a file: the folder holding it, and for a Decathlon image in ``images*/`` the task folder
  above, so its ``labels*/`` sibling is reachable). The CLI passes none: it reads whatever path its user
  types, but a symbolic link inside that folder leading out of it is refused, never followed silently.

Messages name a path as it was typed or listed, never where a link leads (that would disclose server
paths). What is not covered: a file swapped for a link in the microseconds between the check and the open;
the check runs right before every open to keep that window small.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medvision.errors import PathNotAllowedError

__all__ = ["Confinement", "real_path"]


def real_path(path: str | Path) -> Path | None:
    """``path`` with every symbolic link and ``..`` resolved, or None when that cannot be worked out.

    Never raises: a symlink loop, a name too long for the file system, a NUL byte or an unknown
    ``~user`` all make the path one that cannot be allowed.
    """
    try:
        text = os.fspath(path)
        if "\x00" in text:
            return None
        return Path(os.path.realpath(os.path.expanduser(text)))
    except (OSError, RuntimeError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Confinement:
    """Allowed folders (real, absolute paths); build with :meth:`of` or :meth:`around`."""

    roots: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("a confinement needs at least one allowed folder")
        if not all(root.is_absolute() for root in self.roots):
            raise ValueError(f"allowed folders must be absolute real paths, got {self.roots}")

    @classmethod
    def of(cls, roots: Iterable[str | Path]) -> Confinement:
        """The folders ``roots``, resolved; one that cannot be resolved allows nothing and is dropped."""
        resolved = tuple(dict.fromkeys(p for p in (real_path(r) for r in roots) if p is not None))
        if not resolved:
            raise PathNotAllowedError("", "none of the allowed data folders can be resolved")
        return cls(resolved)

    @classmethod
    def around(cls, given: str | Path) -> Confinement:
        """The default root for a path given by its user: that folder, or the folder of a file given."""
        real = real_path(given)
        if real is None:
            raise PathNotAllowedError(given, "cannot be resolved (a symbolic link loop or a bad name)")
        if real.is_dir():
            return cls((real,))
        folder = real.parent
        # A Decathlon image (``Task01/imagesTr/x.nii.gz``) takes its label from the sibling ``labelsTr/``.
        return cls((folder.parent if folder.name.startswith("images") else folder,))

    def allows(self, path: str | Path) -> bool:
        """True when ``path`` really leads to a place under one of the allowed folders."""
        real = real_path(path)
        return real is not None and any(real == root or real.is_relative_to(root) for root in self.roots)

    def check(self, path: str | Path) -> Path:
        """``path`` itself (as given) when it is allowed; PathNotAllowedError naming it otherwise."""
        if not self.allows(path):
            raise PathNotAllowedError(path, f"leads outside {self.describe()} (a symbolic link?); not read")
        return Path(path)

    def describe(self) -> str:
        if len(self.roots) == 1:
            return f"the data folder {self.roots[0]}"
        return "the data folders " + ", ".join(str(r) for r in self.roots)
