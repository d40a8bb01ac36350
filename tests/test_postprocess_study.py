"""Choosing post-processing by nested cross-validation, on small made-up held-out predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvision.data.case import REGIONS
from medvision.inference import label_masks, probabilities_to_label
from medvision.train.postprocess_study import (
    BASELINE,
    CANDIDATES,
    CORE_CANDIDATES,
    HeldOutCase,
    Variant,
    apply_variant,
    grid,
    record_in_checkpoint,
    run_study,
)
from medvision.volumetry import remove_minor_components


def _label_with_speck() -> np.ndarray:
    label = np.zeros((8, 24, 24), dtype=np.uint8)
    label[2:6, 4:14, 4:14] = 2  # the tumour: 400 voxels
    label[3:5, 7:11, 7:11] = 4
    label[6:8, 20:22, 20:22] = 2  # a speck of 8 voxels, far away
    return label


def test_minor_components_go_relative_to_the_largest_piece() -> None:
    label = _label_with_speck()
    kept = remove_minor_components(label, 0.1)
    assert kept[6:8, 20:22, 20:22].max() == 0  # 8 < 0.1 x 400
    assert np.array_equal(kept[:6], label[:6])  # the tumour and its sub-labels are untouched
    assert np.array_equal(remove_minor_components(label, 0.0), label)
    assert np.array_equal(remove_minor_components(label, 0.01), label)  # 8 >= 0.01 x 400
    assert (remove_minor_components(label, 1.0) > 0).sum() == 400  # largest piece only
    with pytest.raises(ValueError, match="integer label volume"):
        remove_minor_components(label.astype(np.float32), 0.1)


def _held_out(fold: int, case_id: str, rng: np.random.Generator) -> HeldOutCase:
    truth_label = _label_with_speck()
    truth_label[6:8, 20:22, 20:22] = 0  # the truth has no speck
    truth = label_masks(truth_label, REGIONS)
    # The "network" is right about the tumour and also fires on the speck.
    predicted = label_masks(_label_with_speck(), REGIONS).astype(np.float32)
    probabilities = np.clip(0.1 + 0.8 * predicted + rng.normal(0, 0.02, predicted.shape), 0, 1)
    return HeldOutCase(fold, case_id, truth, (1.0, 1.0, 1.0), {False: probabilities, True: probabilities})


def test_nested_choice_removes_a_false_speck_and_beats_the_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = [_held_out(fold, f"case_{fold}_{i}", rng) for fold in range(3) for i in range(2)]
    study = run_study(cases, REGIONS)
    assert study["baseline"]["WT"]["dice"] < 0.995  # the speck costs the baseline
    assert study["nested"]["WT"]["dice"] > study["baseline"]["WT"]["dice"] + 0.005
    chosen = Variant(**study["chosen"]["variant"])
    assert chosen.min_voxels > 8 or chosen.min_fraction > 0.02
    assert not chosen.tta  # TTA gives the same probabilities here, so the simpler variant wins the tie
    assert len(study["nested"]["per_fold_choice"]) == 3
    cleaned = apply_variant(cases[0].probabilities[False], REGIONS, chosen)
    assert np.array_equal(label_masks(cleaned, REGIONS), cases[0].truth)
    assert apply_variant(cases[0].probabilities[False], REGIONS, BASELINE)[6:8, 20:22, 20:22].all()
    checkpoint_json = tmp_path / "model.json"
    checkpoint_json.write_text(json.dumps({"weights_file": "model.safetensors"}))
    record_in_checkpoint(checkpoint_json, study)
    meta = json.loads(checkpoint_json.read_text())
    assert meta["weights_file"] == "model.safetensors"  # the rest of the metadata is kept
    assert meta["postprocess"]["min_component_fraction"] == chosen.min_fraction


def test_the_candidates_are_declared_and_the_grid_covers_them() -> None:
    assert CANDIDATES[0] == BASELINE
    assert len(set(grid())) == 72
    assert set(CANDIDATES) <= set(grid())


def _over_segmented_core(fold: int, rng: np.random.Generator) -> HeldOutCase:
    """The "network" is sure of the whole tumour and of the true core (0.9), and half-sure (0.65) of a
    rim around the core that is not core: a core threshold of 0.7 fixes it, 0.5 keeps the rim."""
    truth_label = np.zeros((6, 20, 20), dtype=np.uint8)
    truth_label[1:5, 2:18, 2:18] = 2
    truth_label[2:4, 8:12, 8:12] = 1
    truth = label_masks(truth_label, REGIONS)
    probabilities = np.where(truth, 0.9, 0.05).astype(np.float32)
    rim = np.zeros(truth.shape[1:], dtype=bool)
    rim[2:4, 5:15, 5:15] = True
    probabilities[1][rim & ~truth[1]] = 0.65
    probabilities += rng.normal(0, 0.01, probabilities.shape).astype(np.float32)
    return HeldOutCase(
        fold, f"case_{fold}", truth, (1.0, 1.0, 1.0), {False: probabilities, True: probabilities}
    )


def test_a_core_threshold_is_a_declared_choice_and_applies_to_tc_and_et_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cases = [_over_segmented_core(fold, rng) for fold in range(3)]
    assert CORE_CANDIDATES[0] == CANDIDATES[1]  # the shipped clean-up first: it wins ties
    assert {v.core_threshold for v in CORE_CANDIDATES[1:]} == {0.6, 0.7, 0.8}
    study = run_study(cases, REGIONS, CORE_CANDIDATES)
    chosen = Variant(**study["chosen"]["variant"])
    assert chosen.core_threshold == 0.7  # 0.6 keeps the rim at 0.65; 0.8 would too, 0.7 is first
    assert study["nested"]["TC"]["dice"] > study["baseline"]["TC"]["dice"] + 0.2
    assert study["nested"]["WT"]["dice"] == pytest.approx(study["baseline"]["WT"]["dice"])
    assert chosen.thresholds(REGIONS) == (0.5, 0.7, 0.7)
    label = apply_variant(cases[0].probabilities[False], REGIONS, chosen)
    assert np.array_equal(label_masks(label, REGIONS), cases[0].truth)
    with pytest.raises(ValueError, match="sub-regions"):
        chosen.thresholds(("WT",))
    # predict applies only a relative clean-up: a study that chose a core threshold is not half-recorded.
    checkpoint_json = tmp_path / "model.json"
    checkpoint_json.write_text("{}")
    with pytest.raises(ValueError, match="only a relative clean-up"):
        record_in_checkpoint(checkpoint_json, study)
    assert checkpoint_json.read_text() == "{}"


def test_per_region_thresholds_in_the_label() -> None:
    probabilities = np.zeros((3, 1, 1, 3), dtype=np.float32)
    probabilities[:, 0, 0] = [[0.9, 0.9, 0.9], [0.9, 0.6, 0.9], [0.9, 0.9, 0.6]]  # rows WT/TC/ET
    assert probabilities_to_label(probabilities, REGIONS, 0.5)[0, 0].tolist() == [4, 4, 4]
    assert probabilities_to_label(probabilities, REGIONS, (0.5, 0.7, 0.7))[0, 0].tolist() == [4, 2, 1]
    with pytest.raises(ValueError, match="2 thresholds for the 3 regions"):
        probabilities_to_label(probabilities, REGIONS, (0.5, 0.7))
