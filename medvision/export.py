"""Prediction export to NIfTI in the input's geometry, written atomically.

Every file is written to a temporary name in the destination folder and moved into place with
``os.replace``, so a failed or interrupted export never leaves a partial file under the final name.
The header is copied from the case's first source file when that is a readable NIfTI (keeping
qform/sform codes, units and description fields), else built from the case's affine alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from medvision.atomic import atomic_path
from medvision.data.case import Case, case_to_nifti_axes
from medvision.errors import InputDataError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def check_nifti_path(path: str | Path) -> Path:
    """``path`` as a Path, or InputDataError when it does not end with .nii or .nii.gz."""
    path = Path(path)
    if not path.name.endswith(NIFTI_SUFFIXES) or path.name in NIFTI_SUFFIXES:
        raise InputDataError(path, "output file name must end with .nii.gz or .nii")
    return path


def _reference_header(case: Case) -> nib.Nifti1Header | None:
    """The header of the case's first source file when it is a NIfTI that can still be read."""
    if not case.source_paths:
        return None
    source = Path(case.source_paths[0])
    if not source.name.endswith(NIFTI_SUFFIXES) or not source.is_file():
        return None
    try:
        header = nib.load(source).header
    except Exception as exc:  # a source that vanished or changed: fall back to the affine alone
        logger.info("cannot reuse the header of %s (%s); writing the affine only", source, exc)
        return None
    return nib.Nifti1Header.from_header(header)


def _nifti_image(data: np.ndarray, case: Case, description: str) -> nib.Nifti1Image:
    header = _reference_header(case)
    image = nib.Nifti1Image(data, np.asarray(case.affine, dtype=np.float64), header=header)
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
