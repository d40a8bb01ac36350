"""Evaluate a checkpoint on the cases of a prepared store, in 3-D per case (``python -m medvision evaluate``).

Each case of the chosen split goes through the same inference engine as ``predict`` (medvision.inference:
brain mask, nested label, optional small-piece removal) on its stored brain crop, and the regions of the
resulting label are scored per case as a volume (Dice, IoU, precision, recall, specificity, HD95 in mm)
and averaged over cases with the BraTS conventions of medvision.metrics (an empty region scores Dice 1 /
HD95 0 when the truth is empty too, Dice 0 / HD95 373.13 mm when only one is empty; every case counts,
and each mean says how many cases were empty). Alongside: the mean Dice over slices with tumour, the
small-tumour Dice (truth < 500 pixels per slice) and the original project's pixel-pooled scores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medvision.checkpoint import load_checkpoint
from medvision.data.case import MODALITIES
from medvision.data.modality_sets import keep_only, subset_name
from medvision.data.splits import make_splits
from medvision.data.store import SliceStore
from medvision.data.views import checkpoint_view
from medvision.errors import MedVisionError
from medvision.inference import PredictorOptions, SegmentationEngine, build_engine, label_masks
from medvision.inference.geometry import PreparedVolume
from medvision.metrics import SliceDiceTracker, case_scores, region_counts, summarise_split, volume_slice_dice
from medvision.precision import resolve_device

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")


def split_case_ids(store: SliceStore, meta: dict[str, Any], split: str) -> list[str]:
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


class SplitScores:
    """Per-case scores, pooled counts and slice Dice of the cases scored so far; :meth:`summary` reports."""

    def __init__(self, regions: tuple[str, ...], *, with_hd95: bool = True) -> None:
        self.regions = regions
        self.with_hd95 = with_hd95
        self.per_case: list[dict[str, Any]] = []
        self.pooled = np.zeros((len(regions), 4), dtype=np.int64)
        self.slices = SliceDiceTracker()

    def add(self, case_id: str, pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> None:
        """Score one case: ``pred`` and ``truth`` are (R, D, H, W) boolean region masks."""
        scores = case_scores(pred, truth, spacing, regions=self.regions, with_hd95=self.with_hd95)
        self.per_case.append({"case_id": case_id, **scores})
        self.pooled += region_counts(pred, truth)
        self.slices.add(*volume_slice_dice(pred, truth))

    def summary(self) -> dict[str, dict[str, float]]:
        return summarise_split(self.per_case, self.pooled, self.slices.totals(), self.regions)


def given_as(prepared: PreparedVolume, modalities: tuple[str, ...]) -> PreparedVolume:
    """``prepared`` as if only ``modalities`` had been given (the others' channels zeroed)."""
    if modalities == MODALITIES:
        return prepared
    image = keep_only(prepared.image, modalities)
    return dataclasses.replace(prepared, image=image, available=modalities)


def predict_stored_case(
    engine: SegmentationEngine,
    store: SliceStore,
    case_id: str,
    *,
    tta: bool = False,
    min_component_voxels: int = 0,
    min_component_fraction: float | None = None,
    modalities: tuple[str, ...] = MODALITIES,
) -> np.ndarray:
    """The label (D, h, w) uint8 that ``predict`` would write for a stored case, on its brain crop.

    ``modalities``: score the case as if only these had been given (the others' channels zeroed; the
    model must take availability planes unless all four are kept)."""
    prepared = engine.prepare_stored(store.read_image(case_id))
    if modalities != MODALITIES and not engine.spec.availability:
        raise MedVisionError(
            "this checkpoint was trained on all four modalities only; it cannot be "
            f"scored on {subset_name(modalities)}"
        )
    return engine.predict(
        given_as(prepared, modalities),
        tta=tta,
        min_component_voxels=min_component_voxels,
        min_component_fraction=min_component_fraction,
    ).label


# Training names precision by AMP mode, inference by dtype; evaluate takes the training names.
_AMP_TO_DTYPE = {"auto": "auto", "off": "float32", "bf16": "bfloat16", "fp16": "float16"}


def checkpoint_engine(
    checkpoint: str | Path, device: str, amp: str, backend: str, batch_size: int
) -> tuple[SegmentationEngine, dict[str, Any]]:
    torch_device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, device=torch_device)
    if amp not in _AMP_TO_DTYPE:
        raise ValueError(f"amp must be one of {tuple(_AMP_TO_DTYPE)}, got {amp!r}")
    dtype = _AMP_TO_DTYPE[amp]
    if dtype == "float16" and torch_device.type != "cuda":
        logger.info("fp16 AMP needs a CUDA GPU; evaluating in fp32 on %s", torch_device)
        dtype = "float32"
    options = PredictorOptions(
        device=device, dtype=dtype, backend=backend, batch_size=batch_size, threads=None
    )
    return build_engine(model, meta, options, str(meta.get("weights_sha256", ""))), meta


def evaluate_checkpoint(
    checkpoint: str | Path,
    store_path: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    amp: str = "auto",
    backend: str = "auto",
    batch_size: int = 16,
    with_hd95: bool = True,
    tta: bool = False,
    min_component_voxels: int = 0,
    min_component_fraction: float | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    modalities: tuple[str, ...] = MODALITIES,
) -> dict[str, Any]:
    """Scores of ``checkpoint`` on the ``split`` cases of a store, predicted exactly as ``predict`` does.

    Args:
        checkpoint: a ``.safetensors`` checkpoint.
        store_path: a prepared store (medvision.data.store).
        split: "train", "val" or "test" (the checkpoint's own split lists) or "all" labelled cases.
        device, amp, backend, batch_size: how the network runs (medvision.inference.backend; ``amp`` in
            training's names: auto, bf16, fp16, off).
        with_hd95: compute HD95 (the slow part); ``nan`` otherwise.
        tta, min_component_voxels: as ``predict --tta`` / ``--min-component-voxels``.
        min_component_fraction: None: the model's own clean-up (as ``predict``); 0: keep every piece.
        progress: called with (index, number of cases, case id) before each case.
        modalities: the subset each case is given as (``predict --modalities``).
    Returns:
        {"regions": {region: means and counts}, "per_case": [...], "cases", "split", "target", ...}.
    Raises:
        ValueError: an unknown split or precision.
        MedVisionError: the split's cases are not in the store, or none is labelled.
        CheckpointError: the checkpoint is unreadable.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    engine, meta = checkpoint_engine(checkpoint, device, amp, backend, batch_size)
    regions = engine.regions
    scores = SplitScores(regions, with_hd95=with_hd95)
    with SliceStore(store_path) as store:
        if store.view != checkpoint_view(meta):
            raise MedVisionError(
                f"{store.path}: holds {store.view} slices but {checkpoint} was trained on "
                f"{checkpoint_view(meta)} slices; evaluate it on a store of its view (prepare --view)"
            )
        case_ids = split_case_ids(store, meta, split)
        if not case_ids:
            raise MedVisionError(f"{store.path}: no labelled cases in split {split!r} to evaluate")
        for i, case_id in enumerate(case_ids):
            if progress is not None:
                progress(i, len(case_ids), case_id)
            label = predict_stored_case(
                engine,
                store,
                case_id,
                tta=tta,
                min_component_voxels=min_component_voxels,
                min_component_fraction=min_component_fraction,
                modalities=modalities,
            )
            truth = label_masks(store.read_label(case_id), regions)
            spacing = tuple(store.case_meta(case_id)["spacing"])
            scores.add(case_id, label_masks(label, regions), truth, spacing)
    return {
        "checkpoint": str(checkpoint),
        "store": str(store_path),
        "split": split,
        "modalities": subset_name(modalities),
        "target": engine.spec.target,
        "backend": f"{engine.backend.name} {engine.backend.precision}",
        "cases": len(scores.per_case),
        "regions": scores.summary(),
        "per_case": scores.per_case,
    }


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table of the per-region means (what the CLI prints)."""
    columns = [
        ("Dice", "dice"),
        ("IoU", "iou"),
        ("Prec", "precision"),
        ("Recall", "recall"),
        ("Spec", "specificity"),
        ("HD95mm", "hd95"),
        ("SmallDice", "dice_small"),
        ("SliceDice", "dice_slice"),
        ("PoolDice", "pooled_dice"),
        ("PoolPrec", "pooled_precision"),
        ("PoolRec", "pooled_recall"),
    ]
    header = f"{'Region':<7}" + "".join(f"{title:>10}" for title, _ in columns)
    lines = [
        f"{result['cases']} cases, split {result['split']}, target {result['target']}, "
        f"modalities {result.get('modalities', 'flair+t1+t1ce+t2')}",
        header,
        "-" * len(header),
    ]
    for name, row in result["regions"].items():
        cells = "".join(
            f"{row[key]:>10.3f}" if not math.isnan(row[key]) else f"{'n/a':>10}" for _, key in columns
        )
        lines.append(f"{name:<7}{cells}")
    lines += _empty_case_notes(result)
    return "\n".join(lines)


def _empty_case_notes(result: dict[str, Any]) -> list[str]:
    """One line per region whose means include empty-mask cases (their scores are conventions)."""
    notes = []
    for name, row in result["regions"].items():
        both, one = int(row.get("both_empty_cases", 0)), int(row.get("one_empty_cases", 0))
        if both or one:
            notes.append(
                f"{name}: of {int(row.get('cases', result['cases']))} cases, {both} empty in truth and "
                f"prediction (Dice 1, HD95 0), {one} empty in only one (Dice 0, HD95 373.13 mm)"
            )
    return notes
