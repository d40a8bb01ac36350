"""Write a :class:`Case` in the on-disk layouts MedVision reads (BraTS folders, Kaggle slices, MSD 4-D NIfTI).

Layouts:

- BraTS 2018-2021: ``<out>/<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii.gz`` (``naming="2021"``) or BraTS 2023
  ``<ID>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (``naming="2023"``, ET stored as 3); images int16, seg uint8.
- Kaggle BraTS2020: ``<out>/volume_<v>_slice_<s>.h5``, one file per axial slice with ``image``
  (H, W, 4) float64 in flair, t1, t1ce, t2 order and ``mask`` (H, W, 3) uint8 one-hot NCR/NET, ED, ET.
- Medical Segmentation Decathlon Task01: ``<images>/<ID>.nii.gz`` 4-D (i, j, k, 4) with channels
  FLAIR, T1w, T1gd, T2w and ``<labels>/<ID>.nii.gz`` with 1 ED, 2 NET, 3 ET.

NIfTI arrays use the case.py axis convention (``nifti = case_to_nifti_axes(volume)``) and the case's
affine. Every file is written to a temporary name in the target folder and moved into place with
``os.replace``, so a reader never sees half a file and an existing file is only ever replaced whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from medvision.atomic import atomic_path
from medvision.data.case import MODALITIES, Case, case_to_nifti_axes

logger = logging.getLogger(__name__)

BRATS_SUFFIXES: dict[str, dict[str, str]] = {
    "2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
KAGGLE_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
# BraTS label -> MSD Task01 label (ED 2 -> 1, NCR/NET 1 -> 2, ET 4 -> 3).
_MSD_FROM_BRATS = np.array([0, 2, 1, 0, 3], dtype=np.uint8)
_INT16 = np.iinfo(np.int16)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then move it onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def _as_int16(volume: np.ndarray) -> np.ndarray:
    # Images are int16-valued by construction; rounding and clipping only guards against foreign Cases.
    return np.clip(np.rint(volume), _INT16.min, _INT16.max).astype(np.int16)


def _save_nifti(
    data: np.ndarray, affine: np.ndarray, path: Path, header: nib.Nifti1Header | None = None
) -> Path:
    image = nib.Nifti1Image(data, affine, header=header)
    image.header.set_data_dtype(data.dtype)
    image.header.set_xyzt_units("mm", "sec")
    # A plain qform/sform pair (code 1, scanner) like the BraTS files.
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return _atomic_write(path, lambda tmp: nib.save(image, tmp))


def write_brats_folder(case: Case, out_dir: str | Path, naming: str = "2021", compress: bool = True) -> Path:
    """Write ``case`` as a BraTS case folder ``<out_dir>/<case_id>/``; returns the folder."""
    if naming not in BRATS_SUFFIXES:
        raise ValueError(f"naming must be one of {tuple(BRATS_SUFFIXES)}, got {naming!r}")
    suffixes = BRATS_SUFFIXES[naming]
    ext = ".nii.gz" if compress else ".nii"
    folder = Path(out_dir) / case.case_id
    if folder.is_dir() and any(folder.iterdir()):
        logger.info("replacing files in existing case folder %s", folder)
    folder.mkdir(parents=True, exist_ok=True)
    for channel, modality in enumerate(MODALITIES):
        data = case_to_nifti_axes(_as_int16(case.image[channel]))
        _save_nifti(data, case.affine, folder / f"{case.case_id}{suffixes[modality]}{ext}")
    if case.label is not None:
        label = case.label.astype(np.uint8)
        if naming == "2023":
            label = np.where(label == 4, 3, label).astype(np.uint8)
        _save_nifti(case_to_nifti_axes(label), case.affine, folder / f"{case.case_id}{suffixes['seg']}{ext}")
    logger.debug("wrote BraTS folder %s", folder)
    return folder


def write_kaggle_slices(case: Case, out_dir: str | Path, volume_index: int) -> list[Path]:
    """Write one ``volume_<v>_slice_<s>.h5`` per axial slice (Kaggle BraTS2020 layout); returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = [MODALITIES.index(m) for m in KAGGLE_ORDER]
    # (4, D, H, W) -> (D, H, W, 4): each slice is then a contiguous (H, W, 4) block.
    image = np.moveaxis(case.image[order], 0, -1).astype(np.float64)
    label = case.label if case.label is not None else np.zeros(case.shape, dtype=np.uint8)
    mask = np.stack([label == 1, label == 2, label == 4], axis=-1).astype(np.uint8)
    if (out / f"volume_{volume_index}_slice_0.h5").exists():
        logger.info("replacing existing slices of volume %d in %s", volume_index, out)
    paths = []
    for k in range(case.shape[0]):

        def write(tmp: Path, k: int = k) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("image", data=image[k])
                f.create_dataset("mask", data=mask[k])

        paths.append(_atomic_write(out / f"volume_{volume_index}_slice_{k}.h5", write))
    return paths


def write_decathlon(case: Case, images_dir: str | Path, labels_dir: str | Path) -> Path:
    """Write ``case`` as an MSD Task01 pair ``<images_dir>/<id>.nii.gz`` (+ label); returns the image path."""
    data = np.stack([case_to_nifti_axes(_as_int16(case.image[c])) for c in range(len(MODALITIES))], axis=-1)
    image_path = _save_nifti(data, case.affine, Path(images_dir) / f"{case.case_id}.nii.gz")
    if case.label is not None:
        msd = _MSD_FROM_BRATS[case.label.astype(np.intp)]
        _save_nifti(case_to_nifti_axes(msd), case.affine, Path(labels_dir) / f"{case.case_id}.nii.gz")
    return image_path


def save_label_nifti(
    label: np.ndarray, reference_case: Case, path: str | Path, header: nib.Nifti1Header | None = None
) -> Path:
    """Save a (D, H, W) label volume as uint8 NIfTI with ``reference_case``'s affine (and optional header)."""
    label = np.asarray(label)
    if label.shape != reference_case.shape:
        raise ValueError(f"label shape {label.shape} does not match the case shape {reference_case.shape}")
    if header is not None:
        header = header.copy()
    return _save_nifti(case_to_nifti_axes(label.astype(np.uint8)), reference_case.affine, Path(path), header)
