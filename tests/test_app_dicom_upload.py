"""A DICOM study uploaded in the app, as a new user would bring it: BRAINIX zipped (or its files loose) is
recognised, read with the series table, remapped by the user, drawn for the registration and brain
extraction checks, and exported as NIfTI and DICOM-SEG on the FLAIR grid; broken uploads are refused with
the problem named. Labels are synthetic masks: no model runs here."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_fixtures import brainix_dir, write_series  # noqa: F401 - brainix_dir is a fixture

from medvision.app_support import dicom_choices, dicom_pictures, dicom_upload, render, uploads
from medvision.app_support.uploads import UploadedFile
from medvision.errors import InputDataError

SECRETS = ("BRAINIX", "5Yp0E", "19490301")  # the study's patient name, ID and birth date


def _zip(folder: Path, archive: Path, *, leave_out: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*.dcm")):
            name = path.relative_to(folder.parent).as_posix()
            if name != leave_out:
                zf.write(path, name)
    return archive


def _loose(folder: Path, *series: str) -> list[UploadedFile]:
    """The files of ``series`` as a browser sends them: base names only (they repeat across series)."""
    return [UploadedFile(p.name, p.read_bytes()) for s in series for p in sorted((folder / s).glob("*.dcm"))]


@pytest.fixture(scope="module")
def brainix_zip(brainix_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> UploadedFile:  # noqa: F811
    archive = _zip(brainix_dir / "DICOM", tmp_path_factory.mktemp("zip") / "scans.zip")
    return UploadedFile(archive.name, archive.read_bytes())


@pytest.fixture(scope="module")
def upload_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace") / "uploads"


@pytest.fixture(scope="module")
def brainix_upload(brainix_zip: UploadedFile, upload_root: Path) -> dicom_upload.DicomUpload:
    return dicom_upload.read_dicom_upload([brainix_zip], upload_root, max_bytes=10**8)


@pytest.fixture(scope="module")
def flair_series_uid(brainix_dir: Path) -> str:  # noqa: F811
    first = sorted((brainix_dir / "DICOM" / "FLAIR").glob("*.dcm"))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def _box_label(shape: tuple[int, int, int]) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    d, h, w = shape
    label[d // 2 - 1 : d // 2 + 2, h // 3 : h // 2, w // 3 : w // 2] = 2
    label[d // 2, h // 3 + 5 : h // 3 + 15, w // 3 + 5 : w // 3 + 15] = 4
    return label


# ------------------------------------------------------------------------------------------ recognition


def test_dicom_uploads_are_recognised_by_content(brainix_dir: Path, brainix_zip: UploadedFile) -> None:  # noqa: F811
    assert dicom_upload.is_dicom_upload([brainix_zip])
    loose = _loose(brainix_dir / "DICOM", "FLAIR")
    assert dicom_upload.is_dicom_upload(loose)
    renamed = [UploadedFile(f"slice{n}", f.data) for n, f in enumerate(loose)]  # no suffix at all
    assert dicom_upload.is_dicom_upload(renamed)
    nifti_zip = io.BytesIO()
    with zipfile.ZipFile(nifti_zip, "w") as zf:
        zf.writestr("case/Demo_flair.nii.gz", gzip.compress(b"\x5c\x01" + b"\x00" * 400))
    assert not dicom_upload.is_dicom_upload([UploadedFile("case.zip", nifti_zip.getvalue())])
    assert not dicom_upload.is_dicom_upload([UploadedFile("Demo_flair.nii.gz", b"\x1f\x8b")])
    assert not dicom_upload.is_dicom_upload([UploadedFile("notes.txt", b"hello")])
    assert not dicom_upload.is_dicom_upload([UploadedFile("broken.zip", b"PK\x03\x04 not really")])
    assert not dicom_upload.is_dicom_upload([])
    assert not dicom_upload.is_dicom_upload([brainix_zip, loose[0]])  # a zip must come on its own
    with pytest.raises(InputDataError, match="unsupported file type"):  # the NIfTI path is unchanged
        uploads.classify([UploadedFile("notes.txt", b"hello")])


# ---------------------------------------------------------------------------------------------- reading


def test_brainix_zip_is_read_with_its_series_table(brainix_upload, upload_root: Path) -> None:
    upload = brainix_upload
    rows = {row["series"]: row for row in dicom_choices.series_rows(upload)}
    assert set(rows) == {"301", "401", "601", "5339"}
    assert (rows["401"]["modality"], rows["401"]["status"]) == ("flair", "used (reference)")
    assert (rows["601"]["modality"], rows["601"]["status"]) == ("t1", "used")
    assert (rows["301"]["modality"], rows["301"]["status"]) == ("t2", "used")
    assert rows["5339"]["status"] == "skipped" and "region of interest" in str(rows["5339"]["reason"])
    assert rows["401"]["size"] == "288x288x22" and rows["401"]["spacing (mm)"] == "0.80 x 0.80 x 6.00"
    assert rows["401"]["slices"] == 22
    assert all(isinstance(v, str | int) for row in rows.values() for v in row.values())
    assert upload.case.available == upload.native.case.available == ("flair", "t1", "t2")
    assert upload.native.case.shape == (22, 288, 288) and upload.case.shape == (22, 230, 230)
    assert upload.native.case.label is None  # the ROI series is not taken as a label either
    assert upload.name == "scans.zip" and upload.report.reference == "flair"
    assert len(upload.reference_datasets) == 22
    assert any(step.startswith("scanned 88 DICOM files") for step in upload.steps)
    assert any("brain extracted" in step for step in upload.steps)  # BRAINIX still shows the skull
    assert upload.brain_mask is not None and upload.brain_mask.shape == (22, 288, 288)
    assert (upload.case.image[0] == 0).mean() > 0.6  # cut to the brain: the scalp and neck are gone
    assert (upload.native.case.image[0] == 0).mean() < 0.4  # the reference-grid case keeps them
    assert upload.case.source_paths == upload.native.case.source_paths == ()
    assert list(upload_root.iterdir()) == []  # the copies are gone
    text = upload.name + str(dicom_choices.series_rows(upload)) + " ".join(upload.steps) + upload.case.case_id
    assert not any(secret.lower() in text.lower() for secret in SECRETS)


def test_loose_files_with_repeated_names_are_one_study(brainix_dir: Path, upload_root: Path) -> None:  # noqa: F811
    files = _loose(brainix_dir / "DICOM", "FLAIR", "T1")
    assert len({f.name for f in files}) == 22  # FLAIR and T1 name their files alike
    upload = dicom_upload.read_dicom_upload(
        files, upload_root, max_bytes=10**8, options=dicom_upload.DicomOptions(brain_extraction="off")
    )
    assert upload.case.available == ("flair", "t1") and upload.native.case.shape == (22, 288, 288)
    assert upload.name == "upload (44 files)" and upload.brain_mask is None
    assert dicom_pictures.slice_pictures(upload).brain_outline is None
    assert list(upload_root.iterdir()) == []


def test_the_user_can_remap_the_series(brainix_upload, brainix_zip: UploadedFile, upload_root: Path) -> None:
    options = dicom_choices.modality_options(brainix_upload)
    assert set(options) == {"flair", "t1", "t1ce", "t2"}
    assert options["t1"][0] == dicom_choices.NONE and len(options["t1"]) == 4  # the ROI is no option
    assert dicom_choices.current_choice(brainix_upload, "t1") == "series 601 'T1/SE/extrp'"
    assert dicom_choices.current_choice(brainix_upload, "t1ce") == dicom_choices.NONE
    unchanged = {m: dicom_choices.current_choice(brainix_upload, m) for m in options}
    assert dicom_choices.overrides_from_choices(brainix_upload, unchanged) == {}
    overrides = dicom_choices.overrides_from_choices(brainix_upload, {**unchanged, "t1": dicom_choices.NONE})
    assert overrides == {"t1": None}
    again = dicom_upload.read_dicom_upload(
        [brainix_zip], upload_root, max_bytes=10**8, options=dicom_upload.DicomOptions(overrides=overrides)
    )
    assert again.case.available == ("flair", "t2")
    assert not again.native.case.image[1].any()
    rows = {row["series"]: row for row in dicom_choices.series_rows(again)}
    assert rows["601"]["status"] == "not used"
    assert dicom_choices.current_choice(again, "t1") == dicom_choices.NONE
    with pytest.raises(ValueError, match="not a series of this upload"):
        dicom_choices.overrides_from_choices(brainix_upload, {"t1": "series 5339 'FLAIR_ROI'"})


# --------------------------------------------------------------------------------------------- pictures


def test_pictures_of_a_slice_are_oriented_rgb_and_not_blank(brainix_upload) -> None:
    count = dicom_pictures.axial_slice_count(brainix_upload)
    assert count == 22
    pictures = dicom_pictures.slice_pictures(brainix_upload, 11)
    assert pictures.edges == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert pictures.reference == "flair" and set(pictures.registration) == {"t1", "t2"}
    images = [*pictures.registration.values(), pictures.brain_outline, pictures.brain_cut]
    for image in images:
        assert image is not None and image.shape == (288, 288, 3) and image.dtype == np.uint8
        assert image.std() > 10  # a head, not a blank square
    frame = render.DisplayFrame.from_affine(brainix_upload.native.case.affine)
    flair, t2 = (brainix_upload.native.case.image[c] for c in (0, 3))
    planes = [
        render.to_gray(render.take_slice(v, "axial", 11, frame), render.auto_window(v)) for v in (flair, t2)
    ]
    board = pictures.registration["t2"][..., 0].astype(int)
    from_flair, from_t2 = (np.abs(board - p.astype(int)) <= 1 for p in planes)
    assert (from_flair | from_t2).all()  # every pixel is one series or the other,
    assert 0.4 < from_flair.mean() < 0.8 and 0.4 < from_t2.mean() < 0.8  # in tiles of each
    green = np.all(pictures.brain_outline == dicom_pictures.BRAIN_OUTLINE_COLOUR, axis=-1)
    assert 200 < green.sum() < 288 * 288 // 10  # an outline, not a filled region
    assert (pictures.brain_cut == 0).mean() > 0.3  # scalp and background cut away
    assert dicom_pictures.slice_pictures(brainix_upload).index == 11
    with pytest.raises(IndexError, match="out of range"):
        dicom_pictures.slice_pictures(brainix_upload, count)


def test_registration_pictures_show_before_and_after_the_refinement(
    brainix_upload, brainix_zip: UploadedFile, upload_root: Path
) -> None:
    assert dicom_pictures.slice_pictures(brainix_upload, 11).before_registration == {}  # not refined
    refined = dicom_upload.read_dicom_upload(
        [brainix_zip], upload_root, max_bytes=10**8, options=dicom_upload.DicomOptions(register=True)
    )
    assert any("rigid refinement" in step for step in refined.steps)
    # "Before" is the series as the scanner placed them: what a read without refinement gives.
    for channel, modality in ((1, "t1"), (3, "t2")):
        np.testing.assert_allclose(
            refined.native.unregistered[modality], brainix_upload.native.case.image[channel], atol=1e-3
        )
    pictures = dicom_pictures.slice_pictures(refined, 11)
    assert set(pictures.before_registration) == set(pictures.registration) == {"t1", "t2"}
    plain_read = dicom_pictures.slice_pictures(brainix_upload, 11)
    for modality, board in pictures.before_registration.items():
        assert board.shape == (288, 288, 3) and board.dtype == np.uint8
        # The same window as the refined series: the unrefined read's board differs only by its window.
        assert np.abs(board.astype(int) - plain_read.registration[modality].astype(int)).mean() < 8
    assert any(
        not np.array_equal(pictures.before_registration[m], pictures.registration[m]) for m in ("t1", "t2")
    ), "the refinement moved nothing, so before and after cannot be told apart"


# ---------------------------------------------------------------------------------------------- exports


def test_nifti_bytes_are_on_the_flair_grid(brainix_upload, brainix_dir: Path) -> None:  # noqa: F811
    label = _box_label(brainix_upload.case.shape)  # as the model predicts it, on the model grid
    data = dicom_upload.segmentation_nifti_bytes(label, brainix_upload)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert image.shape == (288, 288, 22)
    np.testing.assert_allclose(image.affine, brainix_upload.native.case.affine, atol=1e-4)
    assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (1, 1)
    conversion = nib.as_closest_canonical(nib.load(brainix_dir / "FLAIR.nii.gz"))
    ours = nib.as_closest_canonical(image)
    np.testing.assert_allclose(ours.affine, conversion.affine, atol=1e-3)  # the FLAIR series' own grid
    values = np.asarray(image.dataobj)
    assert set(np.unique(values)) == {0, 2, 4}
    # A label already on the reference grid goes out unchanged.
    native = _box_label(brainix_upload.native.case.shape)
    again = nib.Nifti1Image.from_bytes(
        gzip.decompress(dicom_upload.segmentation_nifti_bytes(native, brainix_upload, on_reference_grid=True))
    )
    np.testing.assert_array_equal(np.asarray(again.dataobj), np.transpose(native, (1, 2, 0)))
    with pytest.raises(ValueError, match="reference grid"):
        dicom_upload.segmentation_nifti_bytes(label, brainix_upload, on_reference_grid=True)


def test_dicom_seg_bytes_reference_the_flair_series(brainix_upload, flair_series_uid: str) -> None:
    native = _box_label(brainix_upload.native.case.shape)
    data = dicom_upload.dicom_seg_bytes(native, brainix_upload, on_reference_grid=True)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == flair_series_uid
    assert (ds.Rows, ds.Columns) == (288, 288)
    assert {str(s.SegmentLabel).split(" ")[0] for s in ds.SegmentSequence} == {"ED", "ET"}
    assert int(ds.NumberOfFrames) == 3 + 1  # ED on three slices, ET on one
    from_model_grid = dicom_upload.dicom_seg_bytes(_box_label(brainix_upload.case.shape), brainix_upload)
    assert pydicom.dcmread(io.BytesIO(from_model_grid)).Modality == "SEG"


# ------------------------------------------------------------------------------------------- refusals


def test_a_zip_with_a_slice_removed_is_refused_naming_the_series(
    brainix_dir: Path,  # noqa: F811
    tmp_path: Path,
    upload_root: Path,
) -> None:
    archive = _zip(brainix_dir / "DICOM", tmp_path / "broken.zip", leave_out="DICOM/FLAIR/IM-0001-0011.dcm")
    with pytest.raises(InputDataError, match="missing slice") as caught:
        dicom_upload.read_dicom_upload(
            [UploadedFile(archive.name, archive.read_bytes())], upload_root, max_bytes=10**8
        )
    message = str(caught.value)
    assert message.startswith("broken.zip") and "series 401 'sT2W/FLAIR'" in message
    assert str(upload_root) not in message and "dicom-" not in message
    assert list(upload_root.iterdir()) == []


def test_files_of_two_patients_are_refused_naming_the_files(brainix_dir: Path, upload_root: Path) -> None:  # noqa: F811
    files = _loose(brainix_dir / "DICOM", "FLAIR", "T1")
    other = pydicom.dcmread(io.BytesIO(files[30].data))
    other.PatientID = "SOMEONE-ELSE"
    buffer = io.BytesIO()
    other.save_as(buffer)
    files[30] = UploadedFile(files[30].name, buffer.getvalue())
    with pytest.raises(InputDataError, match="2 different patients") as caught:
        dicom_upload.read_dicom_upload(files, upload_root, max_bytes=10**8)
    message = str(caught.value)
    assert message.startswith("upload (44 files)")
    assert "IM-0001-0001.dcm (file 1)" in message and "IM-0001-0009.dcm (file 31)" in message
    assert "SOMEONE-ELSE" not in message and not any(s.lower() in message.lower() for s in SECRETS)
    assert list(upload_root.iterdir()) == []


def test_size_and_shape_of_an_upload_are_checked_before_reading(
    brainix_zip: UploadedFile, upload_root: Path
) -> None:
    with pytest.raises(InputDataError, match="more than the 1 MB limit"):
        dicom_upload.read_dicom_upload([brainix_zip], upload_root, max_bytes=10**6)
    with pytest.raises(InputDataError, match="upload a zip on its own"):
        dicom_upload.read_dicom_upload(
            [brainix_zip, UploadedFile("x.dcm", b"x")], upload_root, max_bytes=10**9
        )
    with pytest.raises(InputDataError, match="empty"):
        dicom_upload.read_dicom_upload([UploadedFile("x.dcm", b"")], upload_root, max_bytes=10**9)
    with pytest.raises(InputDataError, match="holds no DICOM files"):
        dicom_upload.read_dicom_upload([UploadedFile("notes.txt", b"hello")], upload_root, max_bytes=10**9)
    with pytest.raises(ValueError, match="brain_extraction"):
        dicom_upload.DicomOptions(brain_extraction="maybe")
    with pytest.raises(ValueError, match="unknown modalities"):
        dicom_upload.DicomOptions(overrides={"pd": "3"})
    assert list(upload_root.iterdir()) == []


def test_a_zipped_study_may_hold_more_members_than_a_case_folder(tmp_path: Path, upload_root: Path) -> None:
    volume = np.random.default_rng(0).integers(0, 1000, size=(16, 16, 6)).astype(np.int16)
    write_series(tmp_path / "study" / "flair", volume, np.diag([-1.0, -1.0, 5.0, 1.0]))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "study").rglob("*.dcm")):
            zf.write(path, path.relative_to(tmp_path).as_posix())
        for n in range(1200):  # more than the 1000 members a zipped NIfTI case may hold
            zf.writestr(f"study/extras/{n:04d}.txt", "not an image")
    options = dicom_upload.DicomOptions(brain_extraction="off")
    upload = dicom_upload.read_dicom_upload(
        [UploadedFile("big.zip", archive.getvalue())], upload_root, max_bytes=10**8, options=options
    )
    assert upload.case.available == ("flair",) and upload.native.case.shape == (6, 16, 16)
    assert any("1200 file(s) that are not DICOM were ignored" in step for step in upload.steps)
