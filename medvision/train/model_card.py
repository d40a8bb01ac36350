"""The model card's tables from ``evaluate --modalities subsets`` results.

Run as ``python -m medvision.train.model_card RESULT.json ...``.

Cross-validation folds are pooled per case: every real case is scored once, by the fold that held it out,
and the means are over those cases. Rows are the 15 modality subsets; a second table checks that adding
a modality never lowers a region's mean Dice by more than a tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import SUBSETS, subset_name

REGIONS = ("WT", "TC", "ET")


def load_subset_results(paths: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """subset name -> per-case rows of every file (an evaluate --out JSON with "subsets")."""
    pooled: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for result in data.get("subsets", [data]):
            pooled.setdefault(result["modalities"], []).extend(result["per_case"])
    return pooled


def _values(rows: list[dict[str, Any]], region: str, key: str) -> np.ndarray:
    values = [row[region].get(key) for row in rows]
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def subset_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per region: mean Dice, median HD95 (mm; null/inf count as 373.13), mean small-tumour Dice."""
    out = {}
    for region in REGIONS:
        hd95 = _values(rows, region, "hd95")
        hd95 = np.where(np.isfinite(hd95), hd95, 373.13)
        small = _values(rows, region, "dice_small")
        out[region] = {
            "dice": float(np.nanmean(_values(rows, region, "dice"))),
            "hd95_median": float(np.median(hd95)),
            "dice_small": float(np.nanmean(small)) if np.isfinite(small).any() else math.nan,
        }
    return out


def subset_table(pooled: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per subset (cases, mean Dice WT/TC/ET, median HD95 WT/TC/ET in mm). Small-tumour
    Dice is a per-split figure of ``evaluate``, not a per-case one, so folds cannot be pooled for it."""
    lines = [
        "| modalities | cases | Dice WT | Dice TC | Dice ET | HD95 WT | HD95 TC | HD95 ET |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for subset in SUBSETS:
        name = subset_name(subset)
        if name not in pooled:
            continue
        means = subset_means(pooled[name])
        cells = [f"{means[r]['dice']:.3f}" for r in REGIONS]
        cells += [f"{means[r]['hd95_median']:.1f}" for r in REGIONS]
        lines.append(f"| {name} | {len(pooled[name])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_additions(pooled: dict[str, list[dict[str, Any]]], tolerance: float = 0.01) -> list[str]:
    """Every (subset + one modality) whose mean Dice of a region drops by more than ``tolerance``."""
    means = {name: subset_means(rows) for name, rows in pooled.items()}
    found = []
    for subset in SUBSETS:
        for modality in MODALITIES:
            if modality in subset:
                continue
            bigger = subset_name((*subset, modality))
            small = subset_name(subset)
            if small not in means or bigger not in means:
                continue
            for region in REGIONS:
                drop = means[small][region]["dice"] - means[bigger][region]["dice"]
                if drop > tolerance:
                    found.append(f"{small} -> +{modality}: {region} Dice {drop:.3f} lower")
    return found


def cross_validation_meta(pooled: dict[str, list[dict[str, Any]]], source: str) -> dict[str, Any]:
    """What a checkpoint records for the app (medvision.app_support.subset_expectations): per subset, the
    number of cases and the mean Dice per region."""
    subsets = {}
    for name, rows in pooled.items():
        means = subset_means(rows)
        subsets[name] = {"cases": len(rows), **{r: round(means[r]["dice"], 4) for r in REGIONS}}
    return {"source": source, "subsets": subsets}


def record_in_checkpoint(checkpoint_json: Path, pooled: dict[str, list[dict[str, Any]]], source: str) -> None:
    """Add ``cross_validation`` to a checkpoint's metadata file (atomically; the weights are untouched)."""
    from medvision.atomic import write_json_atomic

    meta = json.loads(checkpoint_json.read_text(encoding="utf-8"))
    meta["cross_validation"] = cross_validation_meta(pooled, source)
    write_json_atomic(checkpoint_json, meta, indent=2)


def main(argv: Sequence[str]) -> int:
    """``python -m medvision.train.model_card RESULT.json ... [--into CHECKPOINT.json]``: print the subset
    table and the checks; with ``--into``, also record the means in that checkpoint's metadata."""
    parser = argparse.ArgumentParser(prog="python -m medvision.train.model_card", description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="evaluate --modalities ... --out JSON files")
    parser.add_argument("--into", type=Path, help="record the cross-validated means in this checkpoint .json")
    try:
        parsed = parser.parse_args(list(argv))
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return int(stop.code or 0)
    missing = [str(p) for p in parsed.results if not p.is_file()]
    if missing:
        print(f"error: no such result file: {', '.join(missing)}", file=sys.stderr)
        return 2
    pooled = load_subset_results(parsed.results)
    if parsed.into is not None:
        record_in_checkpoint(parsed.into, pooled, "3-fold cross-validation")
    print(subset_table(pooled))
    drops = worst_additions(pooled)
    print(f"\nadding a modality lowered a region's mean Dice by more than 0.01 in {len(drops)} cases")
    for line in drops:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
