"""What a user may expect from the model for the modalities they gave: the cross-validated Dice of that
subset, as the model card measured it (stored in the checkpoint's metadata under ``cross_validation``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import subset_name


def expected_scores(meta: Mapping[str, Any], available: Sequence[str]) -> dict[str, Any] | None:
    """``{"subset", "cases", "WT", "TC", "ET"}`` (mean Dice per region) for ``available``, or None when
    the checkpoint records no cross-validation for that subset."""
    table = meta.get("cross_validation")
    if not isinstance(table, Mapping):
        return None
    row = (
        table.get("subsets", {}).get(subset_name(available))
        if isinstance(table.get("subsets"), Mapping)
        else None
    )
    if not isinstance(row, Mapping):
        return None
    scores = {r: row.get(r) for r in ("WT", "TC", "ET")}
    if not all(isinstance(v, (int, float)) for v in scores.values()):
        return None
    return {"subset": subset_name(available), "cases": row.get("cases"), **scores}


def modalities_line(available: Sequence[str], set_aside: Sequence[str] = ()) -> str:
    """``"Given: FLAIR, T1CE - missing: T1, T2"`` (names from MODALITIES only, never from the data), and
    the given modalities the model leaves out for this input (``Predictor.set_aside``), if any."""
    given = [m.upper() for m in MODALITIES if m in available]
    missing = [m.upper() for m in MODALITIES if m not in available]
    text = "Given: " + ", ".join(given)
    text += " · missing: " + ", ".join(missing) if missing else " (all four)"
    aside = [m.upper() for m in MODALITIES if m in set_aside and m in available]
    if aside:
        text += (
            f" · {', '.join(aside)} set aside: the model's cross-validation scored this input higher without "
            f"{'it' if len(aside) == 1 else 'them'} (model card)"
        )
    return text


def expectation_line(meta: Mapping[str, Any], available: Sequence[str]) -> str | None:
    """One sentence for the page, e.g. "Expected for FLAIR+T1CE (cross-validation, 9 real cases): ..."."""
    scores = expected_scores(meta, available)
    if scores is None:
        return None
    source = meta["cross_validation"].get("source", "cross-validation")
    cases = f", {int(scores['cases'])} real cases" if isinstance(scores["cases"], int) else ""
    return (
        f"Expected for {scores['subset'].upper()} ({source}{cases}): mean Dice WT {scores['WT']:.2f}, "
        f"TC {scores['TC']:.2f}, ET {scores['ET']:.2f}"
    )


# Below this cross-validated WT Dice the page warns that the model mostly misses the tumour with the
# modalities given (T1 alone, T1ce alone and T1 + T1ce are far below it for the shipped model).
WEAK_WT_DICE = 0.3


def weak_subset_warning(
    meta: Mapping[str, Any], available: Sequence[str], floor: float = WEAK_WT_DICE
) -> str | None:
    """A warning when the model's cross-validated WT Dice for ``available`` is below ``floor``, naming the
    one added modality that helps most by the same table (when it reaches ``floor``); None when the subset
    is good or not recorded."""
    scores = expected_scores(meta, available)
    if scores is None or scores["WT"] >= floor:
        return None
    text = (
        f"With {scores['subset'].upper()} alone this model mostly misses the tumour (cross-validated WT Dice "
        f"{scores['WT']:.2f})."
    )
    additions = []
    for extra in (m for m in MODALITIES if m not in available):
        better = expected_scores(meta, (*available, extra))
        if better is not None:
            additions.append((better["WT"], extra, better["subset"]))
    if additions:
        wt, extra, subset = max(additions)
        if wt >= floor:  # an addition that still leaves the model missing the tumour is no advice
            text += f" Adding {extra.upper()} gives {wt:.2f} ({subset.upper()})."
    return text
