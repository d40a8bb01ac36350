"""Putting series on the reference grid and the model grid, tried as a new user would: a real BraTS case
whose T1 was reoriented or resampled by nibabel comes back onto the FLAIR grid, BRAINIX's NIfTI
conversions (LAS, 0.8 mm) go to the model's LPS 1 mm grid and labels come back to the FLAIR grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from dicom_fixtures import BRAINIX, BRATS_CASE
from nibabel.processing import resample_to_output

from medvision.data.case import MODALITIES, Case, nifti_to_case_axes
from medvision.data.native_grid import (
    GridNote,
    InputVolume,
    choose_reference,
    rigid_refinement,
    to_model_grid,
    to_reference_grid,
)

SLAB = slice(60, 84)  # 24 axial slices through the tumour keep every test here fast


@pytest.fixture(scope="module")
def brats() -> dict[str, InputVolume]:
    volumes = {}
    for modality in ("flair", "t1"):
        image = nib.load(BRATS_CASE / f"BraTS2021_00006_{modality}.nii.gz")
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, 2] * SLAB.start
        data = np.asarray(image.dataobj, dtype=np.float32)[:, :, SLAB]
        volumes[modality] = InputVolume(modality, data, affine, modality)
    return volumes


def test_a_reoriented_series_comes_back_exactly(brats) -> None:
    t1 = nib.Nifti1Image(brats["t1"].data, brats["t1"].affine)
    turned = t1.as_reoriented(np.array([[1, -1], [0, 1], [2, -1]]))  # i <-> j, both flipped, k flipped
    assert nib.aff2axcodes(turned.affine) != nib.aff2axcodes(t1.affine)
    moved = InputVolume("t1", np.asarray(turned.dataobj, dtype=np.float32), turned.affine, "t1 turned")
    notes: list[GridNote] = []
    case = to_reference_grid({"flair": brats["flair"], "t1": moved}, case_id="x", notes=notes)
    np.testing.assert_allclose(case.image[1], nifti_to_case_axes(brats["t1"].data), atol=1e-3)
    np.testing.assert_array_equal(case.affine, brats["flair"].affine)
    assert case.available == ("flair", "t1")
    assert not case.image[2].any() and not case.image[3].any()
    assert len(notes) == 2 and all(n.seconds >= 0 for n in notes)


def test_a_resampled_series_comes_back_close(brats) -> None:
    t1 = nib.Nifti1Image(brats["t1"].data, brats["t1"].affine)
    coarse = resample_to_output(t1, voxel_sizes=(1.5, 1.5, 1.0), order=1)
    moved = InputVolume("t1", np.asarray(coarse.dataobj, dtype=np.float32), coarse.affine, "t1 1.5 mm")
    case = to_reference_grid({"flair": brats["flair"], "t1": moved}, case_id="x")
    original = nifti_to_case_axes(brats["t1"].data)
    inside = original > 0
    error = np.abs(case.image[1][inside] - original[inside]).mean() / original[inside].mean()
    assert error < 0.08  # a 1.5 mm round trip blurs edges, no more
    assert np.corrcoef(case.image[1][inside], original[inside])[0, 1] > 0.95


def test_reference_is_flair_then_t1ce_then_the_first() -> None:
    assert choose_reference(["t1", "t1ce", "flair"]) == "flair"
    assert choose_reference(["t1", "t1ce", "t2"]) == "t1ce"
    assert choose_reference(["t2", "t1"]) == "t2"
    assert choose_reference(["t2", "t1"], "t1") == "t1"
    with pytest.raises(ValueError, match="not among"):
        choose_reference(["t2"], "flair")


def test_model_grid_of_a_1mm_lps_case_is_the_identity(brats) -> None:
    case = to_reference_grid(dict(brats), case_id="x")
    notes: list[GridNote] = []
    model, back = to_model_grid(case, notes=notes)
    assert model.shape == case.shape
    np.testing.assert_allclose(model.affine, case.affine, atol=1e-9)
    np.testing.assert_allclose(model.image, case.image, atol=1e-3)
    label = (case.image[0] > np.percentile(case.image[0], 99)).astype(np.uint8) * 2
    np.testing.assert_array_equal(back(label), label)
    assert [n.step for n in notes] == ["orientation", "model grid"]


def _brainix_case() -> tuple[Case, np.ndarray]:
    flair = nib.load(BRAINIX / "FLAIR.nii.gz")  # a conversion made elsewhere: LAS, 0.8 mm
    roi = np.asarray(nib.load(BRAINIX / "ROI.nii.gz").dataobj).astype(np.uint8)
    image = np.zeros((len(MODALITIES), *nifti_to_case_axes(np.asarray(flair.dataobj)).shape), np.float32)
    image[0] = nifti_to_case_axes(np.asarray(flair.dataobj, dtype=np.float32))
    zooms = flair.header.get_zooms()
    case = Case("brainix", image, flair.affine, (zooms[2], zooms[0], zooms[1]), available=("flair",))
    return case, nifti_to_case_axes(roi) * 2


def test_model_grid_turns_las_to_lps_at_1mm_and_labels_come_back() -> None:
    case, roi = _brainix_case()
    notes: list[GridNote] = []
    model, back = to_model_grid(case, notes=notes)
    assert nib.aff2axcodes(case.affine) == ("L", "A", "S")
    assert nib.aff2axcodes(model.affine) == ("L", "P", "S")
    assert model.shape == (22, 230, 230)
    np.testing.assert_allclose(model.spacing, (6.0, 1.0, 1.0), atol=1e-3)
    assert model.available == ("flair",) and not model.image[1:].any()
    # The same world point before and after: the field of view is kept.
    centre = np.array([143.5, 143.5, 10.0, 1.0])
    model_centre = np.linalg.inv(model.affine) @ case.affine @ centre
    np.testing.assert_allclose(model_centre[:2], [114.5, 114.5], atol=0.6)
    # A label drawn on the model grid (the ROI pushed through by nearest neighbour) comes back onto FLAIR's.
    mask_model, _ = to_model_grid(
        Case("roi", np.stack([roi.astype(np.float32)] * 4), case.affine, case.spacing), notes=[]
    )
    label_model = np.where(mask_model.image[0] >= 1, 2, 0).astype(np.uint8)
    returned = back(label_model)
    assert returned.shape == roi.shape
    dice = 2 * ((returned > 0) & (roi > 0)).sum() / ((returned > 0).sum() + (roi > 0).sum())
    assert dice > 0.9
    assert "LAS -> LPS" in str(notes[0])


def test_rigid_refinement_finds_a_known_shift(brats) -> None:
    flair = brats["flair"]
    crop = (slice(40, 200), slice(30, 210), slice(None))
    data = flair.data[crop]
    affine = flair.affine.copy()
    affine[:3, 3] = (flair.affine @ np.array([40, 30, 0, 1.0]))[:3]
    fixed = InputVolume("flair", data, affine)
    shifted = affine.copy()
    shifted[:3, 3] += [2.0, -1.5, 0.0]  # the same voxels said to lie 2 mm right... of where they are
    transform = rigid_refinement(fixed, InputVolume("t1", data, shifted), iterations=60)
    np.testing.assert_allclose(transform[:3, 3], [2.0, -1.5, 0.0], atol=0.5)
    np.testing.assert_allclose(transform[:3, :3], np.eye(3), atol=0.02)
