"""Prediction export to NIfTI in the input's geometry, written atomically.

Every file is written to a temporary name in the destination folder and moved into place with
``os.replace``, so a failed or interrupted export never leaves a partial file under the final name.
The header is copied from the case's first source file when that is a readable NIfTI, or the FLAIR member
of a zipped case (keeping qform/sform codes, units and description fields); else it is built from the
case's affine with qform and sform code 1 (scanner), which is what an affine from DICOM positions is.
Either way the affine written is the case's, in both the qform and the sform.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from medvision.atomic import atomic_path
from medvision.confinement import Confinement
from medvision.data.case import Case, case_to_nifti_axes
from medvision.errors import InputDataError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
SCANNER_CODE: int = 1  # NIfTI xform code "scanner_anat"
_HEADER_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header is 348


def nifti_stem(name: str) -> str:
    lower = name.lower()
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if lower.endswith(s)), name)


def check_nifti_path(path: str | Path) -> Path:
    """``path`` as a Path, or InputDataError when it does not end with .nii or .nii.gz."""
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES) or path.name in NIFTI_SUFFIXES:
        raise InputDataError(path, "output file name must end with .nii.gz or .nii")
    return path


def _header_from_zip(source: Path) -> nib.Nifti1Header | None:
    """The header of the reference (FLAIR) member of a zipped case, read from its first bytes only."""
    from medvision.data.readers import classify_name  # the reader's own naming rules pick the member

    with zipfile.ZipFile(source) as archive:
        members = [
            i for i in archive.infolist() if not i.is_dir() and i.filename.lower().endswith(NIFTI_SUFFIXES)
        ]
        named = [
            i for i in members if (classify_name(nifti_stem(Path(i.filename).name)) or ("", ""))[1] == "flair"
        ]
        if len(named) != 1:
            return None
        with archive.open(named[0]) as stream:
            raw = stream.read(_HEADER_BYTES) if not named[0].filename.lower().endswith(".gz") else b""
            if not raw:
                with gzip.GzipFile(fileobj=stream) as inflated:
                    raw = inflated.read(_HEADER_BYTES)
    klass = nib.Nifti2Header if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    return nib.Nifti1Header.from_header(klass.from_fileobj(io.BytesIO(raw), check=False))


def _reference_header(case: Case) -> nib.Nifti1Header | None:
    """The header of the case's first source file when it is a NIfTI (or a zipped case holding one) that can
    still be read; None for DICOM, HDF5 and synthetic cases."""
    if not case.source_paths:
        return None
    source = Path(case.source_paths[0])
    try:
        Confinement.around(source).check(source)
        if not source.is_file():
            return None
        if source.name.lower().endswith(".zip"):
            return _header_from_zip(source)
        if not source.name.lower().endswith(NIFTI_SUFFIXES):
            return None
        return nib.Nifti1Header.from_header(nib.load(source).header)
    except Exception as exc:  # a source that vanished or changed: fall back to the affine alone
        logger.info("cannot reuse the header of %s (%s); writing the affine only", source, exc)
        return None


def _xform_codes(header: nib.Nifti1Header | None) -> tuple[int, int]:
    """The source's (qform_code, sform_code) as they were; 1 (scanner) for both without a NIfTI source, since
    the affine then comes from DICOM positions, which are scanner coordinates."""
    if header is None:
        return SCANNER_CODE, SCANNER_CODE
    return int(header["qform_code"]), int(header["sform_code"])


def _nifti_image(data: np.ndarray, case: Case, description: str) -> nib.Nifti1Image:
    header = _reference_header(case)
    qform_code, sform_code = _xform_codes(header)
    affine = np.asarray(case.affine, dtype=np.float64)
    image = nib.Nifti1Image(data, affine, header=header)
    # nibabel marks an affine it did not find in the header as qform 0 / sform 2 ("aligned"); the source's own
    # codes are what tells a viewer that these are the scanner's (or the template's) coordinates.
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    image.set_data_dtype(data.dtype)
    # Our values are stored as they are: no scaling inherited from the source's int16 header.
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = float(data.min()) if data.size else 0.0
    image.header["cal_max"] = float(data.max()) if data.size else 0.0
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    return image


def write_nifti_atomic(image: nib.Nifti1Image, path: str | Path) -> Path:
    """Save ``image`` to ``path`` via a temporary file in the same folder + os.replace."""
    path = check_nifti_path(path)
    with atomic_path(path) as tmp:  # the temporary name keeps .nii(.gz): nibabel picks gzip by the name
        nib.save(image, tmp)
    return path


def _check_volume(array: np.ndarray, case: Case, what: str) -> None:
    if tuple(array.shape[-3:]) != case.shape:
        raise ValueError(f"{what} shape {array.shape} does not match the case's (D, H, W) {case.shape}")


def save_prediction_nifti(label: np.ndarray, case: Case, path: str | Path) -> Path:
    """BraTS label volume (D, H, W) -> uint8 NIfTI (i, j, k) with the input's affine and header."""
    label = np.asarray(label)
    _check_volume(label, case, "label")
    if label.ndim != 3:
        raise ValueError(f"label must be (D, H, W), got {label.shape}")
    data = np.ascontiguousarray(case_to_nifti_axes(label.astype(np.uint8)))
    image = _nifti_image(data, case, "MedVision prediction (BraTS labels 0/1/2/4)")
    image.header.set_intent("label", name="BraTS")
    return write_nifti_atomic(image, path)


def save_probabilities_nifti(
    probabilities: np.ndarray, case: Case, path: str | Path, *, regions: tuple[str, ...] = ("WT", "TC", "ET")
) -> Path:
    """Region probabilities (R, D, H, W) -> 4-D float32 NIfTI (i, j, k, R), channels in ``regions`` order."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    _check_volume(probabilities, case, "probabilities")
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (R, D, H, W), got {probabilities.shape}")
    data = np.ascontiguousarray(np.moveaxis(probabilities, (0, 1), (3, 2)))
    return write_nifti_atomic(_nifti_image(data, case, "MedVision probabilities " + ",".join(regions)), path)


def save_uncertainty_nifti(uncertainty: np.ndarray, case: Case, path: str | Path) -> Path:
    """Per-voxel uncertainty (D, H, W) -> 3-D float32 NIfTI with the input's geometry."""
    uncertainty = np.asarray(uncertainty, dtype=np.float32)
    _check_volume(uncertainty, case, "uncertainty")
    data = np.ascontiguousarray(case_to_nifti_axes(uncertainty))
    return write_nifti_atomic(_nifti_image(data, case, "MedVision MC-dropout uncertainty (std of WT)"), path)
