"""The model card's numbers: calibration error, uncertainty AUROC, and the per-subset tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medvision.train.calibration import auroc, case_calibration, expected_calibration_error
from medvision.train.model_card import load_subset_results, subset_table, worst_additions


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    truth = rng.uniform(size=p.size) < p  # outcomes drawn with the stated probability
    assert expected_calibration_error(p, truth) < 0.01
    assert expected_calibration_error(np.full(1000, 0.95), np.zeros(1000, bool)) == pytest.approx(0.95)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], bool)))


def test_auroc_ranks():
    score = np.array([0.1, 0.2, 0.3, 0.4])
    assert auroc(score, np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(score, np.array([1, 1, 0, 0], bool)) == 0.0
    assert auroc(np.ones(4), np.array([1, 0, 1, 0], bool)) == 0.5  # ties count half
    assert np.isnan(auroc(score, np.zeros(4, bool)))


def test_case_calibration_uses_brain_voxels_only():
    truth = np.zeros((2, 4, 4), bool)
    truth[:, :2] = True
    predicted = truth.copy()
    predicted[0, 0, 0] = False  # one wrong voxel, the most uncertain one
    uncertainty = np.where(predicted != truth, 0.5, 0.01)
    brain = np.ones_like(truth)
    brain[1, 3, 3] = False
    scores = case_calibration(truth.astype(np.float32), uncertainty, predicted, truth, brain)
    assert scores["auroc_uncertainty_error"] == 1.0 and scores["ece_wt"] == 0.0
    assert scores["error_fraction"] == pytest.approx(1 / brain.sum())


def _result(modalities: str, wt: float) -> dict:
    row = {
        r: {"dice": wt if r == "WT" else 0.5, "hd95": None if r == "ET" else 4.0, "dice_small": 0.4}
        for r in ("WT", "TC", "ET")
    }
    return {"modalities": modalities, "per_case": [{"case_id": "A", **row}, {"case_id": "B", **row}]}


def test_subset_table_pools_folds_and_flags_drops(tmp_path: Path):
    one = tmp_path / "fold_0.json"
    two = tmp_path / "fold_1.json"
    one.write_text(json.dumps({"subsets": [_result("flair", 0.80), _result("flair+t1", 0.70)]}))
    two.write_text(json.dumps({"subsets": [_result("flair", 0.80), _result("flair+t1", 0.70)]}))
    pooled = load_subset_results([one, two])
    assert len(pooled["flair"]) == 4
    table = subset_table(pooled)
    assert "| flair | 4 | 0.800 | 0.500 | 0.500 | 4.0 | 4.0 | 373.1 |" in table
    assert worst_additions(pooled) == ["flair -> +t1: WT Dice 0.100 lower"]


def test_cross_validation_is_recorded_and_shown_for_the_given_subset(tmp_path: Path):
    from medvision.app_support.subset_expectations import expectation_line, expected_scores, modalities_line
    from medvision.train.model_card import record_in_checkpoint

    meta_file = tmp_path / "default.json"
    meta_file.write_text(json.dumps({"format": "medvision-checkpoint", "weights_sha256": "x"}))
    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps({"subsets": [_result("flair", 0.81), _result("flair+t1ce", 0.86)]}))
    record_in_checkpoint(meta_file, load_subset_results([fold]), "3-fold cross-validation")
    meta = json.loads(meta_file.read_text())
    assert meta["weights_sha256"] == "x" and meta["cross_validation"]["subsets"]["flair"]["WT"] == 0.81
    assert expected_scores(meta, ("t1ce", "flair"))["WT"] == 0.86
    assert expected_scores(meta, ("t2",)) is None and expected_scores({}, ("flair",)) is None
    line = expectation_line(meta, ("flair",))
    assert (
        line
        == "Expected for FLAIR (3-fold cross-validation, 2 real cases): mean Dice WT 0.81, TC 0.50, ET 0.50"
    )
    assert modalities_line(("flair", "t1ce")) == "Given: FLAIR, T1CE · missing: T1, T2"
    assert modalities_line(("flair", "t1", "t1ce", "t2")).endswith("(all four)")
    assert modalities_line(("t1", "t1ce"), ("t1",)) == (
        "Given: T1, T1CE · missing: FLAIR, T2 · T1 set aside: the model's cross-validation scored this input "
        "higher without it (model card)"
    )


def test_the_table_command_line(tmp_path: Path, capsys) -> None:
    from medvision.train.model_card import main

    fold = tmp_path / "fold.json"
    fold.write_text(json.dumps({"subsets": [_result("flair", 0.81), _result("flair+t1", 0.7)]}))
    meta_file = tmp_path / "ckpt.json"
    meta_file.write_text(json.dumps({"format": "medvision-checkpoint"}))
    assert main([str(fold), "--into", str(meta_file)]) == 0
    out = capsys.readouterr().out
    assert "| flair | 2 | 0.810 |" in out and "flair -> +t1: WT Dice 0.110 lower" in out
    assert json.loads(meta_file.read_text())["cross_validation"]["subsets"]["flair"]["WT"] == 0.81
    assert main(["--help"]) == 0 and "--into" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "no such result file" in capsys.readouterr().err and main([]) == 2


def test_failure_figure_draws_truth_beside_prediction(tmp_path: Path):
    from PIL import Image

    from medvision.checkpoint import save_checkpoint
    from medvision.data.store import prepare_store
    from medvision.models import AttentionUNet
    from medvision.train.card_figures import failure_figure
    from tests.test_trainer import tiny_case

    store = prepare_store([tiny_case("Tiny_000", 0)], tmp_path / "s.h5", workers=1, progress=False)
    checkpoint = tmp_path / "m.safetensors"
    torch.manual_seed(0)  # an untrained network whose most-marked slice is not the truth's (checked below)
    save_checkpoint(
        checkpoint, AttentionUNet(8, 3, 4, 2, 0.1), {"target": "regions", "modality_input": "availability"}
    )
    out = tmp_path / "fig.png"
    index = failure_figure(str(checkpoint), str(store), "Tiny_000", out, ("flair", "t1ce"))
    picture = np.asarray(Image.open(out))
    assert 0 <= index < 8 and picture.shape[2] == 3 and picture.shape[1] % 2 == 0
    left = picture[:, : picture.shape[1] // 2].astype(int)
    assert ((left[..., 0] - left[..., 2]) > 60).any(), "the true tumour is drawn in colour"
    # --at prediction: the slice where the (untrained, so arbitrary) prediction marks the most tumour.
    import dataclasses

    from medvision.app_support.orientation import DisplayFrame
    from medvision.data.modality_sets import keep_only
    from medvision.data.store import SliceStore
    from medvision.train.evaluation import checkpoint_engine

    engine, _ = checkpoint_engine(str(checkpoint), "cpu", "auto", "auto", 16)
    with SliceStore(store) as opened:
        case = opened.read_case("Tiny_000")
        prepared = engine.prepare_stored(opened.read_image("Tiny_000"))
    given = ("flair", "t1ce")
    predicted = engine.predict(
        dataclasses.replace(prepared, image=keep_only(prepared.image, given), available=given)
    ).label
    axis = DisplayFrame.from_affine(case.affine).slice_axis("axial")
    others = tuple(a for a in range(3) if a != axis)
    assert index == int(np.argmax((case.label > 0).sum(axis=others)))
    at_prediction = failure_figure(str(checkpoint), str(store), "Tiny_000", out, given, "prediction")
    assert at_prediction == int(np.argmax((predicted > 0).sum(axis=others))) != index
    with pytest.raises(ValueError, match="at must be one of"):
        failure_figure(str(checkpoint), str(store), "Tiny_000", out, ("flair",), "both")


def test_weak_subsets_are_warned_with_the_addition_that_helps_most():
    from medvision.app_support.subset_expectations import weak_subset_warning

    def row(wt: float) -> dict:
        return {"cases": 9, "WT": wt, "TC": 0.1, "ET": 0.1}

    subsets = {"t1ce": row(0.13), "flair+t1ce": row(0.73), "t1ce+t2": row(0.57), "t1+t1ce": row(0.10)}
    meta = {"cross_validation": {"source": "cv", "subsets": {**subsets, "t1": row(0.0), "flair": row(0.71)}}}
    assert weak_subset_warning(meta, ("t1ce",)) == (
        "With T1CE alone this model mostly misses the tumour (cross-validated WT Dice 0.13). "
        "Adding FLAIR gives 0.73 (FLAIR+T1CE)."
    )
    assert weak_subset_warning(meta, ("flair",)) is None  # 0.71: no warning
    # No recorded addition that helps: the warning alone.
    assert weak_subset_warning(meta, ("t1",)).endswith("(cross-validated WT Dice 0.00).")
    assert weak_subset_warning({}, ("t1ce",)) is None and weak_subset_warning(meta, ("t2",)) is None
