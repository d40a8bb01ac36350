"""Segmentation metrics: per-region scores of a case or slice, per-slice Dice, and pooled pixel counts.

Conventions for empty masks (the BraTS challenge's, documented once, used everywhere):
- Both prediction and truth empty: Dice 1, HD95 0 mm. Exactly one empty: Dice 0, HD95 373.13 mm
  (``HD95_EMPTY_MM``, the diagonal of the 240 x 240 x 155 mm BraTS volume), so a missed or hallucinated
  region is counted in the mean HD95 rather than dropped from it (dropping it flatters the mean).
- Other ratios whose denominator is zero score 1.0 when prediction and truth agree on it being empty, else
  0.0: IoU like Dice; precision with no predicted positives is 1 if the truth is empty too, else 0; recall
  with an empty truth is 1 if the prediction is empty, else 0; specificity with no true negatives is 1.
- Means over cases count every case (:func:`summarise_cases`) and say how many were empty in both
  (``both_empty_cases``: their Dice 1 is a convention, not a segmentation) and in exactly one.
- :func:`per_slice_dice` gives ``nan`` for slices where both masks are empty, so slice means skip them;
  :class:`SliceDiceTracker` counts how many it skipped.

Pooled counts (:class:`PooledCounts`) sum TP/FP/FN/TN over all pixels of all batches, the "pixel-pooled"
Dice/precision/recall that the original project reported. Count arrays have columns ``COUNT_COLUMNS``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medvision.data.case import REGIONS

logger = logging.getLogger(__name__)

COUNT_COLUMNS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
SMALL_TUMOUR_PIXELS = 500
# BraTS scores the HD95 of a region that is empty in exactly one of prediction and truth as this (mm).
HD95_EMPTY_MM = 373.13
# Per-case scores averaged by summarise_cases (hd95 only where it was computed).
CASE_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity", "hd95")


def _ratio(numerator: float, denominator: float, empty_agree: bool) -> float:
    if denominator == 0:
        return 1.0 if empty_agree else 0.0
    return float(numerator) / float(denominator)


def scores_from_counts(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Dice, IoU, precision, recall, specificity and accuracy from confusion counts (empty rule above)."""
    both_empty = tp + fp + fn == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, fn == 0),
        "recall": _ratio(tp, tp + fn, fp == 0),
        "specificity": _ratio(tn, tn + fp, fp == 0),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, True),
    }


def _as_bool(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array).astype(bool)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (MONAI, with the voxel spacing).

    BraTS convention: 0.0 when both masks are empty, ``HD95_EMPTY_MM`` (373.13) when exactly one is.

    Raises:
        ValueError: ``spacing`` does not have one value per mask axis.
    """
    pred, truth = _as_bool(pred), _as_bool(truth)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}-D mask")
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return HD95_EMPTY_MM
    # Imported here, not at the top: `import monai` loads all of MONAI (~3 s on a 2-core CPU), and every
    # `python -m medvision` command and training launch imports this module before it needs a distance.
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated argument internally; the warning is not ours to fix.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(pred[None, None]),
            torch.from_numpy(truth[None, None]),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(distance.item())


def region_scores(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    *,
    with_hd95: bool = True,
) -> dict[str, float]:
    """Scores of one binary region (2-D slice or 3-D volume): dice, iou, precision, recall, specificity,
    accuracy, hd95 (mm; ``nan`` when ``with_hd95=False``, which skips the costly distance transform), and
    the voxel counts ``pred_voxels`` / ``truth_voxels`` that say whether a score is an empty-mask one.

    Raises:
        ValueError: the masks differ in shape.
    """
    pred, truth = _as_bool(pred), _as_bool(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = pred.size - tp - fp - fn
    scores = scores_from_counts(tp, fp, fn, tn)
    scores["hd95"] = hd95(pred, truth, spacing) if with_hd95 else math.nan
    scores["pred_voxels"], scores["truth_voxels"] = tp + fp, tp + fn
    return scores


def region_counts(
    pred_regions: np.ndarray | torch.Tensor, true_regions: np.ndarray | torch.Tensor
) -> np.ndarray:
    """TP, FP, FN, TN per region of (R, ...) masks -> int64 (R, 4) in ``COUNT_COLUMNS`` order."""
    pred, truth = _as_bool(pred_regions), _as_bool(true_regions)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    axes = tuple(range(1, pred.ndim))
    tp = (pred & truth).sum(axis=axes)
    fp = (pred & ~truth).sum(axis=axes)
    fn = (~pred & truth).sum(axis=axes)
    tn = (~pred & ~truth).sum(axis=axes)
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def scores_of_counts(counts: Sequence[float]) -> dict[str, float]:
    """:func:`scores_from_counts` of one (tp, fp, fn, tn) row plus its ``pred_voxels`` / ``truth_voxels``
    (what :func:`region_scores` returns, without hd95)."""
    tp, fp, fn, tn = (float(v) for v in counts)
    return {**scores_from_counts(tp, fp, fn, tn), "pred_voxels": tp + fp, "truth_voxels": tp + fn}


def summarise_cases(
    per_case: Sequence[Mapping[str, Mapping[str, float]]], regions: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Means over cases of the per-case region scores ({region: scores} per case, as :func:`case_scores`).

    Every case counts (BraTS conventions above); ``hd95`` is ``nan`` when no case has it. Each region also
    gets ``cases``, ``both_empty_cases`` (Dice 1 by convention: no such tumour and none predicted) and
    ``one_empty_cases`` (missed or hallucinated region: Dice 0, HD95 373.13 mm).
    """
    summary: dict[str, dict[str, float]] = {}
    for name in regions:
        rows = [case[name] for case in per_case]
        out = {key: _mean([float(r[key]) for r in rows if key in r]) for key in CASE_METRICS}
        empty_pred = [r.get("pred_voxels", 1) == 0 for r in rows]
        empty_truth = [r.get("truth_voxels", 1) == 0 for r in rows]
        out["cases"] = len(rows)
        out["both_empty_cases"] = sum(p and t for p, t in zip(empty_pred, empty_truth, strict=True))
        out["one_empty_cases"] = sum(p != t for p, t in zip(empty_pred, empty_truth, strict=True))
        summary[name] = out
    return summary


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def case_scores(
    pred_regions: np.ndarray | torch.Tensor,
    true_regions: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    *,
    regions: Sequence[str] = REGIONS,
    with_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-region scores of a case: regions (R, D, H, W) (or (R, H, W) for a slice) -> {region: scores}."""
    pred_regions, true_regions = _as_bool(pred_regions), _as_bool(true_regions)
    if pred_regions.shape != true_regions.shape:
        raise ValueError(
            f"prediction shape {pred_regions.shape} differs from truth shape {true_regions.shape}"
        )
    if pred_regions.shape[0] != len(regions):
        raise ValueError(f"expected {len(regions)} regions {tuple(regions)}, got {pred_regions.shape[0]}")
    return {
        name: region_scores(pred_regions[i], true_regions[i], spacing, with_hd95=with_hd95)
        for i, name in enumerate(regions)
    }


def per_slice_dice(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dice of each slice of (D, H, W) masks -> (D,) float64, ``nan`` where both are empty."""
    pred, truth = _as_bool(pred), _as_bool(truth)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (D, H, W) masks of one shape, got {pred.shape} and {truth.shape}")
    inter = (pred & truth).sum(axis=(1, 2)).astype(np.float64)
    total = pred.sum(axis=(1, 2)).astype(np.float64) + truth.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / total, np.nan)


def small_tumour_dice(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, max_pixels: int = SMALL_TUMOUR_PIXELS
) -> float:
    """Mean Dice over slices whose truth has 1 to ``max_pixels - 1`` pixels (``nan`` if there are none)."""
    truth_b = _as_bool(truth)
    dice = per_slice_dice(pred, truth_b)
    pixels = truth_b.sum(axis=(1, 2))
    small = (pixels > 0) & (pixels < max_pixels)
    return float(dice[small].mean()) if small.any() else math.nan


# ---- batch helpers on torch tensors (trainer evaluate; stay on the tensors' device) ----


def _binarise(
    logits: torch.Tensor, targets: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape != targets.shape or logits.ndim < 3:
        raise ValueError(
            f"expected logits and targets (B, T, ...) of one shape, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return torch.sigmoid(logits.float()) > threshold, targets > 0.5


def batch_counts(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """TP, FP, FN, TN per channel of a batch: logits/targets (B, T, ...) -> int64 tensor (T, 4)."""
    pred, truth = _binarise(logits, targets, threshold)
    dims = [0] + list(range(2, pred.ndim))
    tp = (pred & truth).sum(dim=dims)
    fp = (pred & ~truth).sum(dim=dims)
    fn = (~pred & truth).sum(dim=dims)
    tn = (~pred & ~truth).sum(dim=dims)
    return torch.stack([tp, fp, fn, tn], dim=1).to(torch.int64)


def batch_slice_dice(
    logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel hard Dice (B, T) (``nan`` where both empty) and truth pixel counts (B, T)."""
    pred, truth = _binarise(logits, targets, threshold)
    dims = list(range(2, pred.ndim))
    inter = (pred & truth).sum(dim=dims).double()
    truth_pixels = truth.sum(dim=dims)
    total = pred.sum(dim=dims).double() + truth_pixels
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, math.nan))
    return dice, truth_pixels


class PooledCounts:
    """TP/FP/FN/TN per channel summed over batches, for pixel-pooled scores.

    ``add`` takes a (T, 4) array or tensor of counts (e.g. from :func:`batch_counts`, or all-reduced over
    DDP ranks); ``update`` computes them from logits and targets. Scores come back per channel.
    """

    def __init__(self, n_channels: int) -> None:
        if isinstance(n_channels, bool) or not isinstance(n_channels, int) or n_channels < 1:
            raise ValueError(f"n_channels must be an int >= 1, got {n_channels!r}")
        self.counts = np.zeros((n_channels, 4), dtype=np.int64)

    def add(self, counts: np.ndarray | torch.Tensor) -> None:
        if isinstance(counts, torch.Tensor):
            counts = counts.detach().cpu().numpy()
        counts = np.asarray(counts)
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must have shape {self.counts.shape}, got {counts.shape}")
        self.counts += counts.astype(np.int64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> None:
        self.add(batch_counts(logits, targets, threshold))

    def scores(self, channel: int) -> dict[str, float]:
        """Dice, IoU, precision, recall, specificity, accuracy of one channel's pooled counts."""
        return scores_from_counts(*(int(v) for v in self.counts[channel]))

    def summary(self, names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """{channel name: scores}; names default to REGIONS for 3 channels, else "0", "1", ..."""
        if names is None:
            names = REGIONS if len(self.counts) == len(REGIONS) else [str(i) for i in range(len(self.counts))]
        if len(names) != len(self.counts):
            raise ValueError(f"{len(names)} names for {len(self.counts)} channels")
        return {name: self.scores(i) for i, name in enumerate(names)}


class SliceDiceTracker:
    """Per-slice Dice over batches, for mean slice Dice and the small-tumour Dice of the original project."""

    def __init__(self) -> None:
        self._dice: list[np.ndarray] = []
        self._pixels: list[np.ndarray] = []

    def add(self, dice: np.ndarray | torch.Tensor, truth_pixels: np.ndarray | torch.Tensor) -> None:
        dice = dice.detach().cpu().numpy() if isinstance(dice, torch.Tensor) else np.asarray(dice)
        pixels = (
            truth_pixels.detach().cpu().numpy()
            if isinstance(truth_pixels, torch.Tensor)
            else np.asarray(truth_pixels)
        )
        if dice.shape != pixels.shape or dice.ndim != 2:
            raise ValueError(
                f"dice and truth_pixels must both be (B, T), got {dice.shape} and {pixels.shape}"
            )
        self._dice.append(dice.astype(np.float64))
        self._pixels.append(pixels.astype(np.int64))

    def update(self, logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5) -> None:
        self.add(*batch_slice_dice(logits, targets, threshold))

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._dice:
            return np.zeros((0, 0)), np.zeros((0, 0), dtype=np.int64)
        return np.concatenate(self._dice), np.concatenate(self._pixels)

    def totals(self, max_pixels: int = SMALL_TUMOUR_PIXELS) -> np.ndarray:
        """(5, T) float64 sums that add up over batches and DDP ranks: Dice sum and count over scored
        slices, Dice sum and count over small-tumour slices, and the number of both-empty slices.
        :func:`slice_means_from_totals` turns them into means."""
        dice, pixels = self._stacked()
        if dice.size == 0:
            return np.zeros((5, dice.shape[1] if dice.ndim == 2 else 0))
        scored = ~np.isnan(dice)
        small = scored & (pixels > 0) & (pixels < max_pixels)
        clean = np.where(scored, dice, 0.0)
        return np.stack(
            [clean.sum(0), scored.sum(0), np.where(small, clean, 0.0).sum(0), small.sum(0), (~scored).sum(0)]
        ).astype(np.float64)

    def mean_dice(self) -> np.ndarray:
        """(T,) mean Dice over slices where truth or prediction is non-empty (``nan`` if none)."""
        dice, _ = self._stacked()
        return np.array([_nanmean(dice[:, t]) for t in range(dice.shape[1])])

    def small_tumour_dice(self, max_pixels: int = SMALL_TUMOUR_PIXELS) -> np.ndarray:
        """(T,) mean Dice over slices whose truth has 1 to ``max_pixels - 1`` pixels (``nan`` if none)."""
        dice, pixels = self._stacked()
        small = (pixels > 0) & (pixels < max_pixels)
        return np.array([_nanmean(dice[small[:, t], t]) for t in range(dice.shape[1])])


def slice_means_from_totals(totals: np.ndarray) -> list[dict[str, float]]:
    """Per channel of :meth:`SliceDiceTracker.totals`: ``dice_slice`` (mean over slices with tumour in
    truth or prediction), ``dice_small`` (small-tumour slices), and the slice counts behind them
    (``slices_scored``, ``slices_small``, ``slices_both_empty``: left out of the means)."""
    out = []
    for dice_sum, n, small_sum, n_small, n_empty in np.asarray(totals, dtype=np.float64).T:
        out.append(
            {
                "dice_slice": float(dice_sum / n) if n else math.nan,
                "dice_small": float(small_sum / n_small) if n_small else math.nan,
                "slices_scored": int(n),
                "slices_small": int(n_small),
                "slices_both_empty": int(n_empty),
            }
        )
    return out


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def volume_slice_dice(
    pred_regions: np.ndarray | torch.Tensor, true_regions: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice Dice of (R, D, H, W) region masks -> (dice (D, R), truth pixels (D, R)), the input of
    :meth:`SliceDiceTracker.add`."""
    pred, truth = _as_bool(pred_regions), _as_bool(true_regions)
    dice = np.stack([per_slice_dice(p, t) for p, t in zip(pred, truth, strict=True)], axis=1)
    return dice, truth.sum(axis=(2, 3)).T


def summarise_split(
    per_case: Sequence[Mapping[str, Mapping[str, float]]],
    pooled: np.ndarray,
    slice_totals: np.ndarray,
    regions: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Everything a split's scores table holds, per region: the means over cases and their empty-case
    counts (:func:`summarise_cases`), the pixel-pooled scores of ``pooled`` (R, 4) counts as
    ``pooled_<name>``, and the slice means of ``slice_totals`` (5, R) (:func:`slice_means_from_totals`).

    ``evaluate`` and the trainer's validation both report through this function.
    """
    summary = summarise_cases(per_case, regions)
    slices = slice_means_from_totals(slice_totals)
    for c, name in enumerate(regions):
        pooled_scores = scores_from_counts(*(float(v) for v in np.asarray(pooled)[c]))
        summary[name].update(slices[c])
        summary[name].update(
            {f"pooled_{k}": pooled_scores[k] for k in ("dice", "iou", "precision", "recall", "specificity")}
        )
    return summary
