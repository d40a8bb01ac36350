"""A DICOM study uploaded in the browser (one .zip, or the files themselves) -> what the Predict page needs.

The page's flow, with ``files`` being :func:`medvision.app_support.uploads.streamed_upload` objects::

    from medvision.app_support import dicom_choices, dicom_pictures, dicom_upload

    if dicom_upload.is_dicom_upload(files):
        upload = dicom_upload.read_dicom_upload(files, workspace.uploads, max_bytes=limit)
        st.dataframe(dicom_choices.series_rows(upload))  # series table: used, not used, skipped, why
        overrides = dicom_choices.overrides_from_choices(upload, picked)  # four selectboxes, see there
        if overrides != dict(upload.options.overrides):  # the user changed the mapping: read again
            again = dataclasses.replace(upload.options, overrides=overrides)
            upload = dicom_upload.read_dicom_upload(files, workspace.uploads, max_bytes=limit, options=again)
        pictures = dicom_pictures.slice_pictures(upload, index)  # registration and brain extraction checks
        label = model.predict(upload.case)  # on the model grid
        nifti = dicom_upload.segmentation_nifti_bytes(label, upload)
        seg = dicom_upload.dicom_seg_bytes(label, upload)

Reading is what ``predict`` does with a DICOM study (``medvision.commands.predict_inputs``): the bytes are
copied, sizes first (``uploads.checked_sizes``), into a fresh temporary folder under the workspace's
uploads folder, under names made here (``00000.dcm`` ..., ``study.zip``: never a name or ID of the
patient), read by ``medvision.dicom.load_study`` confined to that folder, cut to the brain when the scan
still shows the skull, and the folder is removed. What a DICOM-SEG needs (the reference series' headers)
stays in memory, so nothing is read again. Every refusal is an InputDataError naming the upload or file
as the user named it, with the problem as ``medvision.dicom`` worded it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvision.app_support.uploads import Upload, checked_sizes, copy_at_most, nifti_stem
from medvision.data.case import MODALITIES, Case
from medvision.data.sniff import HEAD_BYTES, sniff_bytes
from medvision.dicom import NativeGrid, StudyReport
from medvision.errors import InputDataError, MedVisionError

__all__ = [
    "DicomOptions",
    "DicomUpload",
    "dicom_seg_bytes",
    "is_dicom_upload",
    "read_dicom_upload",
    "segmentation_nifti_bytes",
]

logger = logging.getLogger(__name__)

BRAIN_EXTRACTION_MODES = ("auto", "on", "off")
_PROBE_FILES = 32  # as many files' first bytes as medvision.dicom.study looks at to tell a study
_DISK_NAME = re.compile(r"\b(\d{5})\.dcm\b")


@dataclass(frozen=True)
class DicomOptions:
    """How a study is read, as the CLI's ``--flair/--t1/--t1ce/--t2``, ``--reference``, ``--register`` and
    ``--brain-extraction``: ``overrides`` maps a modality to a series number or description (None: leave
    it out); the others are chosen from the headers."""

    overrides: Mapping[str, str | None] = field(default_factory=dict)
    reference: str | None = None
    register: bool = False
    brain_extraction: str = "auto"  # auto: only when the scan is not skull-stripped

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown} in overrides; use {MODALITIES}")
        if self.reference is not None and self.reference not in MODALITIES:
            raise ValueError(f"unknown reference {self.reference!r}; use one of {MODALITIES}")
        if self.brain_extraction not in BRAIN_EXTRACTION_MODES:
            raise ValueError(f"brain_extraction must be one of {BRAIN_EXTRACTION_MODES}")


@dataclass(frozen=True)
class DicomUpload:
    """One uploaded study, read: the case for the model and everything needed to show and export it."""

    name: str  # the upload as the user knows it: "scans.zip", or "upload (88 files)"
    case: Case  # on the model grid, cut to the brain when that was done: what the model predicts on
    report: StudyReport  # one row per series found (used, not used, skipped, and why)
    native: NativeGrid  # native(label): model grid -> reference grid; native.case: the study on that grid
    steps: tuple[str, ...]  # what was read and done, in order, with sizes and seconds
    brain_mask: np.ndarray | None  # (D, H, W) bool on the reference grid; None: not cut to the brain
    options: DicomOptions
    scratch: Path  # the folder exports write their temporary files under

    @property
    def reference_datasets(self) -> tuple:
        """The reference series' headers in slice order: what a DICOM-SEG references."""
        return self.native.reference_datasets


# ------------------------------------------------------------------------------------------- recognition


def _head(upload: Upload) -> bytes:
    return upload.open().read(HEAD_BYTES)


def is_dicom_upload(files: Sequence[Upload]) -> bool:
    """True when ``files`` are a DICOM study: one .zip whose first members are DICOM, or files (any names)
    of which one of the first few starts like DICOM. Reads at most a kilobyte per file; never raises."""
    from medvision.dicom.study import zip_holds_dicom

    try:
        if len(files) == 1 and files[0].name.lower().endswith(".zip"):
            return zip_holds_dicom(files[0].open())
        if not files or any(f.name.lower().endswith(".zip") for f in files):
            return False  # a zip among other files: uploads.classify says what is wrong with that
        probes = [f for f in files if nifti_stem(f.name) is None][:_PROBE_FILES]
        return any(sniff_bytes(_head(f)) == "dicom" for f in probes)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- reading


class _Names:
    """The names given to the copies on disk, and back to the names the user gave the files."""

    def __init__(self, folder: Path, files: Sequence[Upload], zipped: bool) -> None:
        self.folder = folder
        self.zipped = zipped
        self.study = folder / ("study.zip" if zipped else "study")
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        self.shown = files[0].name if zipped else f"upload ({count})"
        originals = [f.name for f in files]
        repeated = {n for n in originals if originals.count(n) > 1}
        self.by_disk = {
            f"{n:05d}.dcm": name if name not in repeated else f"{name} (file {n + 1})"
            for n, name in enumerate(originals)
        }

    def disk_paths(self) -> list[Path]:
        return [self.study] if self.zipped else [self.study / name for name in self.by_disk]

    def shown_text(self, text: str) -> str:
        """``text`` with the temporary paths and names replaced by what the user uploaded."""
        text = text.replace(str(self.study), self.shown).replace(str(self.folder), "upload")
        if not self.zipped:
            text = _DISK_NAME.sub(lambda m: self.by_disk.get(m.group(0), m.group(0)), text)
        return text


def _load(names: _Names, options: DicomOptions, scratch: Path):  # noqa: ANN202 - load_study's own tuple
    from medvision.dicom import load_study

    try:
        return load_study(
            names.study,
            dict(options.overrides),
            options.reference,
            register=options.register,
            roots=(names.folder,),
            scratch_dir=scratch,
        )
    except InputDataError as error:
        raise InputDataError(names.shown_text(error.path), names.shown_text(error.problem)) from error
    except MedVisionError:
        raise
    except Exception as error:  # a reader bug must still be one line naming the upload, as on the CLI
        logger.debug("reading a DICOM upload failed", exc_info=True)
        problem = names.shown_text(f"cannot read ({type(error).__name__}: {error})")
        raise InputDataError(names.shown, problem) from error


def _brain(case: Case, native: NativeGrid, mode: str) -> tuple[Case, np.ndarray | None, str | None]:
    """``case`` cut to the brain as ``predict --brain-extraction`` does; the mask on the reference grid and
    the line saying what was done (None, None when nothing was)."""
    from medvision.data.brain_extraction import apply_brain_mask, extract_case_brain
    from medvision.data.skull import check_skull_stripped

    if mode == "off":
        return case, None, None
    check = check_skull_stripped(case)
    if check.skull_stripped and mode == "auto":
        return case, None, None
    brain = extract_case_brain(case)
    if not brain.mask.any():  # nothing brain-like found: the whole scan is better than an empty one
        return case, None, f"scan is not skull-stripped ({check.reason}); no brain found to extract"
    state = "not skull-stripped" if not check.skull_stripped else "looks skull-stripped, extraction asked"
    figures = check.reason.split(": ", 1)[-1]
    line = (
        f"scan is {state} ({figures}); brain extracted ({brain.method}, on {brain.channel}; "
        f"mask volume {brain.volume_cm3:.0f} cm^3)"
    )
    on_reference = native(brain.mask.astype(np.uint8)).astype(bool)
    return apply_brain_mask(case, brain.mask), on_reference, line


def read_dicom_upload(
    files: Sequence[Upload],
    upload_root: Path,
    *,
    max_bytes: int,
    options: DicomOptions | None = None,
) -> DicomUpload:
    """Read uploaded DICOM files (or one .zip of them) as one study: checked, copied under ``upload_root``
    into a fresh folder, read, cut to the brain if need be, and the folder removed again.

    ``max_bytes`` bounds the total of the sizes the browser reported, checked before a byte is copied.
    InputDataError naming the upload or file for every refusal (two patients, a missing slice, ...)."""
    options = options or DicomOptions()
    if not files:
        raise InputDataError("upload", "no files were uploaded")
    zipped = len(files) == 1 and files[0].name.lower().endswith(".zip")
    zips = [f.name for f in files if f.name.lower().endswith(".zip")]
    if zips and not zipped:
        raise InputDataError(zips[0], "upload a zip on its own (one zip of one DICOM study)")
    sizes = checked_sizes(files, max_bytes)
    upload_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dicom-", dir=upload_root))
    names = _Names(folder, files, zipped)
    try:
        if not zipped:
            names.study.mkdir()
        for upload, size, path in zip(files, sizes, names.disk_paths(), strict=True):
            copy_at_most(upload, size, path)
        model_case, report, native = _load(names, options, folder / "unpacked")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if options.reference is not None and report.reference != options.reference:
        used = ", ".join(model_case.available)
        wanted = options.reference
        raise InputDataError(names.shown, f"reference {wanted}: no series is used as {wanted} (used: {used})")
    # The copies are gone: no source path may send an exporter looking for them (or for a namesake).
    model_case = dataclasses.replace(model_case, source_paths=())
    native = dataclasses.replace(native, case=dataclasses.replace(native.case, source_paths=()))
    model_case, mask, line = _brain(model_case, native, options.brain_extraction)
    steps = tuple(names.shown_text(note) for note in report.notes) + ((line,) if line else ())
    report = dataclasses.replace(report, notes=tuple(names.shown_text(n) for n in report.notes))
    logger.info("read a DICOM upload: %d series, %d used", len(report.rows), len(report.used))
    return DicomUpload(names.shown, model_case, report, native, steps, mask, options, upload_root)


# --------------------------------------------------------------------------------------------- exports


def _on_reference_grid(label: np.ndarray, upload: DicomUpload, on_reference_grid: bool) -> np.ndarray:
    label = np.asarray(label)
    if on_reference_grid:
        if label.shape != upload.native.case.shape:
            raise ValueError(f"label {label.shape} is not on the reference grid {upload.native.case.shape}")
        return label
    return upload.native(label)  # ValueError when it is not on the model grid either


def segmentation_nifti_bytes(
    label: np.ndarray, upload: DicomUpload, *, on_reference_grid: bool = False
) -> bytes:
    """``label`` (BraTS labels on the model grid, or on the reference grid with ``on_reference_grid``) as
    .nii.gz bytes on the reference series' grid: its affine and shape, qform and sform code 1 (scanner),
    as ``predict`` writes it."""
    from medvision.app_support.viewer import segmentation_nifti_bytes as nifti_bytes

    return nifti_bytes(
        _on_reference_grid(label, upload, on_reference_grid), upload.native.case, upload.scratch
    )


def dicom_seg_bytes(label: np.ndarray, upload: DicomUpload, *, on_reference_grid: bool = False) -> bytes:
    """``label`` (as for :func:`segmentation_nifti_bytes`) as DICOM-SEG bytes referencing the reference
    series (highdicom; one segment per BraTS label present)."""
    from medvision.dicom.seg_export import write_dicom_seg

    # highdicom logs every module it copies, naming instance UIDs: not for the app's log.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    native = _on_reference_grid(label, upload, on_reference_grid).astype(np.uint8)
    upload.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seg-", dir=upload.scratch) as tmp:
        path = write_dicom_seg(native, upload.reference_datasets, Path(tmp) / "segmentation.dcm")
        return path.read_bytes()
