"""DICOM studies as a new user would bring them: the real BRAINIX study (FLAIR, T1, T2 on different grids,
a drawn ROI series posing as an image), a few slices of a real BraTS case written as DICOM, and the broken
uploads a study import must refuse with a message naming the series and the problem."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_fixtures import BRATS_CASE, brainix_dir, write_series  # noqa: F401 - brainix_dir is a fixture
from pydicom.dataset import Dataset

from medvision.confinement import Confinement
from medvision.dicom import is_dicom_study, load_study, read_study
from medvision.dicom.modality import assign_modality
from medvision.dicom.scan import scan_study
from medvision.dicom.volume import read_series_volume
from medvision.errors import InputDataError


@pytest.fixture(scope="module")
def brainix_loaded(brainix_dir: Path):  # noqa: F811
    return load_study(brainix_dir / "DICOM")


@pytest.fixture(scope="module")
def brats_slab() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six axial slices (k = 70..75, through the tumour) of BraTS2021_00006's FLAIR and seg + their affine."""
    flair = nib.load(BRATS_CASE / "BraTS2021_00006_flair.nii.gz")
    seg = nib.load(BRATS_CASE / "BraTS2021_00006_seg.nii.gz")
    affine = flair.affine.copy()
    affine[:3, 3] += affine[:3, 2] * 70
    return np.asarray(flair.dataobj)[:, :, 70:76], np.asarray(seg.dataobj)[:, :, 70:76], affine


# ------------------------------------------------------------------------------------------ BRAINIX


def test_brainix_series_found_and_modalities_assigned(brainix_loaded) -> None:
    model_case, report, native = brainix_loaded
    by_number = {row.series: row for row in report.rows}
    assert set(by_number) == {"301", "401", "601", "5339"}
    assert (by_number["401"].modality, by_number["401"].status) == ("flair", "used (reference)")
    assert (by_number["601"].modality, by_number["601"].status) == ("t1", "used")
    assert (by_number["301"].modality, by_number["301"].status) == ("t2", "used")
    assert report.reference == "flair"
    assert native.case.available == model_case.available == ("flair", "t1", "t2")
    assert not native.case.image[2].any()  # no T1ce in BRAINIX: its channel stays zero
    assert native.case.shape == (22, 288, 288)


def test_brainix_roi_series_is_neither_a_modality_nor_a_label(brainix_loaded) -> None:
    _, report, native = brainix_loaded
    roi = next(r for r in report.rows if r.series == "5339")
    assert roi.status == "skipped" and roi.modality == ""
    assert "region of interest" in roi.reason
    assert native.case.label is None
    assert len(native.reference_datasets) == 22
    assert {str(ds.SeriesNumber) for ds in native.reference_datasets} == {"401"}


def test_brainix_geometry_equals_the_nifti_conversions(brainix_dir: Path) -> None:  # noqa: F811
    root = brainix_dir / "DICOM"
    scan = scan_study(root)
    names = {"301": "T2", "401": "FLAIR", "601": "T1"}
    for series in scan.candidates:
        volume = read_series_volume(series, within=Confinement.around(root), where=str(root))
        ours = nib.as_closest_canonical(nib.Nifti1Image(volume.data, volume.affine))
        theirs = nib.as_closest_canonical(nib.load(brainix_dir / f"{names[str(series.number)]}.nii.gz"))
        np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
        np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())
        assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")  # the BraTS orientation, no flips


def test_brainix_model_grid_is_1mm_in_plane_with_native_slices(brainix_loaded) -> None:
    model_case, report, native = brainix_loaded
    assert model_case.shape == (22, 230, 230)
    np.testing.assert_allclose(model_case.spacing, (6.0, 1.0, 1.0), atol=1e-3)
    label = np.zeros(model_case.shape, dtype=np.uint8)
    label[10, 100:120, 90:130] = 2
    back = native(label)
    assert back.shape == native.case.shape
    assert set(np.unique(back)) == {0, 2}
    assert abs((back == 2).sum() * 0.7986**2 - 20 * 40) < 0.05 * 800  # same area in mm^2
    assert any(note.startswith("model grid") for note in report.notes)


def test_no_patient_data_in_report_notes_or_case_id(brainix_loaded) -> None:
    model_case, report, _ = brainix_loaded
    text = " ".join(report.lines()) + str(report.table()) + model_case.case_id
    for secret in ("BRAINIX", "5Yp0E", "19490301"):
        assert secret.lower() not in text.lower()


# ------------------------------------------------------------------------------- written from BraTS


def test_brats_slices_written_as_dicom_read_back_with_the_same_geometry(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    write_series(tmp_path / "study", flair, affine)
    study = read_study(tmp_path / "study")
    np.testing.assert_allclose(study.case.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(study.case.image[0], np.transpose(flair, (2, 0, 1)))
    assert study.case.available == ("flair",)
    assert study.case.source_paths[0].name == "IM0000.dcm"


def test_zip_of_a_study_is_read_and_named_by_the_archive(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    write_series(tmp_path / "study" / "flair", flair, affine)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "study").rglob("*.dcm")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    assert is_dicom_study(archive) and is_dicom_study(tmp_path / "study")
    assert not is_dicom_study(BRATS_CASE) and not is_dicom_study(tmp_path / "nowhere")
    study = read_study(archive, scratch_dir=tmp_path / "scratch")
    assert study.case.source_paths == (archive,)
    np.testing.assert_allclose(study.case.affine, affine, atol=1e-6)
    # A broken zipped study names the archive, not the temporary folder it was unpacked into.
    (tmp_path / "study" / "flair" / "IM0002.dcm").unlink()
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        for path in sorted((tmp_path / "study").rglob("*.dcm")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
    with pytest.raises(InputDataError, match="missing slice") as caught:
        read_study(broken, scratch_dir=tmp_path / "scratch")
    assert str(broken) in str(caught.value) and "medvision-dicom-" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"slices": [0, 1, 3, 4, 5]}, "missing slice"),
        ({"slices": [0, 1, 2, 2, 3, 4, 5]}, "duplicated slice"),
        ({"positions_mm": [0.0, 1.0, 2.0, 3.4, 4.4, 5.4]}, "uneven slice spacing"),
    ],
    ids=["slice removed", "slice duplicated", "uneven spacing"],
)
def test_broken_stacks_are_refused_naming_the_series(tmp_path: Path, brats_slab, change, problem) -> None:
    flair, _, affine = brats_slab
    write_series(tmp_path / "study", flair, affine, description="t2_flair_tra", series_number=7, **change)
    with pytest.raises(InputDataError, match=problem) as caught:
        read_study(tmp_path / "study")
    assert "series 7 't2_flair_tra'" in str(caught.value)


def test_a_study_over_the_voxel_budget_is_refused_before_decoding(
    tmp_path: Path, brats_slab, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medvision.dicom import study as study_module

    flair, _, affine = brats_slab
    write_series(tmp_path / "study", flair, affine, description="t2_flair_tra", series_number=7)
    voxels = flair.size
    decoded: list[str] = []
    real_read = study_module.read_series_volume
    monkeypatch.setattr(
        study_module, "read_series_volume", lambda s, **kw: decoded.append(s.label) or real_read(s, **kw)
    )
    with pytest.raises(InputDataError, match="more than the limit") as caught:
        read_study(tmp_path / "study", max_voxels=voxels - 1)
    assert f"series 7 't2_flair_tra' {voxels:,}" in str(caught.value) and str(tmp_path / "study") in str(
        caught.value
    )
    assert decoded == []  # refused from the headers alone
    assert read_study(tmp_path / "study", max_voxels=voxels).case.available == ("flair",)
    assert decoded == ["series 7 't2_flair_tra'"]


def test_two_patients_in_one_upload_are_refused_without_naming_them(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    write_series(tmp_path / "study" / "a", flair, affine, patient_id="PATIENT-AAA")
    write_series(tmp_path / "study" / "b", flair, affine, patient_id="PATIENT-BBB", description="t1_se_tra")
    with pytest.raises(InputDataError, match="different patients") as caught:
        read_study(tmp_path / "study")
    assert "PATIENT-" not in str(caught.value)


def test_a_slice_in_another_orientation_is_not_one_stack(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    paths = write_series(tmp_path / "study", flair, affine)
    ds = pydicom.dcmread(paths[3])
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(paths[3])
    with pytest.raises(InputDataError, match="not one parallel stack"):
        read_study(tmp_path / "study")


def test_undecodable_compression_is_refused(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    paths = write_series(tmp_path / "study", flair, affine)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputDataError, match="cannot decode|nothing installed here can decode"):
        read_study(tmp_path / "study")


def test_localizers_non_images_and_derived_series_are_skipped_with_a_note(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    write_series(tmp_path / "study" / "flair", flair, affine, series_number=3)
    for number, (image_type, description) in enumerate(
        [(["ORIGINAL", "PRIMARY", "LOCALIZER"], "scan_plan"), (["DERIVED", "SECONDARY", "ADC"], "t2_map")],
        start=4,
    ):
        for path in write_series(tmp_path / "study" / str(number), flair, affine, series_number=number):
            ds = pydicom.dcmread(path)
            ds.ImageType, ds.SeriesDescription = image_type, description
            ds.save_as(path)
    sr = pydicom.dcmread(tmp_path / "study" / "flair" / "IM0000.dcm")
    sr.Modality, sr.SeriesInstanceUID, sr.SeriesNumber = "SR", pydicom.uid.generate_uid(), 9
    sr.save_as(tmp_path / "study" / "report.dcm")
    (tmp_path / "study" / "notes.txt").write_text("not a DICOM file")
    study = read_study(tmp_path / "study")
    reasons = {row.series: (row.status, row.reason) for row in study.report.rows}
    assert reasons["3"][0] == "used (reference)"
    assert reasons["4"][0] == reasons["5"][0] == reasons["9"][0] == "skipped"
    assert (
        "localizer" in reasons["4"][1] and "derived" in reasons["5"][1] and "not an image" in reasons["9"][1]
    )
    assert any("not DICOM were ignored" in note for note in study.report.notes)


def test_overrides_choose_and_leave_out_series(tmp_path: Path, brats_slab) -> None:
    flair, _, affine = brats_slab
    neither = (1200.0, 45.0, None)  # neither T1 nor T2 nor FLAIR by its figures, and names that say nothing
    write_series(
        tmp_path / "study" / "a", flair, affine, description="sequence A", series_number=11, tr_te_ti=neither
    )
    write_series(
        tmp_path / "study" / "b",
        flair + 5,
        affine,
        description="sequence B",
        series_number=12,
        tr_te_ti=neither,
    )
    with pytest.raises(InputDataError, match="no series could be assigned"):
        read_study(tmp_path / "study")
    study = read_study(tmp_path / "study", overrides={"t1": "sequence B", "flair": "11"})
    assert study.case.available == ("flair", "t1")
    np.testing.assert_array_equal(study.case.image[1], np.transpose(flair + 5, (2, 0, 1)))
    study = read_study(tmp_path / "study", overrides={"flair": "none", "t2": "12"})
    assert study.case.available == ("t2",)
    with pytest.raises(InputDataError, match="no series matches 'nope'"):
        read_study(tmp_path / "study", overrides={"t1": "nope"})


def test_a_study_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("hello")
    with pytest.raises(InputDataError, match="holds no DICOM files"):
        read_study(tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty")


# ------------------------------------------------------------------------------- modality from headers


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("values", "modality"),
    [
        (
            {
                "SeriesDescription": "sT2W/FLAIR",
                "RepetitionTime": 9000,
                "EchoTime": 100,
                "InversionTime": 2500,
            },
            "flair",
        ),
        ({"SeriesDescription": "t2_tirm_tra_dark-fluid"}, "flair"),
        ({"SeriesDescription": "T1 MPRAGE +C"}, "t1ce"),
        ({"SeriesDescription": "t1_se_tra", "ContrastBolusAgent": "Gadovist"}, "t1ce"),
        ({"SeriesDescription": "T1/SE/extrp", "RepetitionTime": 450, "EchoTime": 10}, "t1"),
        ({"SeriesDescription": "AX T2 FSE"}, "t2"),
        ({"SeriesDescription": "ep2d_diff_3scan_trace"}, "unknown"),
        ({"SeriesDescription": "SWI_Images"}, "unknown"),
        ({"SeriesDescription": "sequence 3", "RepetitionTime": 500, "EchoTime": 15}, "t1"),
        ({"SeriesDescription": "sequence 4", "RepetitionTime": 5000, "EchoTime": 110}, "t2"),
        ({"SeriesDescription": "sequence 5"}, "unknown"),
    ],
)
def test_modality_from_names_and_parameters(values: dict, modality: str) -> None:
    assignment = assign_modality(_header(**values))
    assert assignment.modality == modality, assignment.reason
    assert assignment.reason


def test_pixels_through_simpleitk_match_pydicom(tmp_path: Path, brats_slab) -> None:
    """The SimpleITK path (taken for compressed syntaxes pydicom cannot decode here) gives the same volume."""
    flair, _, affine = brats_slab
    write_series(tmp_path / "study", flair, affine)
    (series,) = scan_study(tmp_path / "study").candidates
    within = Confinement.around(tmp_path / "study")
    ours = read_series_volume(series, within=within, where="study")
    other = read_series_volume(dataclasses.replace(series, decoder="simpleitk"), within=within, where="study")
    np.testing.assert_array_equal(other.data, ours.data)
    np.testing.assert_array_equal(ours.data, flair.astype(np.float32))
