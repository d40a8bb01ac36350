"""The trainer's validation: the validation cases through the inference engine, scored like ``evaluate``.

Each validation case's stored brain crop goes through :class:`medvision.inference.SegmentationEngine`
(the same code path as ``predict`` and ``evaluate``: padding, brain mask, nested label) with the model
being trained, and its label's regions are scored per case by medvision.metrics. So the validation Dice
of an epoch equals what ``evaluate --split val`` reports for the checkpoint of that epoch (with
``val_max_slices`` None: a slice subset scores the chosen slices only). Under DDP every rank scores its
share of the cases; the confusion counts, slice sums and loss sums are added over ranks at the end, as
nnU-Net's validation step returns tp/fp/fn for the epoch end to reduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvision.data.case import MODALITIES
from medvision.data.dataset import labels_to_target
from medvision.data.store import SliceStore
from medvision.inference import SegmentationEngine, label_masks
from medvision.inference.geometry import pad_like_input
from medvision.metrics import (
    SliceDiceTracker,
    region_counts,
    scores_of_counts,
    summarise_split,
    volume_slice_dice,
)
from medvision.train import distributed as dist_utils
from medvision.train.distributed import DistContext
from medvision.train.evaluation import given_as

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Sums:
    """What one rank adds up: per-case counts (cases, R, 4), slice totals (5, R), loss sum and slices."""

    counts: np.ndarray
    slices: SliceDiceTracker
    loss_sum: float = 0.0
    loss_slices: int = 0


class Validation:
    """Scores the validation cases of a store with an engine; :meth:`run` -> the epoch's ``val`` block.

    Args:
        store_path: the prepared store.
        case_ids: the validation cases, in a fixed order (every rank must pass the same list).
        target: the training target (medvision.data.regions).
        slices: per case, the crop slice indices to score (None: every slice, as ``evaluate`` does).
        ctx: the DDP context; rank r scores cases r, r + world, ...
        available: the modalities each case is given as (the others zeroed, as ``evaluate --modalities``).
    """

    def __init__(
        self,
        store_path: Path,
        case_ids: Sequence[str],
        *,
        target: str,
        slices: dict[str, np.ndarray] | None = None,
        ctx: DistContext,
        available: tuple[str, ...] = MODALITIES,
    ) -> None:
        self.available = tuple(available)
        self.store_path = Path(store_path)
        self.case_ids = list(case_ids)
        self.target = target
        self.slices = slices
        self.ctx = ctx

    def run(self, engine: SegmentationEngine, loss_fn: LossFn) -> dict[str, Any]:
        """Validation loss and per-region scores (see medvision.metrics.summarise_split), over all ranks."""
        regions = engine.regions
        sums = _Sums(np.zeros((len(self.case_ids), len(regions), 4)), SliceDiceTracker())
        with SliceStore(self.store_path) as store:
            for index in range(self.ctx.rank, len(self.case_ids), self.ctx.world_size):
                self._score_case(engine, loss_fn, store, index, sums)
        counts, totals, loss = self._reduce(sums, len(regions), engine.backend.device)
        per_case = [{name: scores_of_counts(c[r]) for r, name in enumerate(regions)} for c in counts]
        summary = summarise_split(per_case, counts.sum(axis=0), totals, regions)
        for row in summary.values():
            row.pop("hd95", None)  # not computed during training (the slow part of evaluate)
        mean_dice = float(np.mean([summary[name]["dice"] for name in regions]))
        val_slices = int(totals[1].max() + totals[4].max()) if totals.size else 0
        return {
            "val_loss": loss,
            "val": summary,
            "val_mean_dice": mean_dice,
            "val_slices": val_slices,
            "val_cases": len(self.case_ids),
        }

    def _score_case(
        self, engine: SegmentationEngine, loss_fn: LossFn, store: SliceStore, index: int, sums: _Sums
    ) -> None:
        case_id = self.case_ids[index]
        prepared = given_as(engine.prepare_stored(store.read_image(case_id)), self.available)
        label = store.read_label(case_id)
        chosen = None if self.slices is None else self.slices[case_id]
        target = labels_to_target(label, self.target)  # (T, d, h, w)
        device = engine.backend.device

        def add_loss(indices: np.ndarray, logits: torch.Tensor) -> None:
            truth = torch.from_numpy(pad_like_input(prepared, target[:, indices].transpose(1, 0, 2, 3)))
            sums.loss_sum += float(loss_fn(logits, truth.to(device))) * len(indices)
            sums.loss_slices += len(indices)

        predicted = engine.predict(prepared, slices=chosen, on_logits=add_loss).label
        pred_masks, true_masks = label_masks(predicted, engine.regions), label_masks(label, engine.regions)
        if chosen is not None:
            pred_masks, true_masks = pred_masks[:, chosen], true_masks[:, chosen]
        sums.counts[index] = region_counts(pred_masks, true_masks)
        sums.slices.add(*volume_slice_dice(pred_masks, true_masks))

    def _reduce(
        self, sums: _Sums, n_regions: int, device: torch.device
    ) -> tuple[np.ndarray, np.ndarray, float]:
        totals = sums.slices.totals()
        if totals.shape != (5, n_regions):  # this rank scored no case
            totals = np.zeros((5, n_regions))
        packed = np.concatenate([sums.counts.ravel(), totals.ravel(), [sums.loss_sum, sums.loss_slices]])
        tensor = torch.as_tensor(packed, dtype=torch.float64, device=device)
        packed = dist_utils.all_reduce_sum(tensor, self.ctx).cpu().numpy()
        n_counts = sums.counts.size
        counts = packed[:n_counts].reshape(sums.counts.shape)
        totals = packed[n_counts : n_counts + totals.size].reshape(5, n_regions)
        loss_sum, loss_slices = packed[-2:]
        return counts, totals, float(loss_sum / loss_slices) if loss_slices else math.nan


def slice_subset(
    case_of_row: Sequence[str], slice_of_row: np.ndarray, rows: np.ndarray, case_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per case, the (sorted) slice indices of the chosen slice-table ``rows``."""
    cases = np.asarray(case_of_row, dtype=object)[rows]
    indices = np.asarray(slice_of_row)[rows]
    return {case: np.sort(indices[cases == case]).astype(np.int64) for case in case_ids}
