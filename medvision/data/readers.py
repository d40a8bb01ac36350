"""Readers: every supported input format -> ``Case`` (see medvision/data/case.py for the axis convention).

Formats:
- a BraTS case folder, 2018-2021 naming ``<ID>_{flair,t1,t1ce,t2,seg}.nii[.gz]`` or 2023 naming
  ``<ID>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]`` (the label file is optional; BraTS 2023 label 3 is read as ET=4);
- a Medical Segmentation Decathlon Task01 4-D NIfTI (channels FLAIR, T1w, T1gd, T2w) with its label file
  from the sibling ``labelsTr/`` (MSD labels 1 edema, 2 non-enhancing, 3 enhancing -> BraTS 2, 1, 4);
- a .zip of one case folder (an upload), extracted safely into a temporary folder;
- four separately uploaded modality files (``read_nifti_files``);
- a folder of Kaggle ``volume_<v>_slice_<s>.h5`` files (see kaggle_h5.py).

``list_case_sources`` / ``iter_cases`` walk a dataset root (BraTS case folders, a Decathlon task folder,
Kaggle slice folders, or one case; nested up to a few folders deep, see discovery.py) and return
picklable ``CaseRef``s so preparation can run in worker processes. Every refusal is an
``InputDataError`` naming the file and the problem.

Every reader takes ``roots``, the folders it may read from (:mod:`medvision.confinement`): each file is
opened only after its real path is checked against them, so a symbolic link leading elsewhere is refused
(``PathNotAllowedError``) instead of read. With no ``roots`` the folder given is the root: the CLI reads
any path its user types, but not a link inside it that leads out of it. A case is also held to
``max_case_voxels`` decoded image voxels, checked from the headers before any voxel is read
(``nifti_checks.DEFAULT_CASE_VOXEL_BUDGET``), and a zip is extracted under ``scratch_dir`` (the app passes
its workspace; the default is the system's temporary folder).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvision.confinement import Confinement
from medvision.data.case import MODALITIES, Case, nifti_to_case_axes
from medvision.data.discovery import Claim, Folder, find_cases, list_folder
from medvision.data.kaggle_h5 import (
    KAGGLE_DEFAULT_ORDER,
    KaggleH5Index,
    checked_slice_paths,
    index_kaggle_names,
    read_kaggle_volume,
    validate_channel_order,
)
from medvision.data.nifti_checks import (
    DEFAULT_CASE_VOXEL_BUDGET,
    check_case_voxels,
    check_finite,
    check_not_empty,
    check_same_grid,
    has_nifti_suffix,
    labels_to_brats,
    nifti_stem,
    open_nifti,
    read_nifti_data,
)
from medvision.data.safe_zip import (
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    safe_extract,
)
from medvision.errors import InputDataError

Roots = Sequence[str | Path] | None  # allowed folders; None = the folder given (see the module docstring)

__all__ = [
    "KAGGLE_DEFAULT_ORDER",
    "CaseRef",
    "KaggleH5Index",
    "iter_cases",
    "list_case_sources",
    "load_case",
    "read_brats_folder",
    "read_decathlon",
    "read_nifti_files",
    "read_zip",
]

logger = logging.getLogger(__name__)

LABEL_KEY = "seg"
# File-name suffix (after the last '_' or '-') -> MedVision modality, or LABEL_KEY for the segmentation.
NAME_KEYS: dict[str, str] = {
    "flair": "flair",
    "t2f": "flair",  # BraTS 2023 names: t2f, t1n, t1c, t2w
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "seg": LABEL_KEY,
    "segm": LABEL_KEY,  # BraTS 2020 Training_355 ships its label as W39_1998.09.19_Segm.nii
    "label": LABEL_KEY,
}
_NAMING_HINT = {
    "flair": "<ID>_flair or <ID>-t2f",
    "t1": "<ID>_t1 or <ID>-t1n",
    "t1ce": "<ID>_t1ce or <ID>-t1c",
    "t2": "<ID>_t2 or <ID>-t2w",
}
# BraTS labels as stored: 0/1/2/4 (2018-2021); BraTS 2023 numbers ET 3.
BRATS_LABEL_MAP: dict[int, int] = {0: 0, 1: 1, 2: 2, 3: 4, 4: 4}
# Decathlon Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
DECATHLON_LABEL_MAP: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 4}
DECATHLON_CHANNELS: tuple[str, ...] = ("FLAIR", "T1w", "T1gd", "T2w")  # = MODALITIES order
_NAME_SPLIT = re.compile(r"^(?P<prefix>.*)[_-](?P<suffix>[^_-]+)$")


# ----------------------------------------------------------------------------------------- names


def classify_name(stem: str) -> tuple[str, str] | None:
    """``"BraTS2021_00006_t1ce"`` -> ``("BraTS2021_00006", "t1ce")``; None for names that are no modality."""
    match = _NAME_SPLIT.match(stem)
    prefix, suffix = (match.group("prefix"), match.group("suffix")) if match else ("", stem)
    key = NAME_KEYS.get(suffix.lower())
    return (prefix, key) if key else None


@dataclass(frozen=True)
class _FolderScan:
    files: dict[str, list[Path]]  # key -> NIfTI files named like it
    prefixes: dict[str, str]  # key -> case id prefix from the file name
    wrong_extension: dict[str, list[Path]]  # key -> files named like it but not .nii/.nii.gz

    @property
    def is_case(self) -> bool:
        return any(key in self.files for key in MODALITIES)


def _scan_names(folder: Path, names: Sequence[str]) -> _FolderScan:
    files: dict[str, list[Path]] = {}
    prefixes: dict[str, str] = {}
    wrong: dict[str, list[Path]] = {}
    for name in sorted(names):
        if name.startswith("."):  # hidden files, macOS "._" resource forks
            continue
        stem = _case_file_stem(name)
        if stem is not None:
            found = classify_name(stem)
            if found:
                files.setdefault(found[1], []).append(folder / name)
                prefixes.setdefault(found[1], found[0])
        else:
            found = classify_name(name.split(".", 1)[0])
            if found and "." in name:
                wrong.setdefault(found[1], []).append(folder / name)
    return _FolderScan(files, prefixes, wrong)


# Seen in the wild: a .nii.gz gzipped once more. Read by content (sniff.open_any_nifti), never by name.
DOUBLE_GZIP_SUFFIX = ".nii.gz.gz"


def _case_file_stem(name: str) -> str | None:
    """The stem of a modality/label file name (``.nii``, ``.nii.gz`` or ``.nii.gz.gz``), else None."""
    if name.lower().endswith(DOUBLE_GZIP_SUFFIX):
        return name[: -len(DOUBLE_GZIP_SUFFIX)]
    return nifti_stem(name) if has_nifti_suffix(name) else None


def _scan_folder(folder: Path, within: Confinement) -> _FolderScan:
    return _scan_names(folder, list_folder(folder, 0, within).files)


def _confinement(given: str | Path, roots: Roots) -> Confinement:
    """The folders a reader of ``given`` may open files in: ``roots``, or by default around ``given``."""
    within = Confinement.around(given) if roots is None else Confinement.of(roots)
    within.check(given)
    return within


def _case_id_from_prefixes(prefixes: Mapping[str, str], fallback: str) -> str:
    found = {prefixes[m] for m in MODALITIES if m in prefixes}
    if len(found) == 1:
        (prefix,) = found
        if prefix:
            return prefix
    return fallback


# ------------------------------------------------------------------------------ NIfTI case files


def _brats_label(raw: np.ndarray, path: Path) -> np.ndarray:
    if (raw == 3).any() and (raw == 4).any():
        raise InputDataError(path, "label holds both 3 (BraTS 2023 ET) and 4 (BraTS 2018-2021 ET)")
    return labels_to_brats(raw, path, BRATS_LABEL_MAP)


def read_ahead(reads: Sequence[Callable[[], np.ndarray]], workers: int = 2) -> Iterator[np.ndarray]:
    """The reads' results in order, with up to ``workers`` of the following reads running on threads
    while the caller uses the current one. Inflating a gzip releases the GIL, so on two cores a case's
    files are read about twice as fast; at most ``workers + 1`` raw volumes are held at a time."""
    if len(reads) < 2:
        yield from (read() for read in reads)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medvision-read") as pool:
        pending = collections.deque(pool.submit(read) for read in reads[:workers])
        for following in reads[workers:]:
            current = pending.popleft().result()
            pending.append(pool.submit(following))
            yield current
        while pending:
            yield pending.popleft().result()


def _assemble_case(
    case_id: str,
    grid: tuple[tuple[int, int, int], np.ndarray, tuple[float, float, float]],
    modalities: Sequence[tuple[str, Path, Callable[[], np.ndarray]]],
    label: tuple[Path, Callable[[], np.ndarray]] | None,
) -> Case:
    """The one place a case's (4, D, H, W) image and label are built from files already checked to share
    a grid: ``grid`` is the NIfTI (i, j, k) shape, affine and (D, H, W) spacing. The files are read two
    at a time ahead of the channel being filled (read_ahead), so at most three raw volumes are held."""
    (size_i, size_j, size_k), affine, spacing = grid
    image = np.zeros((len(MODALITIES), size_k, size_i, size_j), dtype=np.float32)
    reads = [read for _, _, read in modalities] + ([label[1]] if label is not None else [])
    case_label = None
    # closing: a bad file stops the reads still running ahead before its error leaves this function.
    with contextlib.closing(read_ahead(reads)) as raw_volumes:
        # Not strict: the label's read follows the modalities' in the same stream.
        for (modality, path, _), data in zip(modalities, raw_volumes, strict=False):
            check_finite(data, path)
            check_not_empty(data, path)
            image[MODALITIES.index(modality)] = nifti_to_case_axes(data)
        if label is not None:
            raw_label = next(raw_volumes)
            case_label = np.ascontiguousarray(nifti_to_case_axes(_brats_label(raw_label, label[0])))
    sources = tuple(path for _, path, _ in modalities) + ((label[0],) if label is not None else ())
    logger.debug("read case %s from %d files", case_id, len(sources))
    return Case(
        case_id=case_id,
        image=image,
        affine=affine,
        spacing=spacing,
        label=case_label,
        source_paths=sources,
        available=tuple(m for m, _, _ in modalities),
    )


def _read_sniffed_files(
    modality_paths: Mapping[str, Path],
    label_path: Path | None,
    case_id: str,
    *,
    within: Confinement,
    max_case_voxels: int,
) -> Case:
    """Like ``_read_modality_files`` for a case with a ``.nii.gz.gz`` file among its files: every file is
    read by content (gzip layers removed in memory, each bounded), then checked against the first's grid."""
    from medvision.data.sniff import open_any_nifti

    available = tuple(m for m in MODALITIES if m in modality_paths)
    paths = [modality_paths[m] for m in available] + ([label_path] if label_path is not None else [])
    volumes, total = [], 0
    for path in paths:
        volume = open_any_nifti(path, within=within)
        reference = volumes[0] if volumes else volume
        if volume.data.shape != reference.data.shape or not np.allclose(
            volume.affine, reference.affine, atol=1e-3
        ):
            raise InputDataError(
                path, f"not on the same grid as {reference.path.name} (shape or affine differ)"
            )
        total += volume.data.size if path != label_path else 0
        if total > max_case_voxels:
            raise InputDataError(path, f"the case holds more than {max_case_voxels:,} image voxels")
        volumes.append(volume)
    first = volumes[0]
    zi, zj, zk = np.sqrt((first.affine[:3, :3] ** 2).sum(axis=0))
    grid = (first.data.shape, first.affine, (float(zk), float(zi), float(zj)))
    reads = [(m, v.path, lambda v=v: v.data) for m, v in zip(available, volumes, strict=False)]
    label = (
        (label_path, lambda: np.rint(volumes[-1].data).astype(np.int16)) if label_path is not None else None
    )
    return _assemble_case(case_id, grid, reads, label)


def _read_modality_files(
    modality_paths: Mapping[str, Path],
    label_path: Path | None,
    case_id: str,
    *,
    within: Confinement,
    max_case_voxels: int,
) -> Case:
    """Validate every header first (shapes, affines, sizes, voxel budget), then read the voxels into one
    (4, D, H, W). Modalities without a path keep all-zero channels and are left out of ``available``."""
    named = [*modality_paths.values(), *([label_path] if label_path is not None else [])]
    if any(p.name.lower().endswith(DOUBLE_GZIP_SUFFIX) for p in named):
        return _read_sniffed_files(
            modality_paths, label_path, case_id, within=within, max_case_voxels=max_case_voxels
        )
    available = tuple(m for m in MODALITIES if m in modality_paths)
    volumes = [open_nifti(modality_paths[m], ndim=3, within=within) for m in available]
    reference = volumes[0]
    for volume in volumes[1:]:
        check_same_grid(volume, reference)
    label_volume = open_nifti(label_path, ndim=3, within=within) if label_path is not None else None
    if label_volume is not None:
        check_same_grid(label_volume, reference)
    check_case_voxels(volumes, max_case_voxels, reference.path)
    grid = (reference.shape, reference.affine, reference.spacing_dhw)
    reads = [(m, v.path, lambda v=v: read_nifti_data(v)) for m, v in zip(available, volumes, strict=True)]
    label = (label_volume.path, lambda: read_nifti_data(label_volume)) if label_volume is not None else None
    return _assemble_case(case_id, grid, reads, label)


def read_brats_folder(
    folder: str | Path,
    *,
    roots: Roots = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    allow_missing: bool = False,
) -> Case:
    """A BraTS case folder (2018-2021 or 2023 naming, .nii or .nii.gz; the ``seg`` file is optional).

    ``allow_missing``: read any non-empty subset of the four modalities (for models trained with modality
    dropout); otherwise a missing modality is refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(folder, "not a folder (expected a BraTS case folder)")
    within = _confinement(folder, roots)
    scan = _scan_folder(folder, within)
    for key, paths in scan.files.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputDataError(folder, f"more than one {key} file ({names}); keep exactly one")
    for modality in MODALITIES:
        if modality not in scan.files:
            if modality in scan.wrong_extension:
                bad = scan.wrong_extension[modality][0]
                problem = f"wrong extension for the {modality} file: expected .nii or .nii.gz"
                raise InputDataError(bad, problem)
            if not allow_missing or not any(m in scan.files for m in MODALITIES):
                raise InputDataError(
                    folder, f"missing modality {modality} (no file named {_NAMING_HINT[modality]}.nii[.gz])"
                )
    label_paths = scan.files.get(LABEL_KEY)
    case_id = _case_id_from_prefixes(scan.prefixes, folder.name)
    return _read_modality_files(
        {m: scan.files[m][0] for m in MODALITIES if m in scan.files},
        label_paths[0] if label_paths else None,
        case_id,
        within=within,
        max_case_voxels=max_case_voxels,
    )


def read_nifti_files(
    paths: Mapping[str, str | Path],
    *,
    case_id: str | None = None,
    roots: Roots = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    allow_missing: bool = False,
) -> Case:
    """Separately uploaded modality files (+ optional label) keyed by modality name: all four, or with
    ``allow_missing`` any non-empty subset.

    Keys are MedVision names (``flair``, ``t1``, ``t1ce``, ``t2``, ``seg``) or BraTS 2023 names
    (``t2f``, ``t1n``, ``t1c``, ``t2w``); ``label`` is accepted for ``seg``. Unknown keys are a
    programming error (ValueError); missing or bad files are an InputDataError. With no ``roots``,
    each file must really lie in the folder it was given in (a symbolic link leading elsewhere is refused).
    """
    resolved: dict[str, Path] = {}
    for key, path in paths.items():
        name = NAME_KEYS.get(str(key).lower())
        if name is None:
            raise ValueError(f"unknown modality key {key!r}; use {MODALITIES + (LABEL_KEY,)}")
        if name in resolved:
            raise ValueError(f"two files given for {name} (key {key!r})")
        resolved[name] = Path(path)
    if not resolved:
        raise ValueError("no files given")
    missing = [m for m in MODALITIES if m not in resolved]
    if missing and (not allow_missing or len(missing) == len(MODALITIES)):
        where = ", ".join(p.name for p in resolved.values())
        got = ", ".join(sorted(resolved))
        raise InputDataError(where, f"missing modality {', '.join(missing)} (got {got})")
    if case_id is None:
        first = next(resolved[m] for m in MODALITIES if m in resolved)
        found = classify_name(nifti_stem(first.name))
        case_id = found[0] if found and found[0] else nifti_stem(first.name)
    within = Confinement.of(p.parent for p in resolved.values()) if roots is None else Confinement.of(roots)
    return _read_modality_files(
        resolved, resolved.get(LABEL_KEY), case_id, within=within, max_case_voxels=max_case_voxels
    )


# ------------------------------------------------------------------------------------- Decathlon


def decathlon_label_path(image_path: str | Path) -> Path | None:
    """``.../imagesTr/BRATS_001.nii.gz`` -> ``.../labelsTr/BRATS_001.nii.gz`` when that file exists."""
    image_path = Path(image_path)
    parent = image_path.parent.name
    if not parent.startswith("images"):
        return None
    candidate = image_path.parent.parent / ("labels" + parent[len("images") :]) / image_path.name
    return candidate if candidate.is_file() else None


def read_decathlon(
    image_path: str | Path,
    label_path: str | Path | None = None,
    *,
    roots: Roots = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
) -> Case:
    """A Decathlon Task01 4-D NIfTI (X, Y, Z, 4); the label is taken from ``labelsTr/`` when not given.

    With no ``roots`` the task folder (above ``imagesTr/``) is the root, so the label may come from
    ``labelsTr/`` but no symbolic link may lead out of the task.
    """
    image_path = Path(image_path)
    within = _confinement(image_path, roots)
    volume = open_nifti(image_path, ndim=4, within=within)
    if volume.shape[3] != len(DECATHLON_CHANNELS):
        raise InputDataError(
            image_path,
            f"expected {len(DECATHLON_CHANNELS)} channels ({', '.join(DECATHLON_CHANNELS)}) in the 4th "
            f"dimension, got shape {volume.shape}",
        )
    check_case_voxels([volume], max_case_voxels, image_path)
    label_file = Path(label_path) if label_path is not None else decathlon_label_path(image_path)
    label_volume = open_nifti(label_file, ndim=3, within=within) if label_file is not None else None
    if label_volume is not None:
        check_same_grid(label_volume, volume, spatial_only=True)

    data = read_nifti_data(volume)
    check_finite(data, image_path)
    for channel in range(data.shape[3]):
        check_not_empty(data[..., channel], image_path)
    size_i, size_j, size_k, channels = volume.shape
    image = np.empty((channels, size_k, size_i, size_j), dtype=np.float32)
    for channel in range(channels):  # DECATHLON_CHANNELS are already in MODALITIES order
        image[channel] = nifti_to_case_axes(data[..., channel])
    del data
    label = None
    if label_volume is not None:
        raw = read_nifti_data(label_volume)
        mapped = labels_to_brats(raw, label_volume.path, DECATHLON_LABEL_MAP)
        label = np.ascontiguousarray(nifti_to_case_axes(mapped))
    sources = (image_path,) + ((label_volume.path,) if label_volume is not None else ())
    return Case(
        case_id=nifti_stem(image_path.name),
        image=image,
        affine=volume.affine,
        spacing=volume.spacing_dhw,
        label=label,
        source_paths=sources,
    )


# ------------------------------------------------------------------------------------------- zip


def read_zip(
    zip_path: str | Path,
    *,
    roots: Roots = None,
    scratch_dir: Path | None = None,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    max_compression_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    allow_missing: bool = False,
) -> Case:
    """A .zip holding one case (typically one BraTS case folder), extracted safely to a temporary folder.

    The temporary folder is made in ``scratch_dir`` (the app passes one inside its workspace; None = the
    system's temporary folder). Errors about files inside the archive name the archive and the member.
    The returned Case keeps the archive as its source path (the temporary folder is deleted before
    returning).
    """
    zip_path = Path(zip_path)
    _confinement(zip_path, roots)
    if scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medvision-zip-", dir=scratch_dir) as tmp:
        root = Path(tmp)
        safe_extract(
            zip_path,
            root,
            max_uncompressed_bytes=max_uncompressed_bytes,
            max_compression_ratio=max_compression_ratio,
        )
        try:
            refs = list_case_sources(root)
            if len(refs) == 1 and refs[0].kind == "zip":
                problem = f"holds another zip archive ({refs[0].path.name}); nested archives are not read"
                raise InputDataError(zip_path, problem)
            if len(refs) != 1:
                problem = f"holds {len(refs)} cases; upload a zip of exactly one case folder"
                raise InputDataError(root, problem)
            ref = dataclasses.replace(refs[0], max_case_voxels=max_case_voxels, allow_missing=allow_missing)
            case = ref.load()
        except InputDataError as exc:
            raise _error_inside_zip(exc, zip_path, root) from exc
    # Files at the archive root with no <ID> in their names would otherwise be named after the temp folder.
    case_id = _zip_case_id(zip_path) if case.case_id == root.name else case.case_id
    return dataclasses.replace(case, case_id=case_id, source_paths=(zip_path,))


def _error_inside_zip(exc: InputDataError, zip_path: Path, root: Path) -> InputDataError:
    """Say 'upload.zip (member case/x_flair.nii.gz)' instead of a temporary path the user never saw."""
    tmp_prefix = str(root) + os.sep
    try:
        member = Path(exc.path).relative_to(root).as_posix()
    except ValueError:
        member = ""
    where = f"{zip_path} (member {member})" if member not in ("", ".") else str(zip_path)
    return InputDataError(where, exc.problem.replace(tmp_prefix, "").replace(str(root), "<archive>"))


def _zip_case_id(zip_path: Path) -> str:
    """Case id of a zipped case folder from its member names (the central directory only)."""
    fallback = zip_path.name[: -len(".zip")] if zip_path.name.lower().endswith(".zip") else zip_path.stem
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = [Path(n.replace("\\", "/")).name for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return fallback  # read_zip reports the damage when the case is loaded
    return _case_id_from_prefixes(_scan_names(zip_path.parent, names).prefixes, fallback)


# ------------------------------------------------------------------------------- dataset sources


@dataclass(frozen=True)
class CaseRef:
    """A picklable pointer to one case of a dataset; ``load()`` reads it (in any process).

    How it is read (``roots``, ``scratch_dir``, ``max_case_voxels``, see the module docstring) travels with
    it but is not part of what the case is, so two refs to the same files compare equal.
    """

    kind: str  # "brats" | "decathlon" | "zip" | "kaggle"
    case_id: str
    path: Path  # case folder, Decathlon image file, zip file, or Kaggle folder
    label_path: Path | None = None  # Decathlon label file
    kaggle_slices: tuple[tuple[int, Path], ...] = ()  # (slice index, file) of one Kaggle volume
    kaggle_volume: int | None = None
    channel_order: tuple[str, ...] = KAGGLE_DEFAULT_ORDER
    roots: tuple[Path, ...] | None = field(default=None, compare=False)  # None: around ``path``
    scratch_dir: Path | None = field(default=None, compare=False)
    max_case_voxels: int = field(default=DEFAULT_CASE_VOXEL_BUDGET, compare=False)
    allow_missing: bool = field(default=False, compare=False)  # a subset of the modalities is enough

    def load(self) -> Case:
        limit = self.max_case_voxels
        if self.kind == "brats":
            case = read_brats_folder(
                self.path, roots=self.roots, max_case_voxels=limit, allow_missing=self.allow_missing
            )
        elif self.kind == "decathlon":
            case = read_decathlon(self.path, self.label_path, roots=self.roots, max_case_voxels=limit)
        elif self.kind == "zip":
            case = read_zip(
                self.path,
                roots=self.roots,
                scratch_dir=self.scratch_dir,
                max_case_voxels=limit,
                allow_missing=self.allow_missing,
            )
        elif self.kind == "kaggle" and self.kaggle_volume is not None:
            paths = checked_slice_paths(self.kaggle_slices, self.kaggle_volume, self.path)
            roots = self.roots if self.roots is not None else (self.path,)
            case = read_kaggle_volume(
                paths, self.kaggle_volume, self.channel_order, roots=roots, max_case_voxels=limit
            )
        else:
            raise ValueError(f"unknown CaseRef kind {self.kind!r}")
        # The id a dataset listing announced is the id the case gets, whatever its files say.
        return case if case.case_id == self.case_id else dataclasses.replace(case, case_id=self.case_id)


def _decathlon_refs(images_dir: Path, within: Confinement) -> list[CaseRef]:
    refs = []
    for name in list_folder(images_dir, 0, within).files:
        if not has_nifti_suffix(name):
            continue
        image = images_dir / name
        label = decathlon_label_path(image)
        refs.append(CaseRef("decathlon", nifti_stem(image.name), image, label_path=label))
    return refs


def _decathlon_task_refs(task: Path, within: Confinement) -> list[CaseRef]:
    """The training images of a Decathlon task folder (``imagesTs/`` has no labels and is not read)."""
    refs = _decathlon_refs(task / "imagesTr", within)
    if not refs:
        raise InputDataError(task / "imagesTr", "no .nii/.nii.gz images in this Decathlon folder")
    return refs


def _kaggle_refs(
    folder: Path, volumes: Mapping[int, list[tuple[int, Path]]], order: tuple[str, ...]
) -> list[CaseRef]:
    """One case per Kaggle volume number, in numeric order."""
    return [
        CaseRef(
            "kaggle",
            f"volume_{v}",
            folder,
            kaggle_slices=tuple(volumes[v]),
            kaggle_volume=v,
            channel_order=order,
        )
        for v in sorted(volumes)
    ]


def _claim_folder(folder: Folder, order: tuple[str, ...], within: Confinement) -> Claim[CaseRef]:
    """What one folder of a dataset walk holds, from its names: a dataset or case folder, case zips, or none.

    The checks run in the order a folder used to be read as a dataset root: a Decathlon task, Kaggle
    slices, a BraTS case; a Decathlon ``images*`` folder and ``.zip`` cases count only in the folder given
    (a zip deeper down is more often the archive a dataset was unpacked from than a case).
    """
    if "imagesTr" in folder.folders:
        return Claim(tuple(_decathlon_task_refs(folder.path, within)), leaf=True)
    kaggle = index_kaggle_names(folder.path, folder.files)
    if kaggle:
        return Claim(tuple(_kaggle_refs(folder.path, kaggle, order)), leaf=True)
    scan = _scan_names(folder.path, folder.files)
    if scan.is_case or LABEL_KEY in scan.files:
        case_id = _case_id_from_prefixes(scan.prefixes, folder.path.name)
        return Claim((CaseRef("brats", case_id, folder.path),), leaf=True)
    if folder.depth > 0:
        return Claim()
    if folder.path.name.startswith("images") and any(has_nifti_suffix(n) for n in folder.files):
        return Claim(tuple(_decathlon_refs(folder.path, within)), leaf=True)
    zips = [folder.path / n for n in folder.files if n.lower().endswith(".zip")]
    return Claim(tuple(CaseRef("zip", _zip_case_id(z), z) for z in zips))


def list_case_sources(
    source: str | Path,
    *,
    kaggle_channel_order: Sequence[str] = KAGGLE_DEFAULT_ORDER,
    roots: Roots = None,
    scratch_dir: Path | None = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    allow_missing: bool = False,
) -> list[CaseRef]:
    """The cases under ``source``: one case (folder, zip, Decathlon file) or a dataset root.

    A dataset root holds, up to ``discovery.MAX_DEPTH`` folders down, BraTS case folders (and/or case
    zips directly in it), a Decathlon task folder with ``imagesTr/`` (labels from ``labelsTr/``), or
    folders of Kaggle slice files (one case per volume) - one format per root (see discovery.py).
    Nothing but file names is read here. ``roots`` (None = ``source`` itself), ``scratch_dir`` and
    ``max_case_voxels`` are handed to every ref, so its ``load()`` reads under the same rules.
    """
    order = validate_channel_order(kaggle_channel_order)
    source = Path(source)
    if not source.exists():
        raise InputDataError(source, "does not exist")
    within = _confinement(source, roots)
    if source.is_file():
        refs = [_file_ref(source)]
    else:
        refs = find_cases(source, functools.partial(_claim_folder, order=order, within=within), within=within)
    options = {
        "roots": within.roots,
        "scratch_dir": scratch_dir,
        "max_case_voxels": max_case_voxels,
        "allow_missing": allow_missing,
    }
    return [dataclasses.replace(ref, **options) for ref in refs]


def _file_ref(path: Path) -> CaseRef:
    name = path.name.lower()
    if name.endswith(".zip"):
        return CaseRef("zip", _zip_case_id(path), path)
    if has_nifti_suffix(name):
        # A single NIfTI file is a case only as a Decathlon 4-D image; read_decathlon says so otherwise.
        return CaseRef("decathlon", nifti_stem(path.name), path, label_path=decathlon_label_path(path))
    if name.endswith(".h5"):
        raise InputDataError(path, "a single Kaggle slice file is not a case; give the folder of slice files")
    raise InputDataError(
        path, "wrong extension: expected a case folder, a .zip, a 4-D .nii/.nii.gz, or a folder of .h5 slices"
    )


def iter_cases(
    source: str | Path, *, kaggle_channel_order: Sequence[str] = KAGGLE_DEFAULT_ORDER, roots: Roots = None
) -> Iterator[Case]:
    """Read the cases of ``source`` one at a time (see ``list_case_sources``)."""
    for ref in list_case_sources(source, kaggle_channel_order=kaggle_channel_order, roots=roots):
        yield ref.load()


def load_case(
    path: str | Path,
    *,
    kaggle_channel_order: Sequence[str] = KAGGLE_DEFAULT_ORDER,
    roots: Roots = None,
    scratch_dir: Path | None = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    allow_missing: bool = False,
) -> Case:
    """Read one case from any supported input (case folder, .zip, Decathlon file, one Kaggle volume).

    ``allow_missing``: a case folder or zip may hold any non-empty subset of the modalities."""
    refs = list_case_sources(
        path,
        kaggle_channel_order=kaggle_channel_order,
        roots=roots,
        scratch_dir=scratch_dir,
        max_case_voxels=max_case_voxels,
        allow_missing=allow_missing,
    )
    if len(refs) != 1:
        shown = ", ".join(r.case_id for r in refs[:3]) + (", ..." if len(refs) > 3 else "")
        raise InputDataError(
            path, f"holds {len(refs)} cases ({shown}); load_case reads one case, use iter_cases for a dataset"
        )
    return refs[0].load()
