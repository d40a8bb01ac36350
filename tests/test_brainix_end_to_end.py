"""BRAINIX, a real clinical DICOM study (skull, 6 mm slices, no T1ce), predicted end to end as a new user
would: the study folder as INPUT, a NIfTI on the FLAIR series' own grid and a DICOM-SEG referencing it.

The shipped any-subset model (checkpoints/default.safetensors) is used where it exists, and its WT Dice
against the tumour ROI drawn on the FLAIR grid is printed; without it a tiny untrained any-subset model
checks the pipeline alone."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel import orientations as ornt

from medvision.checkpoint import save_checkpoint
from medvision.cli import main
from medvision.data.case import case_to_nifti_axes
from medvision.models import AttentionUNet
from tests.dicom_fixtures import BRAINIX

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "default.safetensors"


def save_any_subset_checkpoint(path: Path) -> Path:
    """An untrained model taking availability planes (4 modalities + 4 planes), saved at ``path``."""
    torch.manual_seed(0)
    save_checkpoint(
        path, AttentionUNet(8, 3, 4, 2, 0.1), {"target": "regions", "modality_input": "availability"}
    )
    return path


@pytest.fixture(scope="module")
def any_subset_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_any_subset_checkpoint(tmp_path_factory.mktemp("ckpt") / "any_subset.safetensors")


def _predict(study: Path, out: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> str:
    args = ["predict", study, "-o", out / "seg.nii.gz", "--dicom-seg", out / "seg.dcm"]
    code = main([str(a) for a in [*args, "--checkpoint", checkpoint, "--device", "cpu"]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, any_subset_checkpoint: Path) -> tuple[Path, str]:
    """One predict run with the tiny model, shared by the checks below (capsys is per test)."""
    import contextlib
    import io

    if not (BRAINIX / "DICOM" / "FLAIR").is_dir():
        pytest.skip(f"BRAINIX study not found at {BRAINIX}")
    out = tmp_path_factory.mktemp("brainix_out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                str(a)
                for a in (
                    "predict",
                    BRAINIX / "DICOM",
                    "-o",
                    out / "seg.nii.gz",
                    "--dicom-seg",
                    out / "seg.dcm",
                    "--checkpoint",
                    any_subset_checkpoint,
                    "--device",
                    "cpu",
                    # Module scope runs before conftest's per-test cache folder: name one here.
                    "--cache-dir",
                    out / "onnx_cache",
                )
            ]
        )
    assert code == 0
    return out, stdout.getvalue()


def test_output_is_on_the_flair_grid(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    written = nib.load(out / "seg.nii.gz")
    flair = nib.load(BRAINIX / "FLAIR.nii.gz")  # a conversion made elsewhere: same grid, j flipped
    assert written.shape == flair.shape == (288, 288, 22)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 1
    np.testing.assert_allclose(
        nib.as_closest_canonical(written).affine, nib.as_closest_canonical(flair).affine, atol=1e-3
    )
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}


def test_dicom_seg_references_the_flair_series(tiny_run: tuple[Path, str]) -> None:
    out, _ = tiny_run
    seg = pydicom.dcmread(out / "seg.dcm")
    flair_file = sorted((BRAINIX / "DICOM" / "FLAIR").iterdir())[0]
    flair = pydicom.dcmread(flair_file, stop_before_pixels=True)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == flair.SeriesInstanceUID
    assert seg.StudyInstanceUID == flair.StudyInstanceUID


def test_report_says_what_was_read_and_done_without_patient_data(tiny_run: tuple[Path, str]) -> None:
    _, stdout = tiny_run
    assert "series 401 'sT2W/FLAIR'" in stdout and "used (reference)" in stdout
    assert "FLAIR_ROI" in stdout and "skipped" in stdout
    assert "predict: scan is not skull-stripped (" in stdout and "brain extracted (" in stdout
    assert "modalities used: flair, t1, t2" in stdout and "22 slices of 288x288" in stdout
    header = pydicom.dcmread(sorted((BRAINIX / "DICOM" / "FLAIR").iterdir())[0], stop_before_pixels=True)
    for field in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID"):
        value = str(header.get(field, "") or "")
        if len(value) > 2:
            assert value not in stdout, f"{field} printed"


def _wt_dice(label_file: Path) -> float:
    """WT Dice of a written label against BRAINIX's ROI (both reoriented onto the label's axes)."""
    written = nib.load(label_file)
    roi_image = nib.load(BRAINIX / "ROI.nii.gz")
    turn = ornt.ornt_transform(ornt.io_orientation(roi_image.affine), ornt.io_orientation(written.affine))
    roi = ornt.apply_orientation(np.asarray(roi_image.dataobj) > 0, turn)
    wt = np.asarray(written.dataobj) > 0
    assert roi.shape == wt.shape
    return float(2 * (wt & roi).sum() / max(int(wt.sum() + roi.sum()), 1))


def test_wt_dice_against_the_roi(
    tmp_path: Path,
    tiny_run: tuple[Path, str],
    capsys: pytest.CaptureFixture,
) -> None:
    """With the shipped any-subset model: its WT Dice on BRAINIX, printed; else the pipeline's output."""
    if DEFAULT_CHECKPOINT.exists():
        _predict(BRAINIX / "DICOM", tmp_path, DEFAULT_CHECKPOINT, capsys)
        label_file, model = tmp_path / "seg.nii.gz", DEFAULT_CHECKPOINT.name
    else:
        label_file, model = tiny_run[0] / "seg.nii.gz", "tiny untrained model (no default checkpoint yet)"
    dice = _wt_dice(label_file)
    with capsys.disabled():
        print(f"\nBRAINIX WT Dice vs ROI with {model}: {dice:.3f}")
    if DEFAULT_CHECKPOINT.exists():
        # The shipped model finds the tumour (0.771 when last trained; aim 0.75): a floor well below that
        # catches a model, pipeline or geometry change that loses it, not a retraining's small drift.
        assert dice >= 0.5, dice
    else:
        assert 0.0 <= dice <= 1.0


def test_roi_lies_inside_the_brain_mask_of_the_run(tiny_run: tuple[Path, str]) -> None:
    """The brain extraction keeps the tumour: the ROI's voxels lie in the non-zero region predict used."""
    from medvision.data.brain_extraction import extract_case_brain
    from medvision.dicom import load_study

    case, _report, native = load_study(BRAINIX / "DICOM")
    mask = case_to_nifti_axes(native(extract_case_brain(case).mask.astype(np.uint8)))
    roi_image = nib.load(BRAINIX / "ROI.nii.gz")
    turn = ornt.ornt_transform(ornt.io_orientation(roi_image.affine), ornt.io_orientation(native.case.affine))
    roi = ornt.apply_orientation(np.asarray(roi_image.dataobj) > 0, turn)
    assert (roi & (mask > 0)).sum() / roi.sum() > 0.98


def test_a_study_split_into_series_folders_is_one_batch_item() -> None:
    """BRAINIX/DICOM/{FLAIR,T1,T2,ROI}: four folders, one study (their files name the same study)."""
    from medvision.commands.predict_batch import batch_items

    if not (BRAINIX / "DICOM" / "FLAIR").is_dir():
        pytest.skip(f"BRAINIX study not found at {BRAINIX}")
    assert batch_items(BRAINIX / "DICOM") == [BRAINIX / "DICOM"]


def test_our_phantom_trained_extractor_keeps_the_tumour_and_the_model_finds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--brain-extractor phantom` (trained on head phantoms only) on a real skull: the ROI stays inside
    its mask, and the shipped model's WT Dice after it (0.728 when the extractor was trained; deepbet
    0.771) is printed and held to the same floor as the default extractor's."""
    from medvision.data.brain_extraction import PHANTOM_METHOD, extract_case_brain
    from medvision.dicom import load_study

    if not (BRAINIX / "DICOM" / "FLAIR").is_dir():
        pytest.skip(f"BRAINIX study not found at {BRAINIX}")
    case, _report, native = load_study(BRAINIX / "DICOM")
    brain = extract_case_brain(case, method="phantom")
    assert brain.method == PHANTOM_METHOD and brain.channel == "flair"
    mask = case_to_nifti_axes(native(brain.mask.astype(np.uint8)))
    roi_image = nib.load(BRAINIX / "ROI.nii.gz")
    turn = ornt.ornt_transform(ornt.io_orientation(roi_image.affine), ornt.io_orientation(native.case.affine))
    roi = ornt.apply_orientation(np.asarray(roi_image.dataobj) > 0, turn)
    assert (roi & (mask > 0)).sum() / roi.sum() > 0.98
    assert 1000 < brain.volume_cm3 < 1700  # an adult brain, not the head (BRAINIX: 1332 cm^3)
    if not DEFAULT_CHECKPOINT.exists():
        return
    args = ["predict", BRAINIX / "DICOM", "-o", tmp_path / "seg.nii.gz", "--brain-extractor", "phantom"]
    code = main([str(a) for a in [*args, "--checkpoint", DEFAULT_CHECKPOINT, "--device", "cpu"]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "our network trained on head phantoms" in captured.out
    dice = _wt_dice(tmp_path / "seg.nii.gz")
    with capsys.disabled():
        print(f"\nBRAINIX WT Dice vs ROI, phantom-trained brain extractor: {dice:.3f}")
    assert dice >= 0.5, dice
