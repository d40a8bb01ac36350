"""Evaluate a checkpoint on the cases of a prepared store, in 3-D per case (``python -m medvision evaluate``).

Each case of the chosen split is predicted slice by slice on its stored (brain-cropped, z-scored) volume,
then scored per region as a volume (Dice, IoU, precision, recall, specificity, HD95 in mm) and averaged
over cases. Alongside: the mean Dice over slices with tumour, the small-tumour Dice (truth < 500 pixels
per slice) and the original project's pixel-pooled Dice / precision / recall over every slice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvision.checkpoint import load_checkpoint
from medvision.data.dataset import labels_to_target
from medvision.data.splits import make_splits
from medvision.data.store import SliceStore
from medvision.errors import MedVisionError
from medvision.metrics import PooledCounts, SliceDiceTracker, case_scores, per_slice_dice
from medvision.precision import autocast, autocast_dtype, resolve_device

logger = logging.getLogger(__name__)

CASE_METRICS = ("dice", "iou", "precision", "recall", "specificity", "hd95")


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    *,
    neighbours: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Stored volume (4, D, h, w) -> sigmoid probabilities (T, D, h, w) float32, one slice at a time.

    Slices are zero-padded (background) to a multiple of 2**depth and cropped back afterwards.
    """
    _, depth, h, w = image.shape
    multiple = 2 ** int(getattr(model, "config", {}).get("depth", 4))
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    offsets = np.arange(-neighbours, neighbours + 1)
    outputs = []
    for start in range(0, depth, batch_size):
        ks = np.arange(start, min(start + batch_size, depth))
        index = np.clip(ks[:, None] + offsets[None, :], 0, depth - 1)  # (B, 1 + 2n), ends repeat
        batch = volume[:, torch.from_numpy(index)].permute(1, 2, 0, 3, 4).flatten(1, 2)  # (B, C, h, w)
        batch = F.pad(batch, pads).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(batch).float()
        outputs.append(torch.sigmoid(logits[..., pads[2] : pads[2] + h, pads[0] : pads[0] + w]).cpu())
    return torch.cat(outputs).permute(1, 0, 2, 3).numpy()


def _case_ids(store: SliceStore, meta: dict[str, Any], split: str) -> list[str]:
    labelled = [c for c in store.case_ids if store.has_label(c)]
    if split == "all":
        return labelled
    saved = meta.get("split") or {}
    if split in saved and isinstance(saved[split], list):
        ids = list(saved[split])
    else:
        fractions = tuple(saved.get("fractions", (0.7, 0.15, 0.15)))
        ids = make_splits(store.case_ids, fractions, int(saved.get("seed", 88)))[split]
    missing = [c for c in ids if c not in set(store.case_ids)]
    if missing:
        raise MedVisionError(
            f"{store.path}: {len(missing)} of the checkpoint's {split} cases are not in this store "
            f"(e.g. {missing[0]}); use --split all to evaluate every case of the store"
        )
    return [c for c in ids if c in set(labelled)]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_checkpoint(
    checkpoint: str | Path,
    store_path: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 16,
    with_hd95: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Scores of ``checkpoint`` on the ``split`` cases ("train" | "val" | "test" | "all") of a store."""
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=torch_device)
    model.to(memory_format=torch.channels_last)
    target = meta.get("target", "regions")
    names = list(meta.get("regions") or (["WT", "TC", "ET"] if target == "regions" else ["WT"]))
    neighbours = int(meta.get("neighbours", 0))
    amp_dtype = autocast_dtype(amp, torch_device)
    pooled = PooledCounts(len(names))
    slices = SliceDiceTracker()
    per_case: list[dict[str, Any]] = []
    with SliceStore(store_path) as store:
        case_ids = _case_ids(store, meta, split)
        if not case_ids:
            raise MedVisionError(f"{store.path}: no labelled cases in split {split!r} to evaluate")
        for i, case_id in enumerate(case_ids):
            if progress is not None:
                progress(i, len(case_ids), case_id)
            image = store.read_image(case_id).astype(np.float32)
            truth = labels_to_target(store.read_label(case_id), target) > 0.5  # (T, D, h, w)
            spacing = tuple(store.case_meta(case_id)["spacing"])
            pred = predict_volume(model, image, neighbours=neighbours, device=torch_device,
                                  amp_dtype=amp_dtype, batch_size=batch_size) > 0.5
            scores = case_scores(pred, truth, spacing, regions=names, with_hd95=with_hd95)
            per_case.append({"case_id": case_id, **scores})
            counts = np.stack([
                [np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t),
                 np.count_nonzero(~p & ~t)] for p, t in zip(pred, truth, strict=True)
            ])
            pooled.add(counts)
            dice = np.stack([per_slice_dice(pred[c], truth[c]) for c in range(len(names))], axis=1)
            slices.add(dice, truth.sum(axis=(2, 3)).T)
    slice_mean, small = slices.mean_dice(), slices.small_tumour_dice()
    regions: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        row = {}
        for key in CASE_METRICS:
            values = [case[name][key] for case in per_case]
            if key == "hd95":
                row["hd95_inf_cases"] = int(sum(math.isinf(v) for v in values))
                values = [v for v in values if not math.isinf(v)]
            row[key] = _mean(values)
        row["dice_slice"] = float(slice_mean[c])
        row["dice_small"] = float(small[c])
        pooled_scores = pooled.scores(c)
        row.update({f"pooled_{k}": pooled_scores[k] for k in ("dice", "precision", "recall", "specificity")})
        regions[name] = row
    return {
        "checkpoint": str(checkpoint),
        "store": str(store_path),
        "split": split,
        "target": target,
        "cases": len(per_case),
        "regions": regions,
        "per_case": per_case,
    }


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table of the per-region means (what the CLI prints)."""
    columns = [("Dice", "dice"), ("IoU", "iou"), ("Prec", "precision"), ("Recall", "recall"),
               ("Spec", "specificity"), ("HD95mm", "hd95"), ("SmallDice", "dice_small"),
               ("SliceDice", "dice_slice"), ("PoolDice", "pooled_dice"), ("PoolPrec", "pooled_precision"),
               ("PoolRec", "pooled_recall")]
    header = f"{'Region':<7}" + "".join(f"{title:>10}" for title, _ in columns)
    lines = [f"{result['cases']} cases, split {result['split']}, target {result['target']}", header,
             "-" * len(header)]
    for name, row in result["regions"].items():
        cells = "".join(
            f"{row[key]:>10.3f}" if not math.isnan(row[key]) else f"{'n/a':>10}" for _, key in columns
        )
        lines.append(f"{name:<7}{cells}")
    return "\n".join(lines)
