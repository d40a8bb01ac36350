"""Prepared store: crop, z-score, exact labels and slice counts, histograms, atomic writes, refusals."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medvision.commands import prepare as prepare_command
from medvision.data.case import Case, case_to_nifti_axes
from medvision.data.store import (
    INTENSITY_BINS,
    SliceStore,
    is_store,
    merge_histograms,
    prepare_store,
)
from medvision.errors import InputDataError


def make_case(
    case_id: str,
    seed: int,
    shape: tuple[int, int, int] = (12, 40, 40),
    *,
    tumour: bool = True,
    labelled: bool = True,
    scale: float = 1.0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Case:
    """A small case: an off-centre brain ellipsoid (int-valued intensities) with a nested tumour blob."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.mgrid[:depth, :height, :width]
    centre = (depth / 2 + rng.uniform(-1, 1), height / 2 + 3, width / 2 - 2)
    brain = (
        ((z - centre[0]) / (depth * 0.4)) ** 2
        + ((y - centre[1]) / (height * 0.33)) ** 2
        + ((x - centre[2]) / (width * 0.3)) ** 2
    ) <= 1
    image = np.zeros((4, *shape), np.float32)
    for m in range(4):
        image[m][brain] = rng.integers(50, 600 * (m + 1), int(brain.sum())) * scale
    label = np.zeros(shape, np.uint8)
    if tumour:
        r = np.sqrt((z - centre[0] - 1) ** 2 + (y - centre[1] + 2) ** 2 + (x - centre[2] - 1) ** 2)
        radius = rng.uniform(3.5, 5.5)
        label[(r < radius) & brain] = 2
        label[(r < 0.65 * radius) & brain] = 4
        label[(r < 0.35 * radius) & brain] = 1
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-20.0, 15.0, 3.0)
    return Case(case_id, image, affine, spacing, label if labelled else None)


def brain_box(case: Case) -> tuple[slice, slice, slice]:
    """Bounding box of non-zero voxels, computed independently of medvision.data.preprocess."""
    nz = np.nonzero(np.any(case.image != 0, axis=0))
    return tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [
        make_case("A", 1),
        make_case("B", 2, (10, 36, 44), scale=0.01),  # float intensities below 1
        make_case("C", 3, tumour=False),
        make_case("D", 4, (14, 40, 32), scale=25.0, spacing=(2.0, 1.0, 1.5)),
    ]


@pytest.fixture(scope="module")
def store(cases: list[Case], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_store(cases, tmp_path_factory.mktemp("store") / "s.h5", workers=1, progress=False)


def test_crop_box_and_shapes(cases: list[Case], store: Path) -> None:
    with SliceStore(store) as s:
        assert s.case_ids == [c.case_id for c in cases]
        for case in cases:
            box = brain_box(case)
            meta = s.case_meta(case.case_id)
            assert meta["crop_box"] == [v for b in box for v in (b.start, b.stop)]
            assert meta["stored_shape"] == [b.stop - b.start for b in box]
            assert meta["original_shape"] == list(case.shape)
            assert meta["spacing"] == list(case.spacing)
            assert meta["voxel_volume_mm3"] == pytest.approx(np.prod(case.spacing))
            np.testing.assert_array_equal(meta["affine"], case.affine)


def test_chunks_are_one_slice(store: Path) -> None:
    with h5py.File(store, "r") as f:
        image, label = f["cases/A/image"], f["cases/A/label"]
        assert image.dtype == np.float16 and label.dtype == np.uint8
        assert image.chunks == (4, 1, *image.shape[2:])
        assert label.chunks == (1, *label.shape[1:])


def test_zscore_within_brain(cases: list[Case], store: Path) -> None:
    with SliceStore(store) as s:
        for case in cases:
            box = brain_box(case)
            raw = case.image[(slice(None), *box)]
            brain = np.any(raw != 0, axis=0)
            image = s.read_case(case.case_id).image
            assert image.dtype == np.float32
            assert np.all(image[:, ~brain] == 0)
            for c in range(4):
                values = image[c][brain].astype(np.float64)
                assert abs(values.mean()) < 5e-3
                assert values.std() == pytest.approx(1.0, abs=5e-3)
                # Same values as z-scoring by hand (up to float16 storage).
                expected = (raw[c][brain] - raw[c][brain].mean()) / raw[c][brain].std()
                np.testing.assert_allclose(values, expected, atol=2e-3 * max(1, np.abs(expected).max()))


def test_labels_preserved_exactly(cases: list[Case], store: Path) -> None:
    with SliceStore(store) as s:
        for case in cases:
            box = brain_box(case)
            stored = s.read_label(case.case_id)
            np.testing.assert_array_equal(stored, case.label[box])
            # No tumour voxel was outside the crop.
            for value in (1, 2, 4):
                assert (stored == value).sum() == (case.label == value).sum()


def test_slice_table_counts_match_numpy(cases: list[Case], store: Path) -> None:
    with SliceStore(store) as s:
        table = s.slice_table()
    assert len(table) == sum(brain_box(c)[0].stop - brain_box(c)[0].start for c in cases)
    for case in cases:
        rows = table[table["case_id"] == case.case_id].sort_values("slice_index")
        d0 = brain_box(case)[0].start
        brain = np.any(case.image != 0, axis=0)
        for _, row in rows.iterrows():
            k = int(row["slice_original"])
            assert k == d0 + row["slice_index"]
            lab = case.label[k]
            assert row["brain_pixels"] == brain[k].sum()
            assert row["pixels_ncr"] == (lab == 1).sum()
            assert row["pixels_ed"] == (lab == 2).sum()
            assert row["pixels_et"] == (lab == 4).sum()
            assert row["pixels_wt"] == (lab > 0).sum()
            assert row["pixels_tc"] == ((lab == 1) | (lab == 4)).sum()
            assert row["labelled"]


def test_read_slice_and_read_case_agree(store: Path) -> None:
    with SliceStore(store) as s:
        case = s.read_case("D")
        image, label = s.read_slice("D", 3)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        np.testing.assert_array_equal(image, case.image[:, 3])
        np.testing.assert_array_equal(label, case.label[3])
        with pytest.raises(IndexError):
            s.read_slice("D", case.image.shape[1])
        with pytest.raises(KeyError):
            s.read_slice("nope", 0)


def test_read_case_affine_keeps_world_positions(cases: list[Case], store: Path) -> None:
    original = cases[3]
    box = brain_box(original)
    with SliceStore(store) as s:
        cropped = s.read_case("D")
    # Stored voxel (k, i, j) = original voxel (k + d0, i + h0, j + w0); affines act on (i, j, k).
    k, i, j = 2, 5, 7
    world_cropped = cropped.affine @ np.array([i, j, k, 1.0])
    world_original = original.affine @ np.array([i + box[1].start, j + box[2].start, k + box[0].start, 1.0])
    np.testing.assert_allclose(world_cropped, world_original)


def test_intensity_histograms_merge_exactly(cases: list[Case], store: Path) -> None:
    with SliceStore(store) as s:
        histograms = s.intensity_histograms()
    for c, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        values = np.concatenate([case.image[c][np.any(case.image != 0, axis=0)] for case in cases])
        edges, counts = histograms[modality]["edges"], histograms[modality]["counts"]
        assert len(counts) == INTENSITY_BINS
        assert edges[0] == 0 and edges[-1] > values.max()
        expected, _ = np.histogram(values.astype(np.float64), bins=edges)
        np.testing.assert_array_equal(counts, expected)


def test_merge_histograms_with_negative_and_mixed_scales() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.uniform(0, 3.7, 500), rng.normal(0, 40, 500), rng.uniform(0, 1000, 500)]
    from medvision.data.store import _power_of_two_histogram

    lo, hi, counts = merge_histograms(_power_of_two_histogram(p) for p in parts)
    assert lo == -hi and hi > np.abs(np.concatenate(parts)).max()
    expected, _ = np.histogram(np.concatenate(parts), bins=INTENSITY_BINS, range=(lo, hi))
    np.testing.assert_array_equal(counts, expected)


def test_parallel_prepare_equals_inline(cases: list[Case], store: Path, tmp_path: Path) -> None:
    parallel = prepare_store(cases, tmp_path / "p.h5", workers=2, progress=False)
    with SliceStore(store) as a, SliceStore(parallel) as b:
        assert a.case_ids == b.case_ids
        assert a.slice_table().equals(b.slice_table())
        for case_id in a.case_ids:
            np.testing.assert_array_equal(a.read_image(case_id), b.read_image(case_id))
        assert a.fingerprint != b.fingerprint


class _FailingRef:
    """A case reference whose load fails, like a corrupt file found half-way through a dataset."""

    case_id = "broken"

    def load(self) -> Case:
        raise InputDataError("broken/broken_flair.nii.gz", "truncated gzip")


def test_failed_prepare_leaves_no_store(cases: list[Case], tmp_path: Path) -> None:
    out = tmp_path / "new.h5"
    with pytest.raises(InputDataError, match="truncated"):
        prepare_store([cases[0], _FailingRef(), cases[1]], out, workers=1, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either


def test_failed_prepare_keeps_existing_store(cases: list[Case], tmp_path: Path) -> None:
    out = prepare_store(cases[:2], tmp_path / "s.h5", workers=1, progress=False)
    before = out.read_bytes()
    with SliceStore(out) as s:
        fingerprint = s.fingerprint
    with pytest.raises(InputDataError):
        prepare_store([cases[2], _FailingRef()], out, workers=1, progress=False)
    assert out.read_bytes() == before
    with SliceStore(out) as s:
        assert s.fingerprint == fingerprint and s.case_ids == ["A", "B"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_fingerprint_changes_when_store_rewritten(cases: list[Case], tmp_path: Path) -> None:
    out = prepare_store(cases[:1], tmp_path / "s.h5", workers=1, progress=False)
    with SliceStore(out) as s:
        first = s.fingerprint
    prepare_store(cases[:1], out, workers=1, progress=False)
    with SliceStore(out) as s:
        assert s.fingerprint != first


def test_not_a_store_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    for path in (text, foreign, tmp_path / "missing.h5"):
        assert not is_store(path)
        with pytest.raises(InputDataError) as info:
            SliceStore(path)
        assert str(path) in str(info.value)


def test_unlabelled_case_is_stored_without_label(tmp_path: Path) -> None:
    out = prepare_store([make_case("U", 5, labelled=False)], tmp_path / "u.h5", workers=1, progress=False)
    with SliceStore(out) as s:
        assert not s.has_label("U") and s.read_label("U") is None
        image, label = s.read_slice("U", 0)
        assert label is None and image.shape[0] == 4
        table = s.slice_table()
        assert not table["labelled"].any() and (table["pixels_wt"] == 0).all()


def test_bad_cases_are_refused(tmp_path: Path) -> None:
    case = make_case("A", 1)
    bad_label = case.label.copy()
    bad_label[5, 20, 20] = 3
    with pytest.raises(InputDataError, match="outside"):
        prepare_store(
            [Case("X", case.image, case.affine, case.spacing, bad_label)], tmp_path / "x.h5", workers=1
        )
    with pytest.raises(InputDataError, match="duplicate"):
        prepare_store([case, case], tmp_path / "x.h5", workers=1, progress=False)
    with pytest.raises(InputDataError, match="no cases"):
        prepare_store([], tmp_path / "x.h5", workers=1, progress=False)
    nan_image = case.image.copy()
    nan_image[0, 5, 20, 20] = np.nan
    with pytest.raises(InputDataError, match="non-finite"):
        prepare_store([Case("N", nan_image, case.affine, case.spacing)], tmp_path / "x.h5", workers=1)
    with pytest.raises(ValueError):
        prepare_store([case], tmp_path / "x.h5", workers=0)
    assert not (tmp_path / "x.h5").exists()


def _write_brats_folder(case: Case, root: Path) -> Path:
    folder = root / case.case_id
    folder.mkdir(parents=True)
    for c, name in enumerate(("flair", "t1", "t1ce", "t2")):
        data = case_to_nifti_axes(case.image[c]).astype(np.int16)
        nib.save(nib.Nifti1Image(data, case.affine), folder / f"{case.case_id}_{name}.nii.gz")
    nib.save(
        nib.Nifti1Image(case_to_nifti_axes(case.label), case.affine), folder / f"{case.case_id}_seg.nii.gz"
    )
    return folder


def test_prepare_command_from_nifti_folders(tmp_path: Path) -> None:
    source = tmp_path / "dataset"
    originals = [make_case("Case_1", 11), make_case("Case_2", 12, (10, 36, 44))]
    for case in originals:
        _write_brats_folder(case, source)
    parser = argparse.ArgumentParser()
    prepare_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["prepare", str(source), "--out", str(tmp_path / "s.h5"), "--workers", "1", "--no-progress"]
    )
    assert args.func(args) == 0
    with SliceStore(tmp_path / "s.h5") as s:
        assert s.case_ids == ["Case_1", "Case_2"]
        assert s.source == str(source.resolve())
        for case in originals:
            np.testing.assert_array_equal(s.read_label(case.case_id), case.label[brain_box(case)])


def test_prepare_synthetic_cohort_nifti_and_kaggle(tmp_path: Path) -> None:
    from medvision.data.readers import load_case
    from medvision.data.synthetic import write_cohort

    write_cohort(tmp_path / "cohort", 2, seed=3, size=(24, 64, 64), fmt="both", workers=1, progress=False)
    nifti = prepare_store(tmp_path / "cohort" / "nifti", tmp_path / "nifti.h5", workers=2, progress=False)
    kaggle = prepare_store(tmp_path / "cohort" / "h5", tmp_path / "kaggle.h5", workers=1, progress=False)
    with SliceStore(nifti) as s, SliceStore(kaggle) as k:
        assert s.case_ids == ["Synth_000", "Synth_001"]
        assert k.case_ids == ["volume_0", "volume_1"]
        assert (s.slice_table()["pixels_wt"] > 0).any()
        for case_id, volume in zip(s.case_ids, k.case_ids, strict=True):
            case = load_case(tmp_path / "cohort" / "nifti" / case_id)
            box = brain_box(case)
            np.testing.assert_array_equal(s.read_label(case_id), case.label[box])
            stored = s.read_case(case_id).image
            brain = np.any(case.image[(slice(None), *box)] != 0, axis=0)
            assert np.abs(stored[:, brain].mean(axis=1)).max() < 0.01
            # The same phantom through the Kaggle slice files gives the same labels and slice table.
            np.testing.assert_array_equal(k.read_label(volume), s.read_label(case_id))
        columns = ["slice_original", "brain_pixels", "pixels_wt", "pixels_tc", "pixels_et"]
        assert s.slice_table()[columns].equals(k.slice_table()[columns])


def test_real_case_tumour_slices(real_case_dir: Path, tmp_path: Path) -> None:
    out = prepare_store(real_case_dir, tmp_path / "real.h5", workers=1, progress=False)
    with SliceStore(out) as s:
        table = s.slice_table()
        (case_id,) = s.case_ids
        meta = s.case_meta(case_id)
    tumour = table.loc[table["pixels_wt"] > 0, "slice_original"]
    assert (int(tumour.min()), int(tumour.max())) == (44, 111)
    assert meta["original_shape"] == [155, 240, 240]
    assert 0 < meta["stored_shape"][1] < 240 and 0 < meta["stored_shape"][2] < 240
