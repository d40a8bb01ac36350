"""Does the model know when it is wrong? Calibration of its probabilities and its MC-dropout uncertainty.

For each held-out case (all four modalities), within the brain:
- expected calibration error (ECE) of the whole-tumour probability: voxels binned by predicted probability
  (10 equal bins), the voxel-weighted mean gap between each bin's mean probability and its tumour share;
- AUROC of the MC-dropout uncertainty (std of the WT probability over the passes) for the voxel being
  wrong (predicted WT differs from the truth): 0.5 is chance, 1.0 ranks every wrong voxel above every
  right one.

Run as ``python -m medvision.train.calibration CHECKPOINT STORE [--split val] [--mc-samples 4] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from medvision.data.store import SliceStore


def expected_calibration_error(probability: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE of probabilities in [0, 1] against boolean truth (same shape), ``bins`` equal-width bins."""
    probability = np.asarray(probability, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    if probability.size == 0:
        return float("nan")
    which = np.minimum((probability * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    mean_p = np.bincount(which, weights=probability, minlength=bins)
    hits = np.bincount(which, weights=truth.astype(np.float64), minlength=bins)
    used = count > 0
    gap = np.abs(mean_p[used] - hits[used]) / count[used]
    return float((gap * count[used]).sum() / count.sum())


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney U with tied ranks averaged);
    ``nan`` when either class is empty."""
    from scipy.stats import rankdata

    score = np.asarray(score, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def case_calibration(
    probability: np.ndarray,
    uncertainty: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    brain: np.ndarray,
) -> dict[str, float]:
    """Scores of one case from its WT probability, uncertainty, predicted and true WT, all (d, h, w)."""
    wrong = predicted[brain] != truth[brain]
    return {
        "ece_wt": expected_calibration_error(probability[brain], truth[brain]),
        "auroc_uncertainty_error": auroc(uncertainty[brain], wrong),
        "error_fraction": float(wrong.mean()) if wrong.size else float("nan"),
        "uncertainty_wrong": float(uncertainty[brain][wrong].mean()) if wrong.any() else float("nan"),
        "uncertainty_right": float(uncertainty[brain][~wrong].mean()) if (~wrong).any() else float("nan"),
    }


def calibration_of_checkpoint(
    checkpoint: str, store_path: str, *, split: str = "val", mc_samples: int = 4
) -> dict[str, Any]:
    """Per-case calibration of ``checkpoint`` on a store's split, and the means over its cases."""
    from medvision.inference import label_masks
    from medvision.train.evaluation import checkpoint_engine, split_case_ids

    engine, meta = checkpoint_engine(checkpoint, "cpu", "auto", "torch", 16)
    per_case = []
    with SliceStore(store_path) as store:
        for case_id in split_case_ids(store, meta, split):
            prepared = engine.prepare_stored(store.read_image(case_id))
            result = engine.predict(prepared, mc_samples=mc_samples, seed=0)
            truth = label_masks(store.read_label(case_id), engine.regions)[0]
            predicted = label_masks(result.label, engine.regions)[0]
            scores = case_calibration(
                result.probabilities[0], result.uncertainty, predicted, truth, prepared.brain
            )
            per_case.append({"case_id": case_id, **scores})
    keys = [k for k in per_case[0] if k != "case_id"] if per_case else []
    means = {k: float(np.nanmean([row[k] for row in per_case])) for k in keys}
    return {
        "checkpoint": checkpoint,
        "split": split,
        "mc_samples": mc_samples,
        "per_case": per_case,
        "mean": means,
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvision.train.calibration", description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("store")
    parser.add_argument("--split", default="val")
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = calibration_of_checkpoint(
        args.checkpoint, args.store, split=args.split, mc_samples=args.mc_samples
    )
    text = json.dumps(result, indent=2)
    if args.out:
        from medvision.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    print(json.dumps(result["mean"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
