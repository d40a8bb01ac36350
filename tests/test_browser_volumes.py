"""Volumes sent to the browser-side viewer: geometry, values, colours and size (medvision/app_support)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medvision.app_support import browser_volumes as bv
from medvision.data.case import Case, case_to_nifti_axes

# A BraTS-like LPS affine with an origin, so a wrong shift of the box would move the world coordinates.
LPS = np.array([[-1.0, 0, 0, 120.0], [0, -1.0, 0, 110.0], [0, 0, 2.0, -40.0], [0, 0, 0, 1.0]])


def _case(label: np.ndarray | None = None, *, scale: float = 1.0) -> Case:
    """(D, H, W) = (6, 10, 12) with an integer-valued head in the block [1:5, 2:8, 3:9]."""
    image = np.zeros((4, 6, 10, 12), dtype=np.float32)
    rng = np.random.default_rng(0)
    image[:, 1:5, 2:8, 3:9] = rng.integers(1, 900, size=(4, 4, 6, 6)) * scale
    return Case("c", image, LPS, (2.0, 1.0, 1.0), label)


def _read(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def test_scan_keeps_integer_values_and_the_affine_and_opens_in_the_window():
    case = _case()
    image = _read(bv.scan_nifti(case, "t1ce", (10.0, 500.0), bv.full_box(case)))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), case_to_nifti_axes(case.image[2]))
    np.testing.assert_allclose(image.affine, LPS)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    assert (float(image.header["cal_min"]), float(image.header["cal_max"])) == (10.0, 500.0)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_a_scan_with_fractional_values_is_scaled_into_int16_with_its_slope():
    case = _case(scale=0.013)
    image = _read(bv.scan_nifti(case, "flair", (0.0, 1e9), bv.full_box(case)))
    values = case_to_nifti_axes(case.image[0])
    slope = float(image.dataobj.slope)  # nibabel moves scl_slope from the header into the data proxy on load
    assert image.get_data_dtype() == np.int16 and slope < 1e-3
    np.testing.assert_allclose(image.get_fdata(), values, atol=slope)
    assert float(image.header["cal_max"]) == pytest.approx(
        values.max(), rel=1e-6
    )  # window clipped to the data


def test_the_box_keeps_every_world_coordinate():
    case = _case()
    box = bv.scan_box(case, margin=1)
    # Case block [1:5, 2:8, 3:9] along (k, i, j) is (i, j, k) = [2:8, 3:9, 1:5] in NIfTI order.
    assert box == bv.Box((1, 2, 0), (9, 10, 6))
    image = _read(bv.scan_nifti(case, "flair", (0.0, 900.0), box))
    assert image.shape == box.shape == (8, 8, 6)
    world_of_corner = image.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(world_of_corner, LPS @ np.array([1, 2, 0, 1.0]))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), box.cut(case_to_nifti_axes(case.image[0])))
    empty = Case("e", np.zeros((4, 3, 4, 5), np.float32), LPS, (1.0, 1.0, 1.0))
    assert bv.scan_box(empty) == bv.full_box(empty) == bv.Box((0, 0, 0), (4, 5, 3))


def test_labels_take_the_apps_colours_on_the_hsv_colormap():
    label = np.zeros((6, 10, 12), dtype=np.uint8)
    label[2, 3, 4], label[2, 3, 5], label[2, 3, 6] = 1, 2, 4
    label[0, 0, 0] = 2  # outside the box of the head
    case = _case(label)
    box = bv.scan_box(case, margin=0)
    overlay = bv.label_overlay(label, LPS, box, name="p.nii.gz")
    assert overlay.colormap == "hsv" and overlay.outside_box == 1
    codes = np.asanyarray(_read(overlay.data).dataobj)
    assert sorted(np.unique(codes).tolist()) == [0, 43, 170, 255]  # yellow, blue, red on NiiVue's hsv
    # NCR red at case voxel (k=2, i=3, j=4) -> NIfTI (3, 4, 2), minus the box corner.
    assert codes[3 - box.start[0], 4 - box.start[1], 2 - box.start[2]] == 255
    shown = bv.label_overlay(label, LPS, box, labels_shown=(4,), name="p.nii.gz")
    assert sorted(np.unique(np.asanyarray(_read(shown.data).dataobj)).tolist()) == [0, 170]
    assert bv.label_overlay(label, LPS, box, labels_shown=(), name="p.nii.gz") is None
    with pytest.raises(ValueError, match="unknown BraTS label 3"):
        bv.label_overlay(label, LPS, box, labels_shown=(3,), name="p.nii.gz")


def test_the_legend_names_the_codes_the_overlays_store():
    label = np.zeros((6, 10, 12), dtype=np.uint8)
    label[2, 3, 4], label[2, 3, 5], label[2, 3, 6] = 1, 2, 4
    case = _case(label)
    codes = np.asanyarray(
        _read(bv.label_overlay(label, LPS, bv.full_box(case), name="p.nii.gz").data).dataobj
    )
    stored = {value: int(codes[3, 4 + n, 2]) for n, value in enumerate((1, 2, 4))}  # NIfTI (i, j, k)
    legend = bv.code_legend("labels")
    for value, name in ((1, "NCR/NET"), (2, "ED"), (4, "ET")):
        assert f"{stored[value]} = {name} (label {value})" in legend
    assert bv.code_legend("errors") == "85 = TP, 213 = FP, 128 = FN"
    with pytest.raises(ValueError, match="unknown legend"):
        bv.code_legend("uncertainty")


def test_errors_are_green_magenta_and_cyan():
    truth = np.zeros((6, 10, 12), dtype=np.uint8)
    predicted = np.zeros_like(truth)
    truth[2, 4, 4:6] = 2
    predicted[2, 4, 5:7] = 4
    case = _case(truth)
    overlay = bv.error_overlay(predicted, truth, "WT", LPS, bv.full_box(case))
    codes = np.asanyarray(_read(overlay.data).dataobj)
    assert (codes[4, 4, 2], codes[4, 5, 2], codes[4, 6, 2]) == (128, 85, 213)  # FN cyan, TP green, FP magenta
    assert bv.error_overlay(predicted, truth, "TC", LPS, bv.full_box(case)).outside_box == 0
    assert bv.error_overlay(truth, truth, "ET", LPS, bv.full_box(case)) is None
    with pytest.raises(ValueError, match="region"):
        bv.error_overlay(predicted, truth, "XX", LPS, bv.full_box(case))


def test_uncertainty_is_a_heat_overlay_in_its_own_units():
    values = np.zeros((6, 10, 12), dtype=np.float32)
    values[2, 4, 4] = 0.25
    values[2, 4, 5] = 0.9  # above the scale's top: drawn at the top
    overlay = bv.heat_overlay(values, LPS, bv.full_box(_case()), vmax=0.5, name="u.nii.gz")
    image = _read(overlay.data)
    assert overlay.colormap == "hot"
    assert image.get_fdata()[4, 4, 2] == pytest.approx(0.25, abs=0.002)
    assert image.get_fdata()[4, 5, 2] == pytest.approx(0.5)
    assert bv.heat_overlay(values * 0, LPS, bv.full_box(_case()), vmax=0.5, name="u.nii.gz") is None


def test_arguments_for_the_component_are_stable_and_draw_voxels_as_voxels():
    case = _case()
    scan = bv.scan_nifti(case, "flair", (0.0, 900.0), bv.full_box(case))
    assert scan == bv.scan_nifti(
        case, "flair", (0.0, 900.0), bv.full_box(case)
    )  # same bytes: a cached message
    heat = bv.Overlay(b"x", "u.nii.gz", "hot", 0)
    args = bv.niivue_arguments(scan, heat, opacity=0.5, radiological=True, layout="axial")
    assert args == bv.niivue_arguments(scan, heat, opacity=0.5, radiological=True, layout="axial")
    assert args["settings"] == {
        "crosshair": True,
        "radiological": True,
        "colorbar": True,
        "interpolation": False,
    }
    assert args["update_interval_ms"] is None and args["filename"] == "scan.nii.gz"
    assert args["overlays"] == [{"data": b"x", "name": "u.nii.gz", "colormap": "hot", "opacity": 0.5}]
    assert bv.niivue_arguments(scan, None, opacity=0.5, radiological=False)["overlays"] == []
    with pytest.raises(ValueError, match="layout"):
        bv.niivue_arguments(scan, None, opacity=0.5, radiological=True, layout="oblique")


def test_transfer_report_counts_base64_bytes():
    report = bv.transfer_report(b"a" * 3_000_000, [("prediction", b"b" * 30_000)])
    assert report.parts == (("scan", 4_000_000), ("prediction", 40_000))
    assert report.text() == "4.0 MB (scan 4.0 MB, prediction 40 kB)"
    assert bv.wire_bytes(1) == 4 and bv.wire_bytes(0) == 0


def test_the_real_case_with_its_segmentation_stays_under_ten_megabytes(real_case_dir):
    from medvision.data.readers import read_brats_folder

    case = read_brats_folder(real_case_dir)
    for box in (bv.full_box(case), bv.scan_box(case)):
        scan = bv.scan_nifti(case, "flair", (0.0, 1000.0), box)
        overlay = bv.label_overlay(case.label, case.affine, box, name="truth.nii.gz")
        assert overlay.outside_box == 0
        report = bv.transfer_report(scan, [("truth", overlay.data)])
        assert report.total < 10_000_000, report.text()
        image = _read(scan)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")


def test_the_viewer_starts_compact_only_where_webgl_is_drawn_in_software():
    assert bv.default_viewer_height(True) == bv.COMPACT_HEIGHT < bv.LARGE_HEIGHT
    assert bv.default_viewer_height(False) == bv.LARGE_HEIGHT
    assert set(bv.VIEWER_HEIGHTS) == {bv.COMPACT_HEIGHT, bv.LARGE_HEIGHT}
    case = _case()
    scan = bv.scan_nifti(case, "flair", (0.0, 900.0), bv.full_box(case))
    assert bv.niivue_arguments(scan, None, opacity=0.5, radiological=True)["height"] == bv.LARGE_HEIGHT
    compact = bv.niivue_arguments(scan, None, opacity=0.5, radiological=True, height=bv.COMPACT_HEIGHT)
    assert compact["height"] == bv.COMPACT_HEIGHT
