"""Atomic file writes: a reader never sees half a file, and a failed write never replaces a good one.

Everything MedVision saves (predictions, reports, run metadata, sample images, splits) goes through a
temporary file in the destination folder that is moved onto the final name only once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# mkstemp creates private (0600) files; a finished file gets the permissions a plain open() would give.
_FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds, else delete it.

    The temporary name ends with the final name's suffix (``.nii.gz``, ``.png``...), so writers that pick
    the format from the file name behave as they would for ``path`` itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_json_atomic(path: str | Path, data: Any, **dumps_options: Any) -> Path:
    """Write ``data`` as JSON (plus a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, **dumps_options) + "\n")
