"""Readers: every input format -> Case, and every malformed input -> InputDataError naming the file."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import stat
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medvision.data import kaggle_h5, nifti_checks, readers
from medvision.data.case import MODALITIES
from medvision.data.readers import (
    KAGGLE_DEFAULT_ORDER,
    CaseRef,
    KaggleH5Index,
    iter_cases,
    list_case_sources,
    load_case,
    read_brats_folder,
    read_decathlon,
    read_nifti_files,
    read_zip,
)
from medvision.errors import InputDataError

REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021_00006"
SHAPE = (24, 24, 8)  # NIfTI (i, j, k) -> Case (D, H, W) = (8, 24, 24)
ZOOMS = (1.5, 2.0, 3.0)
AFFINE = np.diag([*ZOOMS, 1.0]) @ np.array(
    [[-1, 0, 0, 23], [0, -1, 0, 23], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64
)
NAMES_2021 = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"}
NAMES_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}


# ---------------------------------------------------------------------------------------- helpers


def modality_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct int16 volumes per modality so a swapped channel or axis is caught."""
    rng = np.random.default_rng(seed)
    return {m: rng.integers(0, 1000, SHAPE, dtype=np.int16) + 1000 * i for i, m in enumerate(MODALITIES)}


def label_data(values: tuple[int, ...] = (0, 1, 2, 4), seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array(values, dtype=np.uint8), SHAPE)


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_case(
    folder: Path,
    case_id: str = "Case_001",
    *,
    names: dict[str, str] = NAMES_2021,
    sep: str = "_",
    ext: str = ".nii.gz",
    label: np.ndarray | None = None,
    with_label: bool = True,
    seed: int = 0,
) -> tuple[Path, dict[str, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    data = modality_data(seed)
    for m in MODALITIES:
        save(data[m], folder / f"{case_id}{sep}{names[m]}{ext}")
    if with_label:
        data["seg"] = label_data() if label is None else label
        save(data["seg"], folder / f"{case_id}{sep}{names['seg']}{ext}")
    return folder, data


def case_file(folder: Path, key: str, case_id: str = "Case_001", ext: str = ".nii.gz") -> Path:
    return folder / f"{case_id}_{NAMES_2021[key]}{ext}"


def assert_refused(call, *names: str, match: str | None = None) -> InputDataError:
    with pytest.raises(InputDataError) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, message
    if match is not None:
        assert match in message.lower(), message
    return info.value


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_kaggle_slice(path: Path, image: np.ndarray, mask: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image", data=image)
        handle.create_dataset("mask", data=mask)


def write_kaggle_volume(
    folder: Path, volume: int, n_slices: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Slices (n, H, W, 4) float64 and label (n, H, W) in {0,1,2,4}, written as one-hot masks."""
    rng = np.random.default_rng(seed + volume)
    images = rng.normal(size=(n_slices, 12, 10, 4)) + np.arange(4) * 10
    labels = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), (n_slices, 12, 10))
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_slices):
        mask = np.stack([labels[s] == v for v in (1, 2, 4)], axis=-1).astype(np.uint8)
        write_kaggle_slice(folder / f"volume_{volume}_slice_{s}.h5", images[s], mask)
    return images, labels


def write_decathlon(root: Path, name: str = "BRATS_001", *, channels: int = 4, with_label: bool = True):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(*SHAPE, channels)).astype(np.float32)
    label = rng.choice(np.array([0, 1, 2, 3], dtype=np.uint8), SHAPE)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    image_path = save(image, root / "imagesTr" / f"{name}.nii.gz")
    if with_label:
        save(label, root / "labelsTr" / f"{name}.nii.gz")
    return image_path, image, label


def zip_folder(folder: Path, zip_path: Path, *, prefix: str | None = None) -> Path:
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{prefix}/{path.name}" if prefix else path.name)
    return zip_path


# ---------------------------------------------------------------------------------- BraTS folders


def test_brats_2021_folder_follows_axis_convention(tmp_path: Path) -> None:
    folder, data = write_case(tmp_path / "Case_001")
    case = read_brats_folder(folder)
    assert case.case_id == "Case_001"
    assert case.image.shape == (4, 8, 24, 24) and case.image.dtype == np.float32
    for c, m in enumerate(MODALITIES):
        np.testing.assert_array_equal(case.image[c], np.moveaxis(data[m], 2, 0))
    assert case.image[2, 5, 3, 7] == data["t1ce"][3, 7, 5]
    assert case.label is not None and case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.label, np.moveaxis(data["seg"], 2, 0))
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.spacing == (3.0, 1.5, 2.0)  # (D, H, W) = NIfTI zooms (k, i, j)
    assert {p.name for p in case.source_paths} == {p.name for p in folder.iterdir()}


def test_brats_2023_naming_uncompressed_maps_label_3_to_4(tmp_path: Path) -> None:
    label = label_data((0, 1, 2, 3))
    folder, data = write_case(
        tmp_path / "BraTS-GLI-00000-000",
        "BraTS-GLI-00000-000",
        names=NAMES_2023,
        sep="-",
        ext=".nii",
        label=label,
    )
    case = read_brats_folder(folder)
    assert case.case_id == "BraTS-GLI-00000-000"
    np.testing.assert_array_equal(case.image[0], np.moveaxis(data["flair"], 2, 0))  # t2f is FLAIR
    np.testing.assert_array_equal(case.image[2], np.moveaxis(data["t1ce"], 2, 0))  # t1c is T1ce
    expected = np.where(label == 3, 4, label)
    np.testing.assert_array_equal(case.label, np.moveaxis(expected, 2, 0))
    assert set(np.unique(case.label)) == {0, 1, 2, 4}


def test_label_file_is_optional(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001", with_label=False)
    case = read_brats_folder(folder)
    assert case.label is None and len(case.source_paths) == 4


def test_float_label_file_with_integral_values_is_accepted(tmp_path: Path) -> None:
    label = label_data().astype(np.float32)
    folder, _ = write_case(tmp_path / "Case_001", label=label)
    case = read_brats_folder(folder)
    np.testing.assert_array_equal(case.label, np.moveaxis(label, 2, 0).astype(np.uint8))


def test_source_files_are_not_modified(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    before = digest(folder)
    read_brats_folder(folder)
    load_case(zip_folder(folder, tmp_path / "case.zip"))
    assert digest(folder) == before


@pytest.mark.parametrize("missing", ["flair", "t1ce"])
def test_missing_modality_is_named(tmp_path: Path, missing: str) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    case_file(folder, missing).unlink()
    assert_refused(lambda: read_brats_folder(folder), "Case_001", f"missing modality {missing}")


def test_modality_with_wrong_extension_is_named(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    bad = case_file(folder, "t2")
    bad.rename(folder / "Case_001_t2.mha")
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t2.mha", match="wrong extension")


def test_two_files_for_one_modality_are_refused(tmp_path: Path) -> None:
    folder, data = write_case(tmp_path / "Case_001")
    save(data["t1"], folder / "Case_001_t1.nii")
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t1.nii", match="more than one t1")


def test_modalities_of_different_shapes_are_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    save(np.zeros((24, 24, 9), np.int16), case_file(folder, "t1"))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t1.nii.gz", match="shape")


def test_modalities_with_different_affines_are_refused(tmp_path: Path) -> None:
    folder, data = write_case(tmp_path / "Case_001")
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    save(data["t2"], case_file(folder, "t2"), shifted)
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t2.nii.gz", match="affine differs")


def test_label_on_another_grid_is_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    save(np.zeros((24, 20, 8), np.uint8), case_file(folder, "seg"))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_seg.nii.gz", match="shape")


@pytest.mark.parametrize("shape", [(24, 24), (24, 24, 8, 2, 2)], ids=["2d", "5d"])
def test_wrong_dimensionality_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    save(np.zeros(shape, np.int16), case_file(folder, "flair"))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_flair.nii.gz", match="expected a 3-d image")


def test_trailing_singleton_dimension_is_accepted(tmp_path: Path) -> None:
    folder, data = write_case(tmp_path / "Case_001")
    save(data["t1"][..., None], case_file(folder, "t1"))
    case = read_brats_folder(folder)
    np.testing.assert_array_equal(case.image[1], np.moveaxis(data["t1"], 2, 0))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_voxels_are_refused(tmp_path: Path, bad_value: float) -> None:
    folder, data = write_case(tmp_path / "Case_001")
    volume = data["t1ce"].astype(np.float32)
    volume[3, 4, 5] = bad_value
    save(volume, case_file(folder, "t1ce"))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t1ce.nii.gz", match="non-finite")


def test_unknown_label_values_are_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001", label=label_data((0, 1, 2, 4, 5)))
    error = assert_refused(
        lambda: read_brats_folder(folder), "Case_001_seg.nii.gz", match="unknown label values"
    )
    assert "[5]" in error.problem


def test_label_with_both_3_and_4_is_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001", label=label_data((0, 3, 4)))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_seg.nii.gz", match="both 3")


def test_fractional_label_values_are_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001", label=label_data().astype(np.float32) + 0.5)
    assert_refused(lambda: read_brats_folder(folder), "Case_001_seg.nii.gz", match="integers")


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    path.write_bytes(bytes(raw))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(600))


def _plain_bytes_named_gz(path: Path) -> None:
    path.write_bytes(gzip.decompress(path.read_bytes()))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "ext", "match"),
    [
        (_truncate, ".nii.gz", "corrupt or truncated"),
        (_flip_bytes, ".nii.gz", "corrupt or truncated"),
        (_truncate, ".nii", "corrupt or truncated"),
        (_garbage, ".nii.gz", "not a readable nifti"),
        (_garbage, ".nii", "not a readable nifti"),
        (_plain_bytes_named_gz, ".nii.gz", "not a readable nifti"),
        (_empty, ".nii.gz", "empty"),
    ],
    ids=["truncated-gz", "corrupt-gz", "truncated-nii", "garbage-gz", "garbage-nii", "not-gzip", "empty"],
)
def test_damaged_files_are_refused(tmp_path: Path, damage, ext: str, match: str) -> None:
    folder, _ = write_case(tmp_path / "Case_001", ext=ext)
    target = case_file(folder, "t2", ext=ext)
    damage(target)
    assert_refused(lambda: read_brats_folder(folder), target.name, match=match)


def _two_gzip_members(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))


def _zero_padding_after_the_member(path: Path) -> None:
    path.write_bytes(path.read_bytes() + bytes(512))


@pytest.mark.parametrize("rewrite", [_two_gzip_members, _zero_padding_after_the_member])
def test_valid_gzip_variants_read_as_the_same_case(tmp_path: Path, rewrite) -> None:
    """gzip allows several members and zero padding after them (gzip(1) reads both); so do we."""
    folder, data = write_case(tmp_path / "Case_001")
    rewrite(case_file(folder, "t1ce"))
    case = read_brats_folder(folder)
    np.testing.assert_array_equal(case.image[MODALITIES.index("t1ce")], np.moveaxis(data["t1ce"], 2, 0))


def test_gzip_that_inflates_far_beyond_its_header_is_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    target = case_file(folder, "flair")
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw + bytes(4 << 20)))  # 4 MiB of zeros compress to a few KiB
    assert_refused(lambda: read_brats_folder(folder), target.name, match="far more data than its header")


def test_read_ahead_keeps_order_and_raises_each_error_in_its_place() -> None:
    reads = [lambda i=i: np.full(3, i) for i in range(5)]
    assert [int(a[0]) for a in readers.read_ahead(reads)] == [0, 1, 2, 3, 4]

    def broken() -> np.ndarray:
        raise InputDataError("third.nii.gz", "cannot read voxel data")

    stream = readers.read_ahead([reads[0], reads[1], broken, reads[3]])
    assert [int(next(stream)[0]), int(next(stream)[0])] == [0, 1]
    with pytest.raises(InputDataError, match="third.nii.gz"):
        next(stream)


@pytest.mark.parametrize(
    "values",
    [
        np.array([0, 0, 3, 1], np.uint8),
        np.array([-2, 0, 5], np.int16),
        np.array([1.0, 0.0, 2.0, -0.0], np.float32),
        np.array([], np.uint8),
        np.zeros(4, np.int32),
        np.array([7, 7, 70000], np.int64),
        np.asfortranarray(np.arange(120, dtype=np.uint16).reshape(4, 5, 6) % 5),
    ],
    ids=["uint8", "negative", "float", "empty", "all-zero", "large", "fortran-order"],
)
def test_distinct_label_values_equal_numpy_unique(values: np.ndarray) -> None:
    found = nifti_checks._distinct_values(values)
    np.testing.assert_array_equal(found, np.unique(values))
    assert found.dtype == values.dtype


def test_absurd_header_size_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:
    folder, _ = write_case(tmp_path / "Case_001", ext=".nii")
    small = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), AFFINE)
    header = small.header.copy()
    header["dim"][1:4] = [20000, 20000, 20000]
    header["vox_offset"] = 352
    case_file(folder, "t1", ext=".nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 16)

    def no_read(*args, **kwargs):
        raise AssertionError("voxel data was read")

    monkeypatch.setattr(readers, "read_nifti_data", no_read)
    assert_refused(lambda: read_brats_folder(folder), "Case_001_t1.nii", match="implausible size")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(SHAPE, np.complex64), "complex"),
        (np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), "rgb"),
    ],
    ids=["complex", "rgb"],
)
def test_complex_and_rgb_voxels_are_refused(tmp_path: Path, array: np.ndarray, match: str) -> None:
    folder, _ = write_case(tmp_path / "Case_001")
    save(array, case_file(folder, "flair"))
    assert_refused(lambda: read_brats_folder(folder), "Case_001_flair.nii.gz", match=match)


# ------------------------------------------------------------------------------ separate uploads


def test_read_nifti_files_accepts_2023_keys(tmp_path: Path) -> None:
    folder, data = write_case(tmp_path / "up")
    paths = {
        "t2f": case_file(folder, "flair"),
        "t1n": case_file(folder, "t1"),
        "t1c": case_file(folder, "t1ce"),
        "t2w": case_file(folder, "t2"),
        "seg": case_file(folder, "seg"),
    }
    case = read_nifti_files(paths)
    assert case.case_id == "Case_001"
    for c, m in enumerate(MODALITIES):
        np.testing.assert_array_equal(case.image[c], np.moveaxis(data[m], 2, 0))
    np.testing.assert_array_equal(case.label, np.moveaxis(data["seg"], 2, 0))
    assert (
        read_nifti_files({m: case_file(folder, m) for m in MODALITIES}, case_id="upload").case_id == "upload"
    )


def test_read_nifti_files_refuses_missing_modality_and_wrong_extension(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "up")
    paths = {m: case_file(folder, m) for m in ("flair", "t1", "t2")}
    assert_refused(lambda: read_nifti_files(paths), "Case_001_flair.nii.gz", match="missing modality t1ce")
    renamed = case_file(folder, "t1ce").rename(folder / "t1ce.mha")
    assert_refused(lambda: read_nifti_files({**paths, "t1ce": renamed}), "t1ce.mha", match="wrong extension")
    with pytest.raises(ValueError, match="unknown modality key"):
        read_nifti_files({**paths, "pd": renamed})


# -------------------------------------------------------------------------------------- Decathlon


def test_decathlon_maps_labels_and_finds_label_file(tmp_path: Path) -> None:
    image_path, image, label = write_decathlon(tmp_path / "Task01_BrainTumour")
    case = read_decathlon(image_path)
    assert case.case_id == "BRATS_001" and case.image.shape == (4, 8, 24, 24)
    for c in range(4):  # FLAIR, T1w, T1gd, T2w = MedVision order
        np.testing.assert_array_equal(case.image[c], np.moveaxis(image[..., c], 2, 0))
    expected = np.select([label == 1, label == 2, label == 3], [2, 1, 4], 0)
    np.testing.assert_array_equal(case.label, np.moveaxis(expected, 2, 0))
    assert case.spacing == (3.0, 1.5, 2.0)
    explicit = read_decathlon(image_path, tmp_path / "Task01_BrainTumour" / "labelsTr" / "BRATS_001.nii.gz")
    np.testing.assert_array_equal(explicit.label, case.label)


def test_decathlon_refusals_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "Task01"
    image_path, _, _ = write_decathlon(root, channels=3)
    assert_refused(lambda: read_decathlon(image_path), "BRATS_001.nii.gz", match="expected 4 channels")
    image_path, _, _ = write_decathlon(root)
    save(label_data((0, 1, 4)), root / "labelsTr" / "BRATS_001.nii.gz")  # 4 is not a Decathlon label
    assert_refused(
        lambda: read_decathlon(image_path), "labelsTr/BRATS_001.nii.gz", match="unknown label values"
    )
    single = save(np.zeros(SHAPE, np.float32), tmp_path / "one_modality.nii.gz")
    assert_refused(lambda: load_case(single), "one_modality.nii.gz", match="expected a 4-d image")


# ------------------------------------------------------------------------------------------- zip


def test_zip_of_case_folder_round_trips(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "src" / "Case_001")
    direct = read_brats_folder(folder)
    archive = zip_folder(folder, tmp_path / "upload.zip")
    for case in (read_zip(archive), load_case(archive)):
        assert case.case_id == "Case_001"
        np.testing.assert_array_equal(case.image, direct.image)
        np.testing.assert_array_equal(case.label, direct.label)
        np.testing.assert_allclose(case.affine, direct.affine)
        assert case.source_paths == (archive,)
    flat = zip_folder(folder, tmp_path / "flat.zip", prefix="")  # files at the archive root
    np.testing.assert_array_equal(read_zip(flat).image, direct.image)
    for m in (*MODALITIES, "seg"):  # no <ID> in the names: the case is named after the archive
        case_file(folder, m).rename(folder / f"{m}.nii.gz")
    anonymous = zip_folder(folder, tmp_path / "anonymous.zip", prefix="")
    assert read_zip(anonymous).case_id == "anonymous"
    assert list_case_sources(anonymous)[0].case_id == "anonymous"


def _zip_with(
    path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]], compression=zipfile.ZIP_DEFLATED
):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for info, payload in members:
            archive.writestr(info, payload)
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("members", "compression", "match"),
    [
        ([("case/../../evil.nii.gz", b"x")], zipfile.ZIP_DEFLATED, "zip slip"),
        ([("..\\evil.nii.gz", b"x")], zipfile.ZIP_DEFLATED, "zip slip"),
        ([(zipfile.ZipInfo("/etc/evil.nii.gz"), b"x")], zipfile.ZIP_DEFLATED, "absolute path"),
        ([(_symlink_info("case/Case_001_t1.nii.gz"), b"/etc/passwd")], zipfile.ZIP_DEFLATED, "symbolic link"),
        ([("case/zeros.nii", bytes(4_000_000))], zipfile.ZIP_BZIP2, "compression ratio"),
    ],
    ids=["slip", "slip-backslash", "absolute", "symlink", "ratio"],
)
def test_unsafe_zips_are_refused(tmp_path: Path, members, compression, match: str) -> None:
    archive = _zip_with(tmp_path / "upload.zip", members, compression)
    assert_refused(lambda: read_zip(archive), "upload.zip", match=match)
    assert not (tmp_path / "evil.nii.gz").exists()


def test_zip_over_size_limit_is_refused(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "src" / "Case_001")
    archive = zip_folder(folder, tmp_path / "big.zip")
    assert_refused(lambda: read_zip(archive, max_uncompressed_bytes=10_000), "big.zip", match="zip bomb")


def test_bad_zip_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    assert_refused(lambda: read_zip(empty), "empty.zip", match="empty")
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(os.urandom(300))
    assert_refused(lambda: read_zip(garbage), "garbage.zip", match="not a readable zip")
    wrong = tmp_path / "case.tar"
    wrong.write_bytes(b"data")
    assert_refused(lambda: read_zip(wrong), "case.tar", match="wrong extension")


def test_error_inside_zip_names_archive_and_member(tmp_path: Path) -> None:
    folder, _ = write_case(tmp_path / "src" / "Case_001")
    case_file(folder, "t1ce").unlink()
    archive = zip_folder(folder, tmp_path / "upload.zip")
    error = assert_refused(lambda: read_zip(archive), "upload.zip", "Case_001", match="missing modality t1ce")
    assert "medvision-zip-" not in str(error)
    _truncate(case_file(write_case(tmp_path / "src2" / "Case_002", "Case_002")[0], "t2", "Case_002"))
    archive2 = zip_folder(tmp_path / "src2" / "Case_002", tmp_path / "upload2.zip")
    assert_refused(
        lambda: read_zip(archive2), "upload2.zip", "Case_002_t2.nii.gz", match="corrupt or truncated"
    )


# ----------------------------------------------------------------------------------------- Kaggle


def test_kaggle_index_reads_names_only(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "kaggle"
    write_kaggle_volume(folder, 1, 12)
    write_kaggle_volume(folder, 7, 3)
    (folder / "meta_data.csv").write_text("slice_path,target,volume,slice\n")

    def no_open(*args, **kwargs):
        raise AssertionError("an h5 file was opened while indexing")

    monkeypatch.setattr(h5py, "File", no_open)
    index = KaggleH5Index(folder)
    refs = list_case_sources(folder)
    assert index.volumes == [1, 7]
    assert [p.name for p in index.slices(1)][:3] == [
        "volume_1_slice_0.h5",
        "volume_1_slice_1.h5",
        "volume_1_slice_2.h5",
    ]
    assert index.slices(1)[10].name == "volume_1_slice_10.h5"  # numeric, not lexical, order
    assert [r.case_id for r in refs] == ["volume_1", "volume_7"]
    assert index.channel_order == KAGGLE_DEFAULT_ORDER


def test_kaggle_volume_reads_only_its_files_in_channel_order(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "kaggle"
    images, labels = write_kaggle_volume(folder, 1, 5)
    write_kaggle_volume(folder, 2, 4)
    opened: list[str] = []
    real_file = h5py.File

    def tracking_file(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_file(path, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", tracking_file)
    case = KaggleH5Index(folder).read_volume(1)
    assert sorted(opened) == sorted(f"volume_1_slice_{s}.h5" for s in range(5))
    assert (
        case.case_id == "volume_1" and case.image.shape == (4, 5, 12, 10) and case.image.dtype == np.float32
    )
    np.testing.assert_allclose(
        case.image, np.moveaxis(images, -1, 0).astype(np.float32)
    )  # image[c,k] = s_k[:,:,c]
    np.testing.assert_array_equal(case.label, labels)
    np.testing.assert_array_equal(case.affine, np.eye(4))

    reordered = KaggleH5Index(folder, channel_order=("t1", "t1ce", "t2", "flair")).read_volume(1)
    np.testing.assert_allclose(
        reordered.image[0], images[..., 3].astype(np.float32)
    )  # FLAIR was file channel 3
    np.testing.assert_allclose(reordered.image[1], images[..., 0].astype(np.float32))
    with pytest.raises(ValueError, match="permutation"):
        KaggleH5Index(folder, channel_order=("flair", "t1", "t1", "t2"))


def test_single_kaggle_volume_loads_and_refs_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "kaggle"
    _, labels = write_kaggle_volume(folder, 3, 4)
    case = load_case(folder)
    np.testing.assert_array_equal(case.label, labels)
    (ref,) = list_case_sources(folder)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ref)).load().image, case.image)
    write_kaggle_volume(folder, 4, 2)
    assert_refused(lambda: load_case(folder), "kaggle", match="holds 2 cases")


def _slice_path(folder: Path) -> Path:
    return folder / "volume_1_slice_1.h5"


def _missing_mask(folder: Path) -> None:
    with h5py.File(_slice_path(folder), "w") as handle:
        handle.create_dataset("image", data=np.zeros((12, 10, 4)))


def _misshapen_image(folder: Path) -> None:
    write_kaggle_slice(_slice_path(folder), np.zeros((12, 10, 3)), np.zeros((12, 10, 3), np.uint8))


def _misshapen_mask(folder: Path) -> None:
    write_kaggle_slice(_slice_path(folder), np.zeros((12, 10, 4)), np.zeros((12, 9, 3), np.uint8))


def _nan_image(folder: Path) -> None:
    write_kaggle_slice(_slice_path(folder), np.full((12, 10, 4), np.nan), np.zeros((12, 10, 3), np.uint8))


def _overlapping_mask(folder: Path) -> None:
    write_kaggle_slice(_slice_path(folder), np.zeros((12, 10, 4)), np.ones((12, 10, 3), np.uint8))


def _truncated_h5(folder: Path) -> None:
    _truncate(_slice_path(folder))


def _empty_h5(folder: Path) -> None:
    _slice_path(folder).write_bytes(b"")


def _complex_image(folder: Path) -> None:
    write_kaggle_slice(
        _slice_path(folder), np.zeros((12, 10, 4), np.complex64), np.zeros((12, 10, 3), np.uint8)
    )


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_missing_mask, "no dataset 'mask'"),
        (_misshapen_image, "dataset 'image' has shape"),
        (_misshapen_mask, "dataset 'mask' has shape"),
        (_nan_image, "non-finite"),
        (_overlapping_mask, "not one-hot"),
        (_truncated_h5, "not a readable hdf5"),
        (_empty_h5, "empty"),
        (_complex_image, "unsupported type"),
    ],
    ids=["no-mask", "image-shape", "mask-shape", "nan", "overlap", "truncated", "empty", "complex"],
)
def test_bad_kaggle_slices_are_refused(tmp_path: Path, damage, match: str) -> None:
    folder = tmp_path / "kaggle"
    write_kaggle_volume(folder, 1, 3)
    damage(folder)
    assert_refused(lambda: KaggleH5Index(folder).read_volume(1), "volume_1_slice_1.h5", match=match)


def test_kaggle_volume_with_missing_slice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "kaggle"
    write_kaggle_volume(folder, 1, 4)
    _slice_path(folder).unlink()
    assert_refused(lambda: KaggleH5Index(folder).read_volume(1), "kaggle", match="missing slice files [1]")
    assert_refused(lambda: KaggleH5Index(tmp_path), str(tmp_path), match="no volume_")


# ------------------------------------------------------------------------------- dataset listing


def test_list_case_sources_over_brats_root(tmp_path: Path) -> None:
    root = tmp_path / "BraTS2021"
    write_case(root / "Case_001", "Case_001")
    write_case(root / "Case_002", "Case_002", seed=1, with_label=False)
    zip_folder(write_case(tmp_path / "zsrc" / "Case_003", "Case_003")[0], root / "Case_003.zip")
    (root / "name_mapping.csv").write_text("x\n")
    (root / "notes").mkdir()
    refs = list_case_sources(root)
    assert [r.case_id for r in refs] == ["Case_001", "Case_002", "Case_003"]
    assert [r.kind for r in refs] == ["brats", "brats", "zip"]
    restored = [pickle.loads(pickle.dumps(r)) for r in refs]
    cases = [r.load() for r in restored]
    assert [c.case_id for c in cases] == ["Case_001", "Case_002", "Case_003"]
    assert cases[1].label is None and cases[2].label is not None
    assert [c.case_id for c in iter_cases(root)] == ["Case_001", "Case_002", "Case_003"]
    assert_refused(lambda: load_case(root), "BraTS2021", match="holds 3 cases")
    assert list_case_sources(root / "Case_001") == [CaseRef("brats", "Case_001", root / "Case_001")]


def test_list_case_sources_over_decathlon_root(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    write_decathlon(root, "BRATS_001")
    write_decathlon(root, "BRATS_002", with_label=False)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\0" * 10)  # macOS resource fork in the tar
    refs = list_case_sources(root)
    assert [r.case_id for r in refs] == ["BRATS_001", "BRATS_002"]
    assert refs[0].label_path == root / "labelsTr" / "BRATS_001.nii.gz" and refs[1].label_path is None
    assert [c.case_id for c in iter_cases(root)] == ["BRATS_001", "BRATS_002"]
    assert load_case(root / "imagesTr" / "BRATS_001.nii.gz").label is not None


def test_list_case_sources_refuses_unknown_inputs(tmp_path: Path) -> None:
    assert_refused(lambda: list_case_sources(tmp_path / "nope"), "nope", match="does not exist")
    (tmp_path / "empty").mkdir()
    assert_refused(lambda: list_case_sources(tmp_path / "empty"), "empty", match="no cases found")
    text = tmp_path / "case.txt"
    text.write_text("hi")
    assert_refused(lambda: load_case(text), "case.txt", match="wrong extension")
    write_kaggle_volume(tmp_path / "k", 1, 1)
    assert_refused(lambda: load_case(tmp_path / "k" / "volume_1_slice_0.h5"), "volume_1_slice_0.h5")


def test_kaggle_channel_order_reaches_case_refs(tmp_path: Path) -> None:
    images, _ = write_kaggle_volume(tmp_path / "k", 1, 2)
    case = load_case(tmp_path / "k", kaggle_channel_order=("t2", "t1ce", "t1", "flair"))
    np.testing.assert_allclose(case.image[MODALITIES.index("t2")], images[..., 0].astype(np.float32))
    assert kaggle_h5.KAGGLE_DEFAULT_ORDER == ("flair", "t1", "t1ce", "t2")


# ---------------------------------------------------------------------------------------- real case


@pytest.fixture(scope="module")
def real_case():
    if not (REAL_CASE / "BraTS2021_00006_flair.nii.gz").exists():
        pytest.skip(f"real BraTS case not found at {REAL_CASE}")
    return load_case(REAL_CASE)


def test_real_brats_case(real_case) -> None:
    flair = nib.load(REAL_CASE / "BraTS2021_00006_flair.nii.gz")
    assert real_case.case_id == "BraTS2021_00006"
    assert real_case.image.shape == (4, 155, 240, 240) and real_case.image.dtype == np.float32
    assert set(np.unique(real_case.label).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(real_case.affine, flair.affine)
    assert real_case.spacing == (1.0, 1.0, 1.0)
    data = np.asarray(flair.dataobj)
    np.testing.assert_array_equal(real_case.image[0], np.moveaxis(data, 2, 0).astype(np.float32))
    i, j, k = 120, 100, 80
    assert real_case.image[0, k, i, j] == data[i, j, k]
    tumour_slices = np.flatnonzero(real_case.label.any(axis=(1, 2)))
    assert tumour_slices.min() == 44 and tumour_slices.max() == 111  # DESIGN.md: tumour on slices 44-111
