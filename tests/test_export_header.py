"""Exported predictions keep the input's geometry header, tried as a new user would get them: the real BraTS
case read from its folder and from a zip (where the export used to write qform_code 0 / sform_code 2
instead of the input's 1 / 1), and a case read from DICOM (qform and sform code 1, the reference affine)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_fixtures import write_series

from medvision.data.readers import read_brats_folder, read_zip
from medvision.dicom import read_study
from medvision.export import save_prediction_nifti, save_probabilities_nifti


def _codes(path: Path) -> tuple[int, int]:
    header = nib.load(path).header
    return int(header["qform_code"]), int(header["sform_code"])


@pytest.fixture(scope="module")
def real_case(real_case_dir: Path):
    return read_brats_folder(real_case_dir)


def test_real_case_from_its_folder_keeps_codes_and_affine(
    tmp_path: Path, real_case, real_case_dir: Path
) -> None:
    source = nib.load(real_case_dir / "BraTS2021_00006_flair.nii.gz")
    out = save_prediction_nifti(real_case.label, real_case, tmp_path / "pred.nii.gz")
    written = nib.load(out)
    assert _codes(out) == (int(source.header["qform_code"]), int(source.header["sform_code"])) == (1, 1)
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(written.header.get_qform(), source.affine)
    np.testing.assert_array_equal(
        np.asarray(written.dataobj),
        np.asarray(nib.load(real_case_dir / "BraTS2021_00006_seg.nii.gz").dataobj),
    )


def test_real_case_from_a_zip_keeps_codes_and_affine(tmp_path: Path, real_case_dir: Path) -> None:
    archive = tmp_path / "BraTS2021_00006.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(real_case_dir.glob("*.nii.gz")):
            zf.write(path, f"BraTS2021_00006/{path.name}")
    case = read_zip(archive, scratch_dir=tmp_path / "scratch")
    probabilities = np.zeros((3, *case.shape), dtype=np.float32)
    for out in (
        save_prediction_nifti(case.label, case, tmp_path / "pred.nii.gz"),
        save_probabilities_nifti(probabilities, case, tmp_path / "prob.nii.gz"),
    ):
        assert _codes(out) == (1, 1)  # was (0, 2): the header was not found behind the zip
        np.testing.assert_array_equal(
            nib.load(out).affine, nib.load(real_case_dir / "BraTS2021_00006_flair.nii.gz").affine
        )


def test_case_from_dicom_writes_scanner_codes_and_the_reference_affine(
    tmp_path: Path, real_case_dir: Path
) -> None:
    flair = nib.load(real_case_dir / "BraTS2021_00006_flair.nii.gz")
    affine = flair.affine.copy()
    affine[:3, 3] += affine[:3, 2] * 70
    write_series(tmp_path / "study", np.asarray(flair.dataobj)[:, :, 70:74], affine)
    study = read_study(tmp_path / "study")
    label = np.zeros(study.case.shape, dtype=np.uint8)
    label[1, 100:110, 120:130] = 4
    out = save_prediction_nifti(label, study.case, tmp_path / "pred.nii.gz")
    written = nib.load(out)
    assert _codes(out) == (1, 1)
    np.testing.assert_allclose(written.affine, study.case.affine, atol=1e-5)
    np.testing.assert_allclose(written.header.get_qform(), study.case.affine, atol=1e-5)
    assert (np.asarray(written.dataobj)[100:110, 120:130, 1] == 4).all()  # Case (k, i, j) -> NIfTI (i, j, k)
