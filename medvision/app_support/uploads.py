"""Turn files uploaded in the browser into a `Case`, with clear errors and nothing left behind.

Accepted: one to four modality NIfTI files of one case (+ optional ``seg``), a ``.zip`` of one case folder,
or one 4-D NIfTI (Decathlon layout, channels FLAIR, T1w, T1gd, T2w). Uploaded bytes are written to a
fresh temporary folder under the workspace (never elsewhere; a zip is extracted inside that folder too),
read by ``medvision.data.readers`` confined to that folder, and the folder is removed again; every
refusal is a MedVisionError whose message names the file.

Sizes come first: the total is checked from the sizes the browser reported before a byte is copied, and
the copy stops as soon as a file turns out longer than it said. The page hands over Streamlit's uploaded
files through :func:`streamed_upload`, which reads them in chunks instead of copying each whole file
(``UploadedFile(name, data)``, with the bytes already in hand, is still accepted).
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from medvision.data.case import Case
from medvision.data.nifti_checks import DEFAULT_CASE_VOXEL_BUDGET
from medvision.errors import InputDataError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MODALITY_KEYS = ("flair", "t1", "t1ce", "t2", "seg")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_CHUNK = 1 << 20


class Upload(Protocol):
    """One uploaded file as this module needs it: its browser name, its size, and a stream of its bytes."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO: ...


@dataclass(frozen=True)
class UploadedFile:
    """An upload whose bytes are already in hand: the browser's file name and its bytes."""

    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


@dataclass(frozen=True)
class StreamedUpload:
    """An upload known by name and reported size; ``reader`` gives a stream of its bytes, called only
    after the size checks passed (the stream is rewound and read in chunks, never closed here)."""

    name: str
    size: int
    reader: Callable[[], BinaryIO]

    def open(self) -> BinaryIO:
        stream = self.reader()
        stream.seek(0)
        return stream


def streamed_upload(file: Any) -> StreamedUpload:
    """A file from ``st.file_uploader`` (anything with ``.name``, ``.size``, ``.seek`` and ``.read``) as an
    upload whose size is checked before its bytes are copied."""
    return StreamedUpload(str(file.name), int(file.size), lambda: file)


def safe_name(name: str) -> str:
    """Browser file name -> a plain file name (no folders, no odd characters) to write to disk."""
    base = Path(str(name).replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).lstrip(".")
    return cleaned or "upload"


def nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def modality_of(name: str) -> str | None:
    """Which modality a NIfTI file name denotes (``BraTS2021_00006_t1ce.nii.gz`` -> ``t1ce``), else None.

    Uses the readers' own naming table (BraTS 2018-2021 ``_flair`` ... and BraTS 2023 ``-t2f`` ...).
    """
    from medvision.data.readers import classify_name

    stem = nifti_stem(name)
    if stem is None:
        return None
    found = classify_name(stem)
    return found[1] if found else None


def classify(files: Sequence[Upload]) -> str:
    """'zip', 'nifti4d' or 'modalities' for a set of uploads; InputDataError when it is none of them."""
    if not files:
        raise InputDataError("upload", "no files were uploaded")
    names = [f.name for f in files]
    zips = [n for n in names if n.lower().endswith(".zip")]
    others = [n for n in names if not n.lower().endswith(".zip") and nifti_stem(n) is None]
    if others:
        raise InputDataError(others[0], "unsupported file type (expected .nii, .nii.gz or .zip)")
    if zips:
        if len(files) > 1:
            raise InputDataError(zips[0], "upload a zip on its own (one zip of one case folder)")
        return "zip"
    if len(files) == 1 and modality_of(names[0]) in (None, "seg"):
        return "nifti4d"
    found: dict[str, str] = {}
    for name in names:
        modality = modality_of(name)
        if modality is None:
            raise InputDataError(
                name,
                "cannot tell the modality from the file name (expected it to end in _flair, _t1, _t1ce, "
                "_t2 or _seg, or the BraTS 2023 -t2f, -t1n, -t1c, -t2w, -seg)",
            )
        if modality in found:
            raise InputDataError(name, f"second {modality} file (first was {found[modality]})")
        found[modality] = name
    return "modalities"  # at least one image: a lone seg file was taken as a 4-D NIfTI above


def case_from_uploads(
    files: Sequence[Upload],
    upload_root: Path,
    *,
    max_bytes: int,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
) -> Case:
    """Read uploaded files as one case: checked, written under ``upload_root``, read, then removed.

    ``files``: :class:`UploadedFile` or :func:`streamed_upload` objects. The total of their reported
    sizes must stay within ``max_bytes`` (checked before anything is copied), and the case within
    ``max_case_voxels`` decoded image voxels (checked from the NIfTI headers before voxels are read).
    """
    kind = classify(files)
    sizes = checked_sizes(files, max_bytes)
    upload_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=upload_root))
    try:
        paths: dict[str, Path] = {}
        for f, size in zip(files, sizes, strict=True):
            path = folder / safe_name(f.name)
            copy_at_most(f, size, path)
            paths[f.name] = path
        try:
            return _read(kind, paths, folder, max_case_voxels)
        except InputDataError as error:
            # Name the files as the user knows them, never the temporary copies on the server.
            raise InputDataError(
                _shown(error.path, paths, folder), _shown(error.problem, paths, folder)
            ) from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def checked_sizes(files: Sequence[Upload], max_bytes: int) -> list[int]:
    """The reported sizes of ``files``, once their total is within ``max_bytes`` and none is empty;
    judged before a byte is copied (InputDataError naming the file otherwise)."""
    sizes = [int(f.size) for f in files]
    total = sum(sizes)
    if total > max_bytes:
        raise InputDataError(
            files[0].name, f"upload is {total / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB limit"
        )
    for f, size in zip(files, sizes, strict=True):
        if size <= 0:
            raise InputDataError(f.name, "the file is empty")
    return sizes


def copy_at_most(upload: Upload, size: int, path: Path) -> None:
    """Copy ``upload`` to ``path`` in chunks, refusing it as soon as it holds more than its reported size."""
    written = 0
    with open(path, "wb") as out:
        stream = upload.open()
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            if written > size:
                raise InputDataError(upload.name, f"holds more than the {size:,} bytes reported for it")
            out.write(chunk)
    if written < size:
        raise InputDataError(upload.name, f"holds {written:,} bytes, not the {size:,} reported for it")


def _read(kind: str, paths: dict[str, Path], folder: Path, max_case_voxels: int) -> Case:
    """Read the copies in ``folder``; only files really in it are opened, and a zip is extracted in it."""
    from medvision.data import readers  # lazy: keeps this module importable while readers is loading

    roots = (folder,)
    if kind == "zip":
        (path,) = paths.values()
        return readers.read_zip(
            path, roots=roots, scratch_dir=folder, max_case_voxels=max_case_voxels, allow_missing=True
        )
    if kind == "nifti4d":
        (path,) = paths.values()
        return readers.load_case(path, roots=roots, max_case_voxels=max_case_voxels)
    by_modality = {modality_of(name): path for name, path in paths.items()}
    return readers.read_nifti_files(
        by_modality,  # type: ignore[arg-type]
        roots=roots,
        max_case_voxels=max_case_voxels,
        allow_missing=True,  # any subset: the model says whether it can use it
    )


def _shown(text: str, paths: dict[str, Path], folder: Path) -> str:
    for original, path in paths.items():
        text = text.replace(str(path), original)
    return text.replace(str(folder), "upload")
