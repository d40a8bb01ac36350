"""Synthetic cohort (medvision.data.synthetic + phantom_*), the writers and the `synth` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medvision.data.case import MODALITIES, Case, case_to_nifti_axes, nifti_to_case_axes
from medvision.data.synthetic import (
    DEFAULT_SIZE,
    case_id_for,
    case_seed,
    make_phantom,
    make_phantom_parts,
    phantom_geometry,
    write_cohort,
)
from medvision.data.writers import (
    save_label_nifti,
    write_brats_folder,
    write_decathlon,
    write_kaggle_slices,
)

SMALL = (24, 48, 48)
MEDIUM = (48, 96, 96)
FLAIR, T1, T1CE, T2 = (MODALITIES.index(m) for m in ("flair", "t1", "t1ce", "t2"))


@pytest.fixture(scope="module")
def small_case() -> Case:
    return make_phantom("Synth_007", case_seed(0, 7), SMALL)


@pytest.fixture(scope="module")
def medium_parts() -> list:
    return [make_phantom_parts(case_id_for(i), case_seed(3, i), MEDIUM) for i in range(4)]


def test_same_seed_gives_identical_arrays_and_other_seeds_differ() -> None:
    a = make_phantom("Synth_000", 11, SMALL)
    b = make_phantom("Synth_000", 11, SMALL)
    c = make_phantom("Synth_000", 12, SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.image, c.image)


def test_case_seed_depends_only_on_cohort_seed_and_index() -> None:
    assert case_seed(0, 3) == case_seed(0, 3)
    assert len({case_seed(0, i) for i in range(50)}) == 50
    assert case_seed(0, 3) != case_seed(1, 3)
    assert case_id_for(0) == "Synth_000" and case_id_for(12) == "Synth_012"


def test_phantom_types_background_and_labels(small_case: Case) -> None:
    image, label = small_case.image, small_case.label
    assert image.shape == (4, *SMALL) and image.dtype == np.float32
    assert label is not None and label.shape == SMALL and label.dtype == np.uint8
    # int16-valued like BraTS
    np.testing.assert_array_equal(image, np.rint(image))
    assert image.min() >= 0 and image.max() <= np.iinfo(np.int16).max
    # Skull-stripped: every modality is non-zero on exactly the same (brain) voxels, 0 elsewhere.
    nonzero = image != 0
    brain = nonzero.any(axis=0)
    assert (nonzero == brain).all()
    assert 0.1 < brain.mean() < 0.6
    assert set(np.unique(label)) <= {0, 1, 2, 4}
    assert (label > 0).any()
    assert not (label[~brain] > 0).any()


def test_geometry_is_braTS_like() -> None:
    spacing, affine = phantom_geometry(DEFAULT_SIZE)
    assert spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(np.diag(affine), [-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(affine[:3, 3], [0.0, 239.0, 0.0])
    spacing, _ = phantom_geometry(SMALL)
    # A smaller grid is a coarser sampling of the same 155 x 240 x 240 mm field of view.
    assert spacing == pytest.approx((155 / 24, 5.0, 5.0))
    with pytest.raises(ValueError):
        make_phantom("x", 0, (4, 48, 48))


def _tissue_mean(parts, channel: int, mask_of) -> tuple[float, int]:
    values = parts.brain_values(channel)
    mask = mask_of(parts)
    return float(values[mask].mean()) if mask.any() else np.nan, int(mask.sum())


def _wm(p):
    return (p.anatomy.wm > 0.95) & (p.tumours.label == 0)


def _ventricle(p):
    return (p.anatomy.ventricle > 0.9) & (p.tumours.label == 0)


def test_tissue_contrasts_follow_mri_physics(medium_parts: list) -> None:
    for parts in medium_parts:
        label = parts.tumours.label
        wm_flair, _ = _tissue_mean(parts, FLAIR, _wm)
        oedema_flair, n_ed = _tissue_mean(parts, FLAIR, lambda p: p.tumours.label == 2)
        if n_ed:
            assert oedema_flair > 1.2 * wm_flair
        if (label == 4).any():
            wm_t1ce, _ = _tissue_mean(parts, T1CE, _wm)
            et_t1ce, _ = _tissue_mean(parts, T1CE, lambda p: p.tumours.label == 4)
            assert et_t1ce > 1.2 * wm_t1ce
        wm_t2, _ = _tissue_mean(parts, T2, _wm)
        csf_t2, n_csf = _tissue_mean(parts, T2, _ventricle)
        assert n_csf > 0 and csf_t2 > 1.5 * wm_t2
        csf_flair, _ = _tissue_mean(parts, FLAIR, _ventricle)
        assert csf_flair < wm_flair  # FLAIR suppresses CSF
        gm_t1, _ = _tissue_mean(parts, T1, lambda p: (p.anatomy.gm > 0.95) & (p.tumours.label == 0))
        wm_t1, _ = _tissue_mean(parts, T1, _wm)
        assert gm_t1 < wm_t1


def test_cohort_has_small_and_large_tumours_and_varied_lesions() -> None:
    size = (40, 80, 80)
    spacing, _ = phantom_geometry(size)
    pixel_mm2 = spacing[1] * spacing[2]  # pixel counts scaled to a 1 mm BraTS slice
    areas, kinds, counts, has_et, sides = [], set(), set(), [], set()
    for i in range(12):
        parts = make_phantom_parts(case_id_for(i), case_seed(0, i), size)
        label = parts.case.label
        areas.append((label > 0).sum(axis=(1, 2)).max() * pixel_mm2)
        kinds |= {lesion.kind for lesion in parts.tumours.lesions}
        counts.add(len(parts.tumours.lesions))
        has_et.append(bool((label == 4).any()))
        sides |= {lesion.centre_mm[1] < parts.anatomy.midline_mm for lesion in parts.tumours.lesions}
    areas = np.asarray(areas)
    assert (areas > 0).all()
    assert (areas < 500).any(), areas
    assert (areas > 2500).any(), areas
    assert kinds == {"necrotic", "solid", "non_enhancing"}
    assert max(counts) >= 2
    assert not all(has_et) and any(has_et)
    assert sides == {True, False}  # both hemispheres


def test_full_size_phantom() -> None:
    case = make_phantom("Synth_000", case_seed(0, 0))
    assert case.image.shape == (4, 155, 240, 240)
    brain = case.image[0] != 0
    assert 0.9e6 < brain.sum() < 2.0e6  # adult brain: about 1.1-1.7 litres at 1 mm
    assert 1 <= (case.label > 0).sum() < brain.sum() * 0.3


def test_write_brats_folder_round_trip(tmp_path: Path, small_case: Case) -> None:
    folder = write_brats_folder(small_case, tmp_path)
    assert folder == tmp_path / "Synth_007"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"Synth_007_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2", "seg"))
    for channel, modality in enumerate(MODALITIES):
        img = nib.load(folder / f"Synth_007_{modality}.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert img.shape == (SMALL[1], SMALL[2], SMALL[0])
        np.testing.assert_allclose(img.affine, small_case.affine)
        np.testing.assert_array_equal(np.asarray(img.dataobj), case_to_nifti_axes(small_case.image[channel]))
    seg = nib.load(folder / "Synth_007_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(seg.dataobj), case_to_nifti_axes(small_case.label))


def test_write_brats_2023_naming_and_uncompressed(tmp_path: Path, small_case: Case) -> None:
    folder = write_brats_folder(small_case, tmp_path, naming="2023", compress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"Synth_007-{s}.nii" for s in ("t2f", "t1n", "t1c", "t2w", "seg")
    )
    seg = np.asarray(nib.load(folder / "Synth_007-seg.nii").dataobj)
    expected = np.where(small_case.label == 4, 3, small_case.label)
    np.testing.assert_array_equal(seg, case_to_nifti_axes(expected))
    with pytest.raises(ValueError):
        write_brats_folder(small_case, tmp_path, naming="2019")


def test_write_kaggle_slices_round_trip(tmp_path: Path, small_case: Case) -> None:
    paths = write_kaggle_slices(small_case, tmp_path, volume_index=7)
    assert len(paths) == SMALL[0]
    expected = sorted(f"volume_7_slice_{k}.h5" for k in range(SMALL[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    k = int(np.argmax((small_case.label > 0).sum(axis=(1, 2))))
    with h5py.File(tmp_path / f"volume_7_slice_{k}.h5", "r") as f:
        image, mask = f["image"][()], f["mask"][()]
    assert image.shape == (SMALL[1], SMALL[2], 4) and image.dtype == np.float64
    assert mask.shape == (SMALL[1], SMALL[2], 3) and mask.dtype == np.uint8
    for c, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        np.testing.assert_array_equal(image[..., c], small_case.image[MODALITIES.index(modality), k])
    assert mask.sum(axis=-1).max() <= 1  # one-hot
    label = np.zeros(mask.shape[:2], np.uint8)
    for c, value in enumerate((1, 2, 4)):
        label[mask[..., c] == 1] = value
    np.testing.assert_array_equal(label, small_case.label[k])


def test_write_decathlon_round_trip(tmp_path: Path, small_case: Case) -> None:
    image_path = write_decathlon(small_case, tmp_path / "imagesTr", tmp_path / "labelsTr")
    assert image_path == tmp_path / "imagesTr" / "Synth_007.nii.gz"
    img = nib.load(image_path)
    assert img.shape == (SMALL[1], SMALL[2], SMALL[0], 4) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.affine, small_case.affine)
    data = np.asarray(img.dataobj)
    for c in range(4):
        np.testing.assert_array_equal(data[..., c], case_to_nifti_axes(small_case.image[c]))
    msd = nifti_to_case_axes(np.asarray(nib.load(tmp_path / "labelsTr" / "Synth_007.nii.gz").dataobj))
    brats = small_case.label
    assert ((msd == 1) == (brats == 2)).all() and ((msd == 2) == (brats == 1)).all()
    assert ((msd == 3) == (brats == 4)).all()


def test_save_label_nifti_replaces_atomically(tmp_path: Path, small_case: Case) -> None:
    path = tmp_path / "pred.nii.gz"
    save_label_nifti(np.zeros(SMALL, np.uint8), small_case, path)
    written = save_label_nifti(small_case.label, small_case, path)
    assert written == path
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, small_case.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), case_to_nifti_axes(small_case.label))
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii.gz"]  # no temporary files left
    with pytest.raises(ValueError):
        save_label_nifti(np.zeros((3, 3, 3), np.uint8), small_case, tmp_path / "bad.nii.gz")


def test_write_cohort_layouts_and_independence_of_n(tmp_path: Path) -> None:
    size = (16, 32, 32)
    nifti = write_cohort(tmp_path / "a", 3, seed=5, size=size, workers=2)
    assert nifti == [tmp_path / "a" / case_id_for(i) for i in range(3)]
    one = write_cohort(tmp_path / "b", 1, seed=5, size=size, workers=1)
    first = [np.asarray(nib.load(p / "Synth_000_flair.nii.gz").dataobj) for p in (nifti[0], one[0])]
    np.testing.assert_array_equal(*first)

    h5 = write_cohort(tmp_path / "c", 2, seed=5, size=size, fmt="h5", workers=1)
    assert h5 == [tmp_path / "c" / "h5"]
    assert len(list(h5[0].glob("volume_1_slice_*.h5"))) == size[0]

    both = write_cohort(tmp_path / "d", 2, seed=5, size=size, fmt="both", workers=1)
    assert both[:2] == [tmp_path / "d" / "nifti" / case_id_for(i) for i in range(2)]
    assert both[2] == tmp_path / "d" / "h5" and len(list(both[2].iterdir())) == 2 * size[0]

    for bad in (dict(fmt="png"), dict(workers=0), dict(size=(2, 32, 32))):
        with pytest.raises(ValueError):
            write_cohort(tmp_path / "e", 1, **bad)
    with pytest.raises(ValueError):
        write_cohort(tmp_path / "e", 0)


def test_readers_load_what_the_writers_wrote(tmp_path: Path, small_case: Case) -> None:
    from medvision.data import readers

    loaded = readers.load_case(write_brats_folder(small_case, tmp_path / "brats"))
    np.testing.assert_array_equal(loaded.image, small_case.image)
    np.testing.assert_array_equal(loaded.label, small_case.label)
    np.testing.assert_allclose(loaded.affine, small_case.affine)
    write_kaggle_slices(small_case, tmp_path / "kaggle", volume_index=3)
    kaggle = readers.load_case(tmp_path / "kaggle")
    np.testing.assert_array_equal(kaggle.image, small_case.image)
    np.testing.assert_array_equal(kaggle.label, small_case.label)


def _synth_parser() -> argparse.ArgumentParser:
    from medvision.commands import synth

    parser = argparse.ArgumentParser()
    synth.register(parser.add_subparsers(dest="command"))
    return parser


def test_synth_command_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _synth_parser().parse_args(
        ["synth", "--cases", "2", "--size", "16", "32", "32", "--workers", "1"]
        + ["--no-progress", "--format", "both", "--out", str(tmp_path)]
    )
    assert args.func(args) == 0
    assert "wrote 2 synthetic cases" in capsys.readouterr().out
    assert (tmp_path / "nifti" / "Synth_001" / "Synth_001_seg.nii.gz").exists()
    assert (tmp_path / "h5" / "volume_1_slice_15.h5").exists()
    with pytest.raises(SystemExit):
        _synth_parser().parse_args(["synth", "--out", str(tmp_path), "--cases", "0"])
    with pytest.raises(SystemExit):
        _synth_parser().parse_args(["synth", "--out", str(tmp_path), "--size", "4", "32", "32"])


def test_cli_main_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medvision.cli import main

    code = main(
        ["synth", "--cases", "1", "--size", "16", "32", "32", "--no-progress", "--out", str(tmp_path)]
    )
    assert code == 0
    assert "wrote 1 synthetic cases" in capsys.readouterr().out
    assert len(list((tmp_path / "Synth_000").glob("*.nii.gz"))) == 5
