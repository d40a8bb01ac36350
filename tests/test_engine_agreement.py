"""One inference engine: ``evaluate`` scores what ``predict`` writes, the trainer's validation equals
``evaluate`` on the same split, and ``import medvision.inference`` pulls in no training code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvision.cli import main as cli_main
from medvision.data.case import case_to_nifti_axes, nifti_to_case_axes
from medvision.data.store import prepare_store
from medvision.inference import DEFAULT_CHECKPOINT, label_masks
from medvision.metrics import case_scores
from medvision.train import rundir
from medvision.train.evaluation import evaluate_checkpoint
from medvision.train.run import run_training
from tests.test_trainer import TINY, tiny_case

REPO_ROOT = Path(__file__).resolve().parents[1]
BRATS2018 = REPO_ROOT.parent / "shared" / "data" / "brats2018_dev"
REAL_CASE = "Brats18_2013_2_1"
SLAB = 40  # axial slices around the tumour's largest slice: a third of the volume keeps the test short


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads (see tests/test_trainer.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_slab(source: Path, out: Path, slices: int) -> Path:
    """A BraTS case folder holding ``slices`` axial slices of ``source`` around its largest tumour slice."""
    from medvision.data.readers import load_case

    case = load_case(source)
    centre = int(np.argmax((case.label > 0).sum(axis=(1, 2))))
    start = min(max(centre - slices // 2, 0), case.shape[0] - slices)
    folder = out / case.case_id
    folder.mkdir(parents=True)
    volumes = dict(zip(("flair", "t1", "t1ce", "t2"), case.image, strict=True), seg=case.label)
    for name, volume in volumes.items():
        data = case_to_nifti_axes(np.asarray(volume)[start : start + slices])
        nib.save(nib.Nifti1Image(data, case.affine), folder / f"{case.case_id}_{name}.nii.gz")
    return folder


def test_import_inference_loads_no_training_code() -> None:
    code = (
        "import sys, medvision.inference; "
        "print(sorted(m for m in sys.modules if m.startswith('medvision.train')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_evaluate_scores_what_predict_writes_on_a_real_case(tmp_path: Path, capsys) -> None:
    """The Dice ``evaluate --split all`` reports per case equals the Dice of the label file ``predict``
    writes, within 0.005 per region (the store keeps the crop as float16: the only difference)."""
    if not (BRATS2018 / REAL_CASE).is_dir():
        pytest.skip(f"real BraTS 2018 case not found at {BRATS2018 / REAL_CASE}")
    from medvision.data.readers import load_case

    folder = write_slab(BRATS2018 / REAL_CASE, tmp_path / "in", SLAB)
    case = load_case(folder)
    out = tmp_path / "pred.nii.gz"
    assert cli_main(["predict", str(folder), "-o", str(out), "--device", "cpu"]) == 0
    written = nifti_to_case_axes(np.asarray(nib.load(out).dataobj)).astype(np.uint8)
    regions = ("WT", "TC", "ET")
    truth = label_masks(case.label, regions)
    predicted = case_scores(label_masks(written, regions), truth, case.spacing, with_hd95=False)

    store = prepare_store([case], tmp_path / "store.h5", workers=1, progress=False)
    result = evaluate_checkpoint(DEFAULT_CHECKPOINT, store, split="all", device="cpu", with_hd95=False)
    (evaluated,) = result["per_case"]
    assert evaluated["case_id"] == case.case_id
    for region in regions:
        assert predicted[region]["dice"] > 0.0  # a real prediction, not two empty masks
        assert abs(evaluated[region]["dice"] - predicted[region]["dice"]) <= 0.005, region


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    cases = [tiny_case(f"Tiny_{i:03d}", i) for i in range(4)]
    return prepare_store(cases, tmp_path_factory.mktemp("store") / "store.h5", workers=1, progress=False)


def test_trainer_validation_equals_evaluate_on_the_val_split(store: Path, tmp_path: Path, one_thread) -> None:
    run = tmp_path / "run"
    assert run_training(TINY, run, store) == "finished"
    last = rundir.checkpoint_path(run, "last")
    epoch = rundir.read_metrics(run, "epoch")[-1]  # the validation of the weights in "last"
    result = evaluate_checkpoint(
        last, store, split="val", device="cpu", amp="off", backend="torch", with_hd95=False
    )
    assert result["cases"] == epoch["val_cases"]
    for region, row in result["regions"].items():
        for key in ("dice", "iou", "precision", "recall", "pooled_dice", "both_empty_cases"):
            assert epoch["val"][region][key] == pytest.approx(row[key], abs=1e-9), (region, key)
    assert epoch["val_mean_dice"] == pytest.approx(np.mean([r["dice"] for r in result["regions"].values()]))
