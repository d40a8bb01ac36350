"""A DICOM study (a folder or .zip) -> a ``Case`` for the model, the report of what was used, and the way
back to the reference series' own grid.

``load_study`` is what ``predict`` and the Predict page call: scan (headers only, ``scan.py``), assign a
modality to every series (``modality.py``; the caller's ``overrides`` win), read the chosen series
(``volume.py``), put them on the reference series' grid (``medvision.data.native_grid``), then on the
model's ~1 mm in-plane grid. The prediction comes back through ``NativeGrid`` to the reference grid, where
``medvision.export`` writes NIfTI and ``seg_export`` writes DICOM-SEG referencing the reference series.

Choosing among several series of one modality: a readable one before a broken one, then the most voxels
(the finest grid), then the latest series number (a repeat after motion comes later). A chosen series
that cannot be read as one volume (a slice missing, uneven spacing...) is refused with an InputDataError
naming the study, the series and the problem; the caller can then pick another with ``overrides``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from medvision.confinement import Confinement
from medvision.data.case import MODALITIES, Case
from medvision.data.native_grid import (
    BackToReference,
    GridNote,
    InputVolume,
    choose_reference,
    to_model_grid,
    to_reference_grid,
)
from medvision.data.safe_zip import safe_extract
from medvision.data.sniff import HEAD_BYTES, sniff, sniff_bytes
from medvision.dicom.modality import Assignment, assign_modality
from medvision.dicom.report import SeriesRow, StudyReport
from medvision.dicom.scan import MAX_FILES, Series, StudyScan, scan_study
from medvision.dicom.volume import read_series_volume
from medvision.errors import InputDataError

__all__ = ["NativeGrid", "NativeStudy", "is_dicom_study", "load_study", "read_study", "zip_holds_dicom"]

logger = logging.getLogger(__name__)

Overrides = Mapping[str, str | None]  # modality -> series number, description or UID; None/"" = leave out
_NONE = ("", "none", "-")


@dataclass(frozen=True)
class NativeStudy:
    """A study on its reference series' grid: the case, the report, and the reference series' headers
    in slice order (k = 0 .. D-1), which a DICOM-SEG references."""

    case: Case
    report: StudyReport
    reference_datasets: tuple[Dataset, ...]
    # With rigid refinement: each refined series on the reference grid as the scanner placed it (case axes).
    unregistered: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class NativeGrid:
    """The way back from the model grid: ``native(label)`` is the label on ``case``'s (the reference) grid."""

    case: Case  # on the reference series' grid: what export writes against
    back: BackToReference
    reference_datasets: tuple[Dataset, ...]
    unregistered: Mapping[str, np.ndarray] = field(default_factory=dict)  # as NativeStudy's

    def __call__(self, label: np.ndarray) -> np.ndarray:
        return self.back(label)


def _match(series: tuple[Series, ...], wanted: str) -> list[Series]:
    text = wanted.strip().lower()
    return [
        s
        for s in series
        if text in (s.uid.lower(), s.key.lower(), s.description.lower()) or text == str(s.number)
    ]


def _overridden(scan: StudyScan, overrides: Overrides, where: str) -> dict[str, Series | None]:
    """The caller's choices: modality -> series (None: leave that modality out)."""
    chosen: dict[str, Series | None] = {}
    for modality, wanted in overrides.items():
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r} in overrides; use {MODALITIES}")
        if wanted is None or str(wanted).strip().lower() in _NONE:
            chosen[modality] = None
            continue
        found = _match(scan.series, str(wanted))
        if len(found) != 1:
            names = ", ".join(s.label for s in scan.series)
            count = "no series matches" if not found else f"{len(found)} series match"
            raise InputDataError(where, f"{count} '{wanted}' given for {modality} (series here: {names})")
        if found[0].skip is not None:
            raise InputDataError(where, f"{found[0].label} given for {modality} is {found[0].skip}")
        chosen[modality] = found[0]
    return chosen


def _preference(series: Series) -> tuple[bool, int, int]:
    voxels = int(np.prod(series.geometry.shape)) if series.geometry is not None else 0
    return (series.problem is None, voxels, series.number or 0)


def _choose(
    scan: StudyScan, assignments: Mapping[str, Assignment], overrides: Overrides, where: str
) -> dict[str, Series]:
    """Modality -> the series used for it."""
    given = _overridden(scan, overrides, where)
    taken = {s.key for s in given.values() if s is not None}
    chosen = {m: s for m, s in given.items() if s is not None}
    for modality in MODALITIES:
        if modality in given:
            continue
        options = [
            s for s in scan.candidates if assignments[s.key].modality == modality and s.key not in taken
        ]
        if options:
            chosen[modality] = max(options, key=_preference)
    if not chosen:
        raise InputDataError(
            where, "no series could be assigned FLAIR, T1, T1ce or T2; name them with overrides"
        )
    return chosen


def _row(series: Series, assignment: Assignment | None, status: str, reason: str) -> SeriesRow:
    grid = ""
    if series.geometry is not None:
        g = series.geometry
        grid = "x".join(map(str, g.shape)) + " at " + " x ".join(f"{s:.2f}" for s in g.spacing) + " mm"
    return SeriesRow(
        series=str(series.number) if series.number is not None else "?",
        description=series.description,
        slices=len(series.files),
        grid=grid,
        modality=assignment.modality if assignment is not None else "",
        status=status,
        reason=reason,
    )


def _rows(
    scan: StudyScan,
    assignments: Mapping[str, Assignment],
    chosen: Mapping[str, Series],
    overrides: Overrides,
    reference: str,
) -> tuple[SeriesRow, ...]:
    used = {s.key: m for m, s in chosen.items()}
    rows = []
    for series in scan.series:
        if series.skip is not None:
            rows.append(_row(series, None, "skipped", series.skip))
            continue
        assignment = assignments[series.key]
        if series.key in used:
            modality = used[series.key]
            if modality in overrides:
                assignment = Assignment(modality, f"given by the caller ({modality}={overrides[modality]})")
            status = "used (reference)" if modality == reference else "used"
            rows.append(_row(series, assignment, status, assignment.reason))
            continue
        reason = assignment.reason
        if series.problem:
            reason += f"; cannot be read as one volume: {series.problem}"
        elif assignment.modality in chosen:
            reason += f"; {chosen[assignment.modality].label} was preferred"
        rows.append(_row(series, assignment, "not used", reason))
    return tuple(rows)


def _is_mask(data: np.ndarray) -> bool:
    """At most two distinct values (a drawn region of interest), checked on a subsample first."""
    return np.unique(data[::4, ::4, :]).size <= 2 and np.unique(data).size <= 2


# Decoded voxels of the series chosen for one study, all modalities together, checked from the headers
# before any pixel is decoded. Four 512 x 512 x 256 series (a high-resolution 3-D protocol) are 268 M
# voxels, about 1.1 GB as float32; a clinical 2-D study such as BRAINIX is under 15 M.
DEFAULT_STUDY_VOXEL_BUDGET: int = 4 * 512 * 512 * 256


def series_voxels(series: Series) -> int:
    """Voxels the series decodes to, from its first header: rows x columns x frames x files."""
    header = series.header
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    return (
        int(getattr(header, "Rows", 0) or 0)
        * int(getattr(header, "Columns", 0) or 0)
        * frames
        * len(series.files)
    )


def _check_study_voxels(chosen: dict[str, Series], budget: int, where: str) -> None:
    if budget <= 0:
        raise ValueError(f"the voxel budget must be positive, got {budget}")
    total = sum(series_voxels(s) for s in chosen.values())
    if total > budget:
        sizes = ", ".join(f"{s.label} {series_voxels(s):,}" for s in chosen.values())
        raise InputDataError(
            where,
            f"the series chosen would decode to {total:,} voxels ({sizes}), more than the limit of "
            f"{budget:,} voxels per study ({budget * 4 / 1e9:.1f} GB as float32); leave a series out "
            "(--flair/--t1/--t1ce/--t2 none, or the mapping on the Predict page)",
        )


def _read_chosen(
    chosen: dict[str, Series], within: Confinement, where: str, notes: list[str]
) -> dict[str, InputVolume]:
    volumes: dict[str, InputVolume] = {}
    for modality, series in chosen.items():
        start = time.perf_counter()
        volume = read_series_volume(series, within=within, where=where)
        if _is_mask(volume.data):
            notes.append(f"{series.label} holds at most two values (a mask, not a scan): not used")
            continue
        seconds = time.perf_counter() - start
        size = "x".join(map(str, volume.data.shape))
        notes.append(f"read {series.label} as {modality}: {size} ({seconds:.2f} s)")
        volumes[modality] = InputVolume(modality, volume.data, volume.affine, series.label, volume.paths)
    if not volumes:
        raise InputDataError(where, "none of the series chosen holds a scan")
    return volumes


def _read_folder(
    root: Path,
    where: str,
    within: Confinement,
    overrides: Overrides,
    reference: str | None,
    register: bool,
    max_voxels: int,
) -> NativeStudy:
    start = time.perf_counter()
    scan = scan_study(root, within=within)
    notes = [
        f"scanned {sum(len(s.files) for s in scan.series)} DICOM files in {len(scan.series)} series "
        f"({time.perf_counter() - start:.2f} s)",
        *scan.notes,
    ]
    assignments = {s.key: assign_modality(s.header) for s in scan.candidates}
    chosen = _choose(scan, assignments, overrides, where)
    for modality, series in chosen.items():
        if series.problem is not None:
            raise InputDataError(f"{where} ({series.label}, chosen as {modality})", series.problem)
    _check_study_voxels(chosen, max_voxels, where)
    volumes = _read_chosen(chosen, within, where, notes)
    ref = choose_reference(list(volumes), reference if reference in volumes else None)
    grid_notes: list[GridNote] = []
    unregistered: dict[str, np.ndarray] = {}
    case = to_reference_grid(
        volumes,
        case_id=f"dicom-{scan.study_key}",
        reference=ref,
        register=register,
        notes=grid_notes,
        unregistered=unregistered,
    )
    notes += [str(n) for n in grid_notes]
    report = StudyReport(_rows(scan, assignments, chosen, overrides, ref), ref, tuple(notes))
    reference_headers = tuple(f.header for f in chosen[ref].files)
    return NativeStudy(case, report, reference_headers, unregistered)


# How many files are looked at to tell a DICOM study from a folder of NIfTI files.
_PROBE_FILES = 32


def zip_holds_dicom(source: Path | BinaryIO) -> bool:
    """True when the first few members of a .zip (a path, or a seekable stream such as an upload) are
    DICOM; only a kilobyte of each is inflated, so a decompression bomb costs nothing here. Never raises."""
    try:
        with zipfile.ZipFile(source) as archive:
            members = [i for i in archive.infolist() if not i.is_dir() and "__MACOSX" not in i.filename]
            for info in members[:_PROBE_FILES]:
                if info.flag_bits & 0x1:  # encrypted: safe_extract refuses it with a clear message later
                    continue
                # Only stored or deflated members are peeked at: a bzip2/LZMA decoder allocates its whole
                # window (100+ MiB for a bomb) before the first byte, and safe_extract judges those later.
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    continue
                with archive.open(info) as stream:
                    if sniff_bytes(stream.read(HEAD_BYTES)) == "dicom":
                        return True
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error):
        return False
    return False


def is_dicom_study(path: str | Path, *, roots: tuple[str | Path, ...] | None = None) -> bool:
    """True when ``path`` is a folder or .zip holding DICOM files (judged from the first few files' bytes), so
    a caller can route it to :func:`load_study` rather than the NIfTI readers. Never raises for bad input."""
    path = Path(path)
    try:
        within = Confinement.around(path) if roots is None else Confinement.of(roots)
        kind = sniff(path, within=within)
        if kind == "zip":
            return zip_holds_dicom(path)
        if kind != "folder":
            return False
        for count, (folder, _dirs, files) in enumerate(os.walk(path)):
            for name in sorted(files)[:_PROBE_FILES]:
                if not name.startswith(".") and sniff(Path(folder) / name, within=within) == "dicom":
                    return True
            if count > _PROBE_FILES:
                return False
    except InputDataError:
        return False
    return False


@contextlib.contextmanager
def _study_folder(path: Path, scratch_dir: Path | None) -> Iterator[Path]:
    """The folder to scan: ``path`` itself, or a .zip extracted safely into a temporary folder."""
    if path.is_dir():
        yield path
        return
    if scratch_dir is not None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medvision-dicom-", dir=scratch_dir) as tmp:
        # A study holds hundreds to thousands of images, more than a case folder's member limit: the
        # scan's own file limit bounds it instead (sizes and ratios are still checked per member).
        safe_extract(path, tmp, max_members=MAX_FILES)
        yield Path(tmp)


def _renamed(exc: InputDataError, root: Path, where: str) -> InputDataError:
    """An error naming the temporary extraction folder names the archive instead."""
    return InputDataError(exc.path.replace(str(root), where), exc.problem.replace(str(root), where))


def read_study(
    path: str | Path,
    *,
    overrides: Overrides | None = None,
    reference: str | None = None,
    register: bool = False,
    roots: tuple[str | Path, ...] | None = None,
    scratch_dir: Path | None = None,
    max_voxels: int = DEFAULT_STUDY_VOXEL_BUDGET,
) -> NativeStudy:
    """A DICOM study folder or .zip on its reference series' grid (FLAIR, else T1ce, else the first given
    unless ``reference`` names one). ``roots``: the folders that may be read (default: around ``path``);
    a zip is extracted under ``scratch_dir`` (default: the system's temporary folder); the series chosen
    may decode to at most ``max_voxels`` voxels together (checked from their headers)."""
    path = Path(path)
    within = Confinement.around(path) if roots is None else Confinement.of(roots)
    within.check(path)
    kind = sniff(path, within=within)
    if kind not in ("folder", "zip", "dicom"):
        raise InputDataError(path, f"not a DICOM study (a folder or .zip of DICOM files): it holds {kind}")
    if kind == "dicom":
        raise InputDataError(path, "is a single DICOM file; give the folder (or a .zip) of the whole study")
    with _study_folder(path, scratch_dir) as root:
        where = str(path)
        inner = within if root == path else Confinement.of([root])
        try:
            study = _read_folder(root, where, inner, overrides or {}, reference, register, max_voxels)
        except InputDataError as exc:
            if root == path:
                raise
            raise _renamed(exc, root, where) from exc
    if root != path:  # the extracted files are gone: the archive is what was read
        study = dataclasses.replace(study, case=dataclasses.replace(study.case, source_paths=(path,)))
    return study


def load_study(
    path: str | Path,
    overrides: Overrides | None = None,
    reference: str | None = None,
    *,
    model_spacing_mm: float = 1.0,
    register: bool = False,
    roots: tuple[str | Path, ...] | None = None,
    scratch_dir: Path | None = None,
    max_voxels: int = DEFAULT_STUDY_VOXEL_BUDGET,
) -> tuple[Case, StudyReport, NativeGrid]:
    """A DICOM study ready for the model: (case on the model grid, report, way back to the reference grid).

    ``native = ...[2]``: ``native(label)`` maps a (D, H, W) label predicted on the model case to the
    reference grid; ``native.case`` is the case on that grid (export writes against it) and
    ``native.reference_datasets`` the reference series' headers (``seg_export.write_dicom_seg``).
    """
    options = {"register": register, "roots": roots, "scratch_dir": scratch_dir, "max_voxels": max_voxels}
    study = read_study(path, overrides=overrides, reference=reference, **options)  # type: ignore[arg-type]
    grid_notes: list[GridNote] = []
    model_case, back = to_model_grid(study.case, spacing_mm=model_spacing_mm, notes=grid_notes)
    report = dataclasses.replace(study.report, notes=study.report.notes + tuple(str(n) for n in grid_notes))
    return model_case, report, NativeGrid(study.case, back, study.reference_datasets, study.unregistered)
