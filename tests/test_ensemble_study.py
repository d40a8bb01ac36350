"""The seed-ensemble study's figures, on made-up per-case scores and probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from medvision.data.case import REGIONS
from medvision.inference import label_masks
from medvision.train import ensemble_study
from medvision.train.ensemble_study import GOALS, SUBSETS, format_rows, summary_row


def _rows(wt: float, tc: float, et: float, hd95: list[float]) -> list[dict]:
    return [{"case_id": f"c{i}", "WT": wt, "TC": tc, "ET": et, "hd95_wt": h} for i, h in enumerate(hd95)]


def _member(wt: float) -> dict[str, list[dict]]:
    return {subset: _rows(wt, 0.5, 0.3, [4.0, 9.0, 30.0]) for subset in SUBSETS}


def test_the_summary_is_the_mean_of_the_seven_goal_figures_and_the_median_hd95():
    figures = summary_row(_member(0.8))
    expected = np.mean([{"WT": 0.8, "TC": 0.5, "ET": 0.3}[region] for _, region in GOALS])
    assert figures["mean of 7"] == pytest.approx(expected)
    assert figures["median WT HD95"] == 9.0
    assert figures["flair WT"] == pytest.approx(0.8) and figures["t1ce TC"] == pytest.approx(0.5)


def test_the_table_has_a_row_per_member_and_the_ensemble_per_case_beside_the_runs_mean():
    table = format_rows({"seed0": _member(0.7), "seed1": _member(0.9), "ensemble": _member(0.85)})
    assert table.count("\n| seed") == 2 and "| ensemble | 0.850 / 0.500 / 0.300 | 9.0 mm |" in table
    assert "- c0: 0.850 (0.800)" in table


def test_a_case_is_scored_after_the_same_clean_up_as_the_shipped_model():
    truth = np.zeros((6, 20, 20), np.uint8)
    truth[1:5, 2:12, 2:12] = 2
    probabilities = label_masks(truth, REGIONS).astype(np.float32) * 0.9
    probabilities[0, 5, 17:19, 17:19] = 0.9  # a speck of 4 voxels, far from the tumour
    kept = ensemble_study._score(probabilities, label_masks(truth, REGIONS), (1, 1, 1), REGIONS, 0.0, True)
    cleaned = ensemble_study._score(probabilities, label_masks(truth, REGIONS), (1, 1, 1), REGIONS, 0.1, True)
    assert kept["WT"] < 1.0 and cleaned["WT"] == pytest.approx(1.0)
    assert cleaned["hd95_wt"] == pytest.approx(0.0)


def test_runs_must_be_named(capsys):
    with pytest.raises(SystemExit):
        ensemble_study.main(["store.h5", "runs/a"])
    assert "NAME=RUN_DIR" in capsys.readouterr().err


class _EchoEngine:
    """Predicts each voxel's first three channels as its probabilities: any axis mix-up shows."""

    def predict(self, prepared, min_component_fraction=0.0):
        return type("Prediction", (), {"probabilities": np.asarray(prepared)[:3].astype(np.float32)})()


def test_runs_of_other_views_are_turned_back_to_the_stored_axes():
    from medvision.data.case import MODALITIES
    from medvision.data.views import checkpoint_view, to_view

    image = np.random.default_rng(1).random((4, 5, 7, 9)).astype(np.float32)
    metas = {"ax": {}, "cor": {"data": {"view": "coronal"}}, "sag": {"data": {"view": "sagittal"}}}
    engines = {name: (_EchoEngine(), meta) for name, meta in metas.items()}
    prepared = {name: to_view(image, checkpoint_view(meta)) for name, meta in metas.items()}
    members = ensemble_study._subset_probabilities(prepared, engines, MODALITIES)
    for name in metas:
        np.testing.assert_array_equal(members[name], image[:3])
    combined = ensemble_study._combined(members, {"tri": ("ax", "cor", "sag")})
    np.testing.assert_allclose(combined["tri"], image[:3], rtol=1e-6)


def test_combinations_name_known_runs():
    runs = ("a", "b", "c")
    assert ensemble_study.parse_combine([], runs) == {"ensemble": runs}
    assert ensemble_study.parse_combine(["ab=a+b", "all=a+b+c"], runs) == {"ab": ("a", "b"), "all": runs}
    assert "unknown runs ['d']" in ensemble_study.parse_combine(["x=a+d"], runs)
    assert "two or more" in ensemble_study.parse_combine(["x=a"], runs)
    assert "new name" in ensemble_study.parse_combine(["a=b+c"], runs)


def test_the_per_case_lines_follow_each_combination():
    scored = {"s0": _member(0.7), "s1": _member(0.9), "s2": _member(0.5), "pair": _member(0.85)}
    table = format_rows(scored, {"pair": ("s0", "s1")})
    assert "all four WT Dice per case: pair" in table and "- c0: 0.850 (0.800)" in table
