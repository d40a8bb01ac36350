"""Dataset discovery: cases nested the way real downloads nest them, and clear refusals otherwise."""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path
from types import ModuleType

import h5py
import nibabel as nib
import numpy as np
import pytest

from medvision.commands import prepare as prepare_command
from medvision.commands import synth as synth_command
from medvision.data import discovery
from medvision.data.case import MODALITIES
from medvision.data.readers import list_case_sources
from medvision.data.store import SliceStore
from medvision.errors import InputDataError

SHAPE = (24, 24, 16)  # NIfTI (i, j, k) -> Case (D, H, W) = (16, 24, 24)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
EXPECTED = (
    "expected BraTS case folders (<ID>_flair.nii.gz ...), a Decathlon folder with imagesTr/, "
    "Kaggle volume_<v>_slice_<s>.h5 files, or one case"
)


# ---------------------------------------------------------------------------------------- helpers


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), path)
    return path


def volume(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 1000, shape, dtype=np.int16)


def labels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array([0, 1, 2, 4], dtype=np.uint8), SHAPE)


def write_brats_case(folder: Path, *, ext: str = ".nii.gz", seg_name: str | None = None) -> Path:
    """``<folder>/<name>_{flair,t1,t1ce,t2,seg}<ext>``; ``seg_name`` replaces the seg file's name."""
    for seed, modality in enumerate(MODALITIES):
        save(volume(seed), folder / f"{folder.name}_{modality}{ext}")
    save(labels(), folder / (seg_name or f"{folder.name}_seg{ext}"))
    return folder


def write_decathlon_image(task: Path, name: str, split: str = "Tr") -> None:
    save(volume(7, (*SHAPE, 4)), task / f"images{split}" / f"{name}.nii.gz")
    if split == "Tr":
        save(
            np.random.default_rng(1).integers(0, 4, SHAPE, dtype=np.uint8),
            task / "labelsTr" / f"{name}.nii.gz",
        )


def write_kaggle_volume(folder: Path, volume_index: int, n_slices: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_slices):
        with h5py.File(folder / f"volume_{volume_index}_slice_{s}.h5", "w") as handle:
            handle.create_dataset("image", data=np.full((12, 10, 4), float(s + 1)))
            handle.create_dataset("mask", data=np.zeros((12, 10, 3), np.uint8))


def refusal(source: Path) -> str:
    with pytest.raises(InputDataError) as info:
        list_case_sources(source)
    return str(info.value)


# ---------------------------------------------------------------------------------- real layouts


def test_nested_brats2020_kaggle_layout_with_csvs_and_case_355(tmp_path: Path) -> None:
    training = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    for number in ("001", "002"):
        write_brats_case(training / f"BraTS20_Training_{number}", ext=".nii")
    write_brats_case(training / "BraTS20_Training_355", ext=".nii", seg_name="W39_1998.09.19_Segm.nii")
    (training / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    (training / "survival_info.csv").write_text("Brats20ID,Age,Survival_days\n")
    expected = ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_355"]

    for source in (tmp_path, tmp_path / "BraTS2020_TrainingData", training):
        refs = list_case_sources(source)
        assert [r.case_id for r in refs] == expected
        assert {r.kind for r in refs} == {"brats"}
    case = pickle.loads(pickle.dumps(refs[2])).load()
    assert case.case_id == "BraTS20_Training_355" and case.label is not None
    assert case.source_paths[-1].name == "W39_1998.09.19_Segm.nii"


def test_parent_of_decathlon_task_ignores_appledouble_files(tmp_path: Path) -> None:
    task = tmp_path / "Task01_BrainTumour"
    write_decathlon_image(task, "BRATS_001")
    write_decathlon_image(task, "BRATS_002")
    write_decathlon_image(task, "BRATS_485", split="Ts")
    (task / "dataset.json").write_text('{"name": "BRATS"}')
    for junk in (
        "._dataset.json",
        "._imagesTr",
        "imagesTr/._BRATS_001.nii.gz",
        "labelsTr/._BRATS_001.nii.gz",
    ):
        (task / junk).write_bytes(b"\0\5\26\7" + bytes(60))
    (tmp_path / "._Task01_BrainTumour").write_bytes(bytes(64))
    (tmp_path / ".DS_Store").write_bytes(bytes(64))
    save(volume(3), tmp_path / "__MACOSX" / "Task01_BrainTumour" / "imagesTr" / "._BRATS_002.nii.gz")

    refs = list_case_sources(tmp_path)
    assert [r.case_id for r in refs] == ["BRATS_001", "BRATS_002"]  # imagesTs has no labels: not read
    assert [r.label_path for r in refs] == [task / "labelsTr" / f"BRATS_00{i}.nii.gz" for i in (1, 2)]
    assert [r.case_id for r in list_case_sources(task / "imagesTs")] == ["BRATS_485"]


def test_nested_kaggle_h5_slices_with_meta_data(tmp_path: Path) -> None:
    data = tmp_path / "BraTS2020_training_data" / "content" / "data"
    for v in (1, 2, 10):
        write_kaggle_volume(data, v)
    (data / "meta_data.csv").write_text("slice_path,target,volume,slice\n")

    refs = list_case_sources(tmp_path)
    assert [r.case_id for r in refs] == ["volume_1", "volume_2", "volume_10"]  # numeric order
    assert {r.path for r in refs} == {data}
    case = pickle.loads(pickle.dumps(refs[2])).load()
    assert case.case_id == "volume_10" and case.image.shape == (4, 3, 12, 10)


def run_command(module: ModuleType, *argv: str) -> int:
    """Run one ``medvision.commands`` module the way the CLI does, without importing every command."""
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_synth_both_output_prepares_as_one_cohort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cohort = tmp_path / "cohort"
    synth_args = ["--cases", "2", "--size", "16", "24", "24", "--format", "both", "--workers", "1"]
    assert run_command(synth_command, "synth", "--out", str(cohort), *synth_args, "--no-progress") == 0
    assert f"`prepare {cohort}` reads the NIfTI copy {cohort / 'nifti'}" in capsys.readouterr().out
    caplog.set_level(logging.INFO, logger=discovery.__name__)

    refs = list_case_sources(cohort)
    assert [(r.kind, r.case_id) for r in refs] == [("brats", "Synth_000"), ("brats", "Synth_001")]
    assert f"reading the NIfTI copy {cohort / 'nifti'}" in caplog.text
    assert [r.case_id for r in list_case_sources(cohort / "h5")] == ["volume_0", "volume_1"]

    store = tmp_path / "synth.h5"
    prepare_args = ["--out", str(store), "--workers", "1", "--no-progress"]
    assert run_command(prepare_command, "prepare", str(cohort), *prepare_args) == 0
    with SliceStore(store) as prepared:
        assert prepared.case_ids == ["Synth_000", "Synth_001"]
        assert len(prepared.slice_table()) > 0


# ------------------------------------------------------------------------------------- refusals


def test_depth_limit_is_named_when_exceeded(tmp_path: Path) -> None:
    levels = [f"level{i}" for i in range(1, discovery.MAX_DEPTH)]  # the case folder is one more level
    write_brats_case(tmp_path.joinpath(*levels, "Case_001"))
    assert [r.case_id for r in list_case_sources(tmp_path)] == ["Case_001"]

    root = tmp_path / "deeper"
    write_brats_case(root.joinpath(*levels, "extra", "Case_002"))
    deep = "/".join([*levels, "extra", "Case_002"])
    assert refusal(root) == (
        f"{root}: no cases found (searched 5 levels below it; skipped: "
        f"1 folder more than 5 levels down (not searched): {deep}); {EXPECTED}"
    )


def test_brats_folders_beside_a_decathlon_task_are_refused(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "BraTS2021" / "BraTS2021_00006")
    write_decathlon_image(tmp_path / "Task01_BrainTumour", "BRATS_001")
    assert refusal(tmp_path) == (
        f"{tmp_path}: holds cases in more than one format: "
        "BraTS case folders (e.g. BraTS2021/BraTS2021_00006) and "
        "Decathlon Task01 images (e.g. Task01_BrainTumour/imagesTr/BRATS_001.nii.gz); "
        "give the folder of one format"
    )


def test_nifti_folders_beside_kaggle_slices_are_refused(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "cases" / "Case_001")
    write_kaggle_volume(tmp_path / "slices", 0)
    assert refusal(tmp_path) == (
        f"{tmp_path}: holds cases in more than one format: BraTS case folders (e.g. cases/Case_001) and "
        "Kaggle .h5 slices (e.g. slices); give the folder of one format"
    )
    # The synth layout (nifti/ + h5/) with a different number of cases in each is not the same cohort.
    root = tmp_path / "not_synth"
    write_brats_case(root / "nifti" / "Synth_000")
    write_kaggle_volume(root / "h5", 0)
    write_kaggle_volume(root / "h5", 1)
    assert "more than one format" in refusal(root)


def test_nothing_found_lists_what_was_skipped(tmp_path: Path) -> None:
    outside = write_brats_case(tmp_path / "outside" / "Case_001")
    root = tmp_path / "download"
    (root / "docs").mkdir(parents=True)
    (root / "name_mapping.csv").write_text("a\n")
    (root / "docs" / "survival_info.csv").write_text("a\n")
    (root / "docs" / "README.txt").write_text("read me\n")
    save(volume(0), root / "scans" / "brain.nii.gz")
    save(volume(1), root / "scans" / "head.nii")
    (root / "archives").mkdir()
    (root / "archives" / "BraTS2020.zip").write_bytes(b"PK\5\6" + bytes(18))
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert refusal(root) == (
        f"{root}: no cases found (searched 5 levels below it; skipped: 2 CSV files (e.g. name_mapping.csv), "
        "1 text file: docs/README.txt, 1 folder with NIfTI files not named like a BraTS case: scans, "
        "1 .zip file in a subfolder (only .zip files directly in the folder given are read): "
        f"archives/BraTS2020.zip, 1 symbolic link to a folder (not followed): link); {EXPECTED}"
    )
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert refusal(tmp_path / "empty") == (
        f"{tmp_path / 'empty'}: no cases found (searched 5 levels below it; it holds no files); {EXPECTED}"
    )


def test_duplicate_case_ids_in_nested_folders_are_refused(tmp_path: Path) -> None:
    write_brats_case(tmp_path / "train" / "Case_001")
    write_brats_case(tmp_path / "val" / "Case_001")
    assert refusal(tmp_path) == (
        f"{tmp_path}: case ids occur more than once: ['Case_001'] (e.g. train/Case_001 and val/Case_001)"
    )


def test_walk_is_bounded_in_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(discovery, "MAX_FOLDERS", 3)
    assert refusal(tmp_path) == (
        f"{tmp_path}: more than 3 folders within 5 levels; give the dataset folder itself"
    )
