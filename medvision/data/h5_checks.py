"""Reach HDF5 objects only when they hold their own bytes: no external storage, virtual data or links.

An HDF5 file can make a dataset read its bytes from another file (external storage, ``dataset.external``),
assemble a dataset from other files (a virtual dataset), or name an object in another file (an external
link) or elsewhere in itself (a soft link). h5py follows all of these silently, so a slice file or a store
planted in a shared data folder could make the app read any file the server can. Every object MedVision
reads from an HDF5 file it did not just write is reached one name at a time through :func:`member`, which
refuses all of them before a byte of data is read.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from medvision.errors import InputDataError

__all__ = ["member", "member_dataset", "member_group"]

_OBJECT_OUTSIDE = "MedVision reads only data stored in the file itself"


def _where(group: h5py.Group, name: str) -> str:
    return f"{group.name.rstrip('/')}/{name}"


def member(group: h5py.Group, name: str, path: str | Path) -> h5py.Dataset | h5py.Group | None:
    """The object ``name`` directly in ``group`` (no ``/`` in it), None when there is none.

    Raises InputDataError naming ``path`` (the file) and the object for a soft, external or user-defined
    link, or a dataset with external storage or virtual (VDS) mappings.
    """
    where = _where(group, name)
    if not name or "/" in name or name in (".", ".."):
        raise InputDataError(path, f"object name {name!r} in {group.name} is not one plain name")
    try:
        link = group.get(name, getlink=True)
    except TypeError as exc:  # h5py knows no class for user-defined link types
        raise InputDataError(path, f"{where} is a link of an unknown kind; {_OBJECT_OUTSIDE}") from exc
    if link is None:
        return None
    if isinstance(link, h5py.ExternalLink):
        raise InputDataError(path, f"{where} is an external link to another file; {_OBJECT_OUTSIDE}")
    if not isinstance(link, h5py.HardLink):
        raise InputDataError(path, f"{where} is a soft link; {_OBJECT_OUTSIDE}")
    found = group[name]
    if isinstance(found, h5py.Dataset):
        if found.is_virtual:
            raise InputDataError(path, f"dataset {where} is a virtual dataset (VDS); {_OBJECT_OUTSIDE}")
        if found.external:
            raise InputDataError(
                path, f"dataset {where} keeps its bytes in external files; {_OBJECT_OUTSIDE}"
            )
    return found


def member_dataset(group: h5py.Group, name: str, path: str | Path) -> h5py.Dataset | None:
    """Like :func:`member`, and the object must be a dataset (None when absent)."""
    found = member(group, name, path)
    if found is not None and not isinstance(found, h5py.Dataset):
        raise InputDataError(path, f"{_where(group, name)} is not a dataset")
    return found


def member_group(group: h5py.Group, name: str, path: str | Path) -> h5py.Group | None:
    """Like :func:`member`, and the object must be a group (None when absent)."""
    found = member(group, name, path)
    if found is not None and not isinstance(found, h5py.Group):
        raise InputDataError(path, f"{_where(group, name)} is not a group")
    return found
