"""Tests for medvision.metrics on masks whose scores are computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from medvision.metrics import (
    HD95_EMPTY_MM,
    PooledCounts,
    SliceDiceTracker,
    batch_counts,
    batch_slice_dice,
    case_scores,
    hd95,
    per_slice_dice,
    region_counts,
    region_scores,
    scores_from_counts,
    slice_means_from_totals,
    small_tumour_dice,
    summarise_cases,
    volume_slice_dice,
)


def test_scores_from_counts_hand_computed() -> None:
    scores = scores_from_counts(tp=3, fp=1, fn=2, tn=4)
    assert scores == pytest.approx(
        {
            "dice": 6 / 9,
            "iou": 3 / 6,
            "precision": 3 / 4,
            "recall": 3 / 5,
            "specificity": 4 / 5,
            "accuracy": 7 / 10,
        }
    )


def test_region_scores_shifted_square() -> None:
    truth = np.zeros((10, 10), bool)
    truth[2:6, 2:6] = True
    pred = np.roll(truth, 1, axis=1)  # 4x4 squares overlapping in 4x3 pixels
    scores = region_scores(pred, truth, spacing=(1.0, 1.0))
    tp, fp, fn, tn = 12, 4, 4, 80
    assert scores["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 0.75
    assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))  # 0.6
    assert scores["precision"] == pytest.approx(0.75)
    assert scores["recall"] == pytest.approx(0.75)
    assert scores["specificity"] == pytest.approx(tn / (tn + fp))
    assert scores["accuracy"] == pytest.approx(0.92)
    assert scores["hd95"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("axis", "shift", "spacing", "expected_mm"),
    [(0, 3, (2.0, 0.5), 6.0), (1, 4, (2.0, 0.5), 2.0), (0, 1, (0.7, 3.0), 0.7)],
)
def test_hd95_parallel_lines_anisotropic(axis: int, shift: int, spacing: tuple, expected_mm: float) -> None:
    # A one-pixel-thick line and its copy moved `shift` pixels across it: every surface point is exactly
    # shift * spacing[axis] mm from the other line, so HD95 is that distance.
    a = np.zeros((16, 16), bool)
    if axis == 0:
        a[2, 3:12] = True
    else:
        a[3:12, 2] = True
    b = np.roll(a, shift, axis=axis)
    assert hd95(a, b, spacing) == pytest.approx(expected_mm, rel=1e-6)


def reference_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple) -> float:
    """Brute force: boundary pixels (mask minus its erosion), all-pairs distances in mm, 95th percentiles."""
    pa = np.argwhere(a ^ ndimage.binary_erosion(a)) * np.asarray(spacing)
    pb = np.argwhere(b ^ ndimage.binary_erosion(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


@pytest.mark.parametrize(
    ("shift", "spacing"), [((3, 0), (2.0, 0.5)), ((1, 2), (1.0, 1.0)), ((0, 5), (1.2, 0.8))]
)
def test_hd95_offset_squares_against_brute_force(shift: tuple, spacing: tuple) -> None:
    a = np.zeros((20, 20), bool)
    a[3:9, 3:9] = True
    b = np.roll(a, shift, axis=(0, 1))
    assert hd95(a, b, spacing) == pytest.approx(reference_hd95(a, b, spacing), rel=1e-5)
    if shift == (3, 0):
        assert hd95(a, b, spacing) == pytest.approx(6.0)  # three rows of 2 mm


def test_hd95_3d_single_voxels_and_plates() -> None:
    a = np.zeros((6, 6, 6), bool)
    b = np.zeros((6, 6, 6), bool)
    a[1, 1, 1] = True
    b[2, 3, 1] = True
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(math.sqrt(3.0**2 + 2.0**2), rel=1e-6)
    plate = np.zeros((8, 10, 10), bool)
    plate[2, 2:8, 2:8] = True
    assert hd95(plate, np.roll(plate, 2, axis=0), (5.0, 1.0, 1.0)) == pytest.approx(10.0, rel=1e-6)
    assert hd95(plate, plate, (5.0, 1.0, 1.0)) == 0.0


def test_empty_mask_conventions() -> None:
    empty = np.zeros((8, 8), bool)
    full = np.zeros((8, 8), bool)
    full[2:4, 2:4] = True
    both = region_scores(empty, empty, (1.0, 1.0))
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and both["hd95"] == 0.0
    assert both["precision"] == 1.0 and both["recall"] == 1.0 and both["specificity"] == 1.0
    missed = region_scores(empty, full, (1.0, 1.0))  # truth present, nothing predicted
    assert missed["dice"] == 0.0 and missed["precision"] == 0.0 and missed["recall"] == 0.0
    assert missed["hd95"] == HD95_EMPTY_MM == 373.13  # BraTS: a missed region counts, at 373.13 mm
    false_alarm = region_scores(full, empty, (1.0, 1.0))  # nothing to find, something predicted
    assert false_alarm["dice"] == 0.0 and false_alarm["recall"] == 0.0 and false_alarm["precision"] == 0.0
    assert false_alarm["specificity"] == pytest.approx(60 / 64)
    assert false_alarm["hd95"] == HD95_EMPTY_MM


def test_region_scores_without_hd95_and_shape_checks() -> None:
    a = np.ones((4, 4), bool)
    assert math.isnan(region_scores(a, a, (1.0, 1.0), with_hd95=False)["hd95"])
    with pytest.raises(ValueError):
        region_scores(a, np.ones((4, 5), bool), (1.0, 1.0))
    with pytest.raises(ValueError):
        hd95(a, a, (1.0, 1.0, 1.0))


def test_case_scores_per_region() -> None:
    truth = np.zeros((3, 4, 10, 10), bool)
    truth[0, 1:3, 2:8, 2:8] = True  # WT
    truth[1, 1:3, 3:7, 3:7] = True  # TC
    pred = truth.copy()
    pred[2, 1, 4, 4] = True  # ET predicted where truth has none
    scores = case_scores(pred, truth, spacing=(5.0, 1.0, 1.0))
    assert list(scores) == ["WT", "TC", "ET"]
    assert scores["WT"]["dice"] == 1.0 and scores["WT"]["hd95"] == 0.0
    assert scores["TC"]["dice"] == 1.0
    assert scores["ET"]["dice"] == 0.0 and scores["ET"]["hd95"] == HD95_EMPTY_MM
    with pytest.raises(ValueError):
        case_scores(pred[:2], truth[:2], (1.0, 1.0, 1.0))


def test_per_slice_dice_hand_computed() -> None:
    truth = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    truth[0, :2, :2] = True
    pred[0, :2, :1] = True  # 2 of 4 found: 2*2/(2+4)
    truth[1, 0, 0] = True  # missed entirely: 0
    dice = per_slice_dice(pred, truth)  # slice 2 empty in both: nan
    np.testing.assert_allclose(dice[:2], [4 / 6, 0.0])
    assert math.isnan(dice[2])


def test_small_tumour_dice_uses_only_small_slices() -> None:
    truth = np.zeros((4, 40, 40), bool)
    pred = np.zeros((4, 40, 40), bool)
    truth[0, :2, :2] = True  # 4 px, found exactly: 1.0
    pred[0, :2, :2] = True
    truth[1, :25, :24] = True  # 600 px: not small
    pred[3, 0, 0] = True  # truth empty on slice 3: excluded even though predicted
    truth[2, :2, :2] = True  # 4 px, half found: 2*2/(2+4)
    pred[2, :1, :2] = True
    assert small_tumour_dice(pred, truth) == pytest.approx((1.0 + 4 / 6) / 2)
    assert small_tumour_dice(pred, truth, max_pixels=4) != small_tumour_dice(pred, truth)
    assert math.isnan(small_tumour_dice(pred, truth, max_pixels=1))


def test_batch_counts_hand_computed() -> None:
    # Channel 0: logits positive at 3 pixels, truth at 2 of them + 1 other; channel 1 all negative.
    logits = torch.full((2, 2, 2, 2), -4.0)
    targets = torch.zeros(2, 2, 2, 2)
    logits[0, 0, 0, 0] = logits[0, 0, 0, 1] = logits[1, 0, 1, 1] = 4.0
    targets[0, 0, 0, 0] = targets[1, 0, 1, 1] = targets[1, 0, 0, 0] = 1.0
    counts = batch_counts(logits, targets)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [[2, 1, 1, 4], [0, 0, 0, 8]]
    # A higher threshold turns the prediction off everywhere (sigmoid(4) ~ 0.982).
    assert batch_counts(logits, targets, threshold=0.99).tolist() == [[0, 0, 3, 5], [0, 0, 0, 8]]
    with pytest.raises(ValueError):
        batch_counts(logits, targets, threshold=1.0)


def test_pooled_counts_pool_pixels_not_batches() -> None:
    pooled = PooledCounts(1)
    pooled.add(torch.tensor([[1, 0, 0, 10]]))  # a perfect small batch: dice 1
    pooled.add(np.array([[10, 10, 10, 0]]))  # a poor big batch: dice 0.5
    assert pooled.counts.tolist() == [[11, 10, 10, 10]]
    scores = pooled.scores(0)
    assert scores["dice"] == pytest.approx(22 / 42)  # pooled, not (1 + 0.5) / 2
    assert scores["precision"] == pytest.approx(11 / 21)
    assert scores["recall"] == pytest.approx(11 / 21)
    with pytest.raises(ValueError):
        pooled.add(np.zeros((2, 4)))
    with pytest.raises(ValueError):
        PooledCounts(0)


def test_pooled_counts_update_and_summary() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=generator)
    targets = (torch.rand(4, 3, 8, 8, generator=generator) > 0.7).float()
    pooled = PooledCounts(3)
    pooled.update(logits[:2], targets[:2])
    pooled.update(logits[2:], targets[2:])
    np.testing.assert_array_equal(pooled.counts, batch_counts(logits, targets).numpy())
    summary = pooled.summary()
    assert list(summary) == ["WT", "TC", "ET"]
    pred, truth = (logits > 0).numpy(), targets.numpy() > 0.5
    tp = (pred[:, 1] & truth[:, 1]).sum()
    assert summary["TC"]["dice"] == pytest.approx(2 * tp / (pred[:, 1].sum() + truth[:, 1].sum()))
    assert list(PooledCounts(1).summary(["necrotic"])) == ["necrotic"]


def test_batch_slice_dice_and_tracker() -> None:
    logits = torch.full((3, 1, 4, 4), -5.0)
    targets = torch.zeros(3, 1, 4, 4)
    targets[0, 0, :2, :2] = 1  # 4 px, predicted 2 -> 4/6
    logits[0, 0, :1, :2] = 5.0
    targets[1, 0] = 1  # 16 px, predicted all -> 1
    logits[1, 0] = 5.0
    # sample 2: both empty -> nan
    dice, pixels = batch_slice_dice(logits, targets)
    assert pixels[:, 0].tolist() == [4, 16, 0]
    assert dice[0, 0].item() == pytest.approx(4 / 6) and dice[1, 0].item() == 1.0
    assert math.isnan(dice[2, 0].item())
    tracker = SliceDiceTracker()
    tracker.update(logits, targets)
    tracker.update(logits[:1], targets[:1])
    assert tracker.mean_dice()[0] == pytest.approx((4 / 6 + 1.0 + 4 / 6) / 3)
    assert tracker.small_tumour_dice(max_pixels=10)[0] == pytest.approx(4 / 6)
    assert math.isnan(tracker.small_tumour_dice(max_pixels=2)[0])


def test_case_means_follow_brats_conventions_and_count_empty_cases() -> None:
    """Mean over 3 cases, ET: one found (Dice 0.5, HD95 2), one empty in both (Dice 1, HD95 0), one missed
    (Dice 0, HD95 373.13): every case counts and the summary says which were empty."""
    found = {"dice": 0.5, "hd95": 2.0, "pred_voxels": 2, "truth_voxels": 2}
    both_empty = {"dice": 1.0, "hd95": 0.0, "pred_voxels": 0, "truth_voxels": 0}
    missed = {"dice": 0.0, "hd95": HD95_EMPTY_MM, "pred_voxels": 0, "truth_voxels": 5}
    summary = summarise_cases([{"ET": found}, {"ET": both_empty}, {"ET": missed}], ["ET"])["ET"]
    assert summary["dice"] == pytest.approx(1.5 / 3)
    assert summary["hd95"] == pytest.approx((2.0 + 0.0 + 373.13) / 3)
    assert (summary["cases"], summary["both_empty_cases"], summary["one_empty_cases"]) == (3, 1, 1)
    assert math.isnan(summary["iou"])  # a score no case has is nan, not 0


def test_region_counts_and_slice_totals_hand_computed() -> None:
    truth = np.zeros((1, 3, 4, 4), bool)
    pred = np.zeros((1, 3, 4, 4), bool)
    truth[0, 0, :2, :2] = True  # slice 0: truth 4 pixels, prediction 2 of them
    pred[0, 0, :1, :2] = True
    pred[0, 1, 0, 0] = True  # slice 1: a false positive; slice 2: both empty
    np.testing.assert_array_equal(region_counts(pred, truth), [[2, 1, 2, 43]])
    tracker = SliceDiceTracker()
    tracker.add(*volume_slice_dice(pred, truth))
    (row,) = slice_means_from_totals(tracker.totals())
    assert row["dice_slice"] == pytest.approx((2 * 2 / 6 + 0.0) / 2)
    assert (row["slices_scored"], row["slices_both_empty"], row["slices_small"]) == (2, 1, 1)
