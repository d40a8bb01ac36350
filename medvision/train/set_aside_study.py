"""Which inputs should the model predict as a smaller subset? Nested cross-validation over the folds.

``python -m medvision.train.set_aside_study FOLD.json [FOLD.json ...] [--margin 0.01] [--out study.json]``

Each file is one fold's ``evaluate --modalities subsets --out`` result: every held-out case scored with
every modality subset. Given a subset, the model can predict it as any of its smaller subsets (setting the
other modalities aside: ``pack_ensemble --route-superset LARGER=SMALLER``). Predicting with a smaller subset
is exactly scoring that subset, so no network runs here. For each fold, every subset's choice is made on
the *other* folds' cases (the smaller subset with the highest mean of the per-case WT / TC / ET Dice, taken
only when it beats the subset itself by more than ``margin``), and scored on the fold's own cases: the
nested estimate of the rule, not of the best choice in hindsight. The last column is the choice made on all
folds together, which is what ships.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import SUBSETS, parse_subset, subset_name

REGIONS = ("WT", "TC", "ET")
# Scores: fold -> subset -> case id -> region -> Dice.
FoldScores = dict[int, dict[str, dict[str, dict[str, float]]]]


def load_folds(paths: Sequence[Path]) -> FoldScores:
    """The per-case Dice of every subset, per fold file; ValueError naming a file without subset results."""
    folds: FoldScores = {}
    for fold, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        if not isinstance(data.get("subsets"), list):
            raise ValueError(f"{path}: no 'subsets' list (made by evaluate --modalities subsets --out)")
        folds[fold] = {
            subset_name(parse_subset(result["modalities"])): {
                row["case_id"]: {r: float(row[r]["dice"]) for r in REGIONS} for row in result["per_case"]
            }
            for result in data["subsets"]
        }
    return folds


def smaller_subsets(subset: str) -> list[str]:
    """Every non-empty subset of ``subset``, itself included, in canonical order."""
    given = set(parse_subset(subset))
    return [subset_name(s) for s in SUBSETS if set(s) <= given]


def mean_score(folds: FoldScores, on: Sequence[int], subset: str) -> float:
    """Mean over the cases of folds ``on`` of each case's mean region Dice with ``subset``."""
    return statistics.mean(statistics.mean(row.values()) for f in on for row in folds[f][subset].values())


def choose(folds: FoldScores, on: Sequence[int], subset: str, margin: float) -> str:
    """The input ``subset`` is predicted as, judged on folds ``on``: itself unless a smaller one is better
    by more than ``margin``."""
    candidates = [s for s in smaller_subsets(subset) if all(s in folds[f] for f in on)]
    best = max(candidates, key=lambda s: mean_score(folds, on, s))
    return best if mean_score(folds, on, best) > mean_score(folds, on, subset) + margin else subset


def run_study(folds: FoldScores, margin: float = 0.01) -> dict[str, Any]:
    """Per subset: the fold-wise choices, the plain and nested mean Dice per region, the final choice."""
    rows: dict[str, Any] = {}
    subsets = [s for s in smaller_subsets(subset_name(MODALITIES)) if all(s in folds[f] for f in folds)]
    for subset in subsets:
        chosen, plain, nested = [], {r: [] for r in REGIONS}, {r: [] for r in REGIONS}
        for fold in folds:
            pick = choose(folds, [f for f in folds if f != fold], subset, margin)
            chosen.append(pick)
            for region in REGIONS:
                plain[region] += [row[region] for row in folds[fold][subset].values()]
                nested[region] += [row[region] for row in folds[fold][pick].values()]
        rows[subset] = {
            "fold_choices": chosen,
            "plain": {r: statistics.mean(v) for r, v in plain.items()},
            "nested": {r: statistics.mean(v) for r, v in nested.items()},
            "final": choose(folds, list(folds), subset, margin),
        }
    return {"margin": margin, "folds": len(folds), "subsets": rows}


def format_study(study: Mapping[str, Any]) -> str:
    """A Markdown table of the study, and the ``--route-superset`` arguments of its final choices."""
    lines = [
        f"Nested choice over {study['folds']} folds (a smaller input only when better by > {study['margin']}"
        " mean Dice on the other folds)",
        "",
        "| modalities | as given: WT / TC / ET | nested: WT / TC / ET | fold choices | final |",
        "|---|---|---|---|---|",
    ]
    for subset, row in study["subsets"].items():
        plain = " / ".join(f"{row['plain'][r]:.3f}" for r in REGIONS)
        nested = " / ".join(f"{row['nested'][r]:.3f}" for r in REGIONS)
        lines.append(f"| {subset} | {plain} | {nested} | {', '.join(row['fold_choices'])} | {row['final']} |")
    chosen = [f"{s}={row['final']}" for s, row in study["subsets"].items() if row["final"] != s]
    lines += ["", "--route-superset " + " --route-superset ".join(chosen) if chosen else "nothing set aside"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvision.train.set_aside_study", description=__doc__)
    parser.add_argument("folds", type=Path, nargs="+", help="one evaluate --modalities subsets JSON per fold")
    parser.add_argument("--margin", type=float, default=0.01, help="mean Dice a smaller input must gain")
    parser.add_argument("--out", type=Path, help="write the study as JSON")
    args = parser.parse_args(argv)
    if len(args.folds) < 2:
        parser.error("give two or more folds: each choice is made on the other folds")
    try:
        study = run_study(load_folds(args.folds), args.margin)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_study(study))
    if args.out is not None:
        args.out.write_text(json.dumps(study, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
