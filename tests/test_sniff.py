"""Telling files apart by content, tried as a new user would upload them: ``.nii.gz.gz``, DICOM without an
extension or a preamble, NRRD, HDF5, zip, and text pretending to be a scan."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_fixtures import BRAINIX, BRATS_CASE

from medvision.confinement import Confinement
from medvision.data.sniff import gzip_bytes, open_any_nifti, read_any_volume, read_nrrd, sniff
from medvision.errors import InputDataError, PathNotAllowedError


@pytest.fixture(scope="module")
def small_nifti(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nib.Nifti1Image]:
    """A 3-slice crop of the real BraTS FLAIR with its real header, as a plain .nii."""
    source = nib.load(BRATS_CASE / "BraTS2021_00006_flair.nii.gz")
    image = nib.Nifti1Image(np.asarray(source.dataobj)[:, :, 70:73], source.affine, source.header)
    path = tmp_path_factory.mktemp("sniff") / "flair.nii"
    nib.save(image, path)
    return path, nib.load(path)


def test_kinds_by_content_whatever_the_name(tmp_path: Path, small_nifti) -> None:
    path, _ = small_nifti
    raw = path.read_bytes()
    files = {
        "plain.nii": raw,
        "scan.nii.gz": gzip_bytes(raw),
        "scan.nii.gz.gz": gzip_bytes(gzip_bytes(raw)),
        "named_like.zip": gzip_bytes(raw),  # a misnamed NIfTI is still a NIfTI
        "IM0001": (BRAINIX / "DICOM" / "FLAIR" / "IM-0001-0001.dcm").read_bytes(),
        "notes.nii.gz": b"hello, this is text",
        "empty.dcm": b"",
        "other.gz": gzip_bytes(b"just text"),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "case.bin", "w") as zf:
        zf.writestr("a.txt", "x")
    with h5py.File(tmp_path / "slice.h5", "w") as handle:
        handle["image"] = np.zeros((4, 4))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32)), str(tmp_path / "volume.nrrd"))
    expected = {
        "plain.nii": "nifti",
        "scan.nii.gz": "nifti",
        "scan.nii.gz.gz": "nifti",
        "named_like.zip": "nifti",
        "IM0001": "dicom",
        "notes.nii.gz": "unknown",
        "empty.dcm": "unknown",
        "other.gz": "gzip",
        "case.bin": "zip",
        "slice.h5": "hdf5",
        "volume.nrrd": "nrrd",
    }
    assert {name: sniff(tmp_path / name) for name in expected} == expected
    assert sniff(tmp_path) == "folder"


def test_dicom_without_preamble_is_recognised(tmp_path: Path) -> None:
    ds = pydicom.dcmread(BRAINIX / "DICOM" / "T1" / "IM-0001-0001.dcm")
    del ds.file_meta  # written as a bare implicit-VR data set, as some old exports are
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "bare", ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (tmp_path / "bare").read_bytes()[128:132] != b"DICM"
    assert sniff(tmp_path / "bare") == "dicom"


def test_nii_gz_gz_is_read_with_its_affine_and_codes(tmp_path: Path, small_nifti) -> None:
    path, original = small_nifti
    odd = tmp_path / "BraTS2021_00006_flair.nii.gz.gz"
    odd.write_bytes(gzip_bytes(gzip.compress(path.read_bytes())))
    volume = open_any_nifti(odd)
    np.testing.assert_array_equal(volume.data, np.asarray(original.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(volume.affine, original.affine)
    assert (volume.qform_code, volume.sform_code) == (1, 1)


def test_odd_niftis_are_refused_clearly(tmp_path: Path, small_nifti) -> None:
    path, _ = small_nifti
    layered = path.read_bytes()
    for _ in range(4):
        layered = gzip_bytes(layered)
    (tmp_path / "deep.nii.gz").write_bytes(layered)
    with pytest.raises(InputDataError, match="more than 3 gzip layers"):
        open_any_nifti(tmp_path / "deep.nii.gz")
    (tmp_path / "text.nii.gz").write_bytes(gzip_bytes(b"not an image at all"))
    with pytest.raises(InputDataError, match="not a NIfTI"):
        open_any_nifti(tmp_path / "text.nii.gz")
    (tmp_path / "big.nii.gz").write_bytes(gzip_bytes(path.read_bytes()))
    with pytest.raises(InputDataError, match="limit of 1,000"):
        open_any_nifti(tmp_path / "big.nii.gz", max_bytes=1000)
    (tmp_path / "cut.nii.gz").write_bytes(gzip_bytes(path.read_bytes())[:-200])
    with pytest.raises(InputDataError, match="truncated|damaged"):
        open_any_nifti(tmp_path / "cut.nii.gz")


def test_a_link_leading_out_of_the_folder_is_not_sniffed(tmp_path: Path, small_nifti) -> None:
    path, _ = small_nifti
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link.nii").symlink_to(path)
    within = Confinement.of([tmp_path / "inside"])
    with pytest.raises(PathNotAllowedError):
        sniff(tmp_path / "inside" / "link.nii", within=within)
    with pytest.raises(PathNotAllowedError):
        open_any_nifti(tmp_path / "inside" / "link.nii", within=within)


def test_nrrd_is_read_in_ras_with_the_nifti_geometry(tmp_path: Path, small_nifti) -> None:
    path, original = small_nifti
    image = sitk.ReadImage(str(path))  # SimpleITK converts the NIfTI to LPS and writes the NRRD in LPS
    sitk.WriteImage(image, str(tmp_path / "flair.nrrd"))
    volume = read_nrrd(tmp_path / "flair.nrrd")
    np.testing.assert_allclose(volume.affine, original.affine, atol=1e-5)
    np.testing.assert_array_equal(volume.data, np.asarray(original.dataobj, dtype=np.float32))
    again = read_any_volume(tmp_path / "flair.nrrd")  # told apart by content, as an upload would be
    np.testing.assert_array_equal(again.data, volume.data)
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\n")
    with pytest.raises(InputDataError, match="NRRD"):
        read_nrrd(tmp_path / "bad.nrrd")
