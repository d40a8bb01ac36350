"""Does averaging several training runs beat one? Scored on the same patient-wise folds.

``python -m medvision.train.ensemble_study STORE NAME=RUN_DIR [NAME=RUN_DIR ...] [--out study.json]``

Each ``RUN_DIR`` holds one recipe's fold runs (``fold_0``, ``fold_1``, ... as ``recipe_study.sh`` writes
them, all on the same folds, e.g. the same recipe with other ``--seed``s). For every fold's held-out cases
and each of the four subsets the goals name, every run's last checkpoint predicts the case's region
probabilities once; each run alone and the average of all runs (the ensemble) then go through the same
threshold and clean-up (the default model's, ``--min-component-fraction``). Printed: the model card's
recipe row (all four WT / TC / ET, median WT HD95, FLAIR WT, T1ce TC, FLAIR + T1ce WT / TC, mean of
those seven) for each run and for the ensemble, and the ensemble's per-case all-four WT Dice beside the
runs' mean, so a gain can be told from one lucky case.

``--combine NAME=RUN+RUN[+...]`` (repeatable) scores those averages instead of the one of all runs, from
the same probabilities (each run predicts each case once). A run trained on a store of another view
(``prepare --view coronal``; its checkpoint's ``data.view``) predicts the case cut along its own axis and
its probabilities are turned back (medvision.data.views), so axial, coronal and sagittal runs average voxel
for voxel: a triplanar ensemble.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvision.data.modality_sets import parse_subset
from medvision.data.store import SliceStore
from medvision.data.views import checkpoint_view, from_view, to_view
from medvision.inference import label_masks
from medvision.inference.postprocess import final_label
from medvision.metrics import case_scores
from medvision.train.evaluation import checkpoint_engine, given_as, split_case_ids
from medvision.train.rundir import checkpoint_path, read_status

SUBSETS = ("flair+t1+t1ce+t2", "flair", "t1ce", "flair+t1ce")
# The seven goal figures of the model card: (subset, region).
GOALS = (
    ("flair+t1+t1ce+t2", "WT"),
    ("flair+t1+t1ce+t2", "TC"),
    ("flair+t1+t1ce+t2", "ET"),
    ("flair", "WT"),
    ("t1ce", "TC"),
    ("flair+t1ce", "WT"),
    ("flair+t1ce", "TC"),
)


def _fold_dirs(run_dir: Path) -> list[Path]:
    folds = sorted(run_dir.glob("fold_[0-9]*"), key=lambda p: int(p.name.split("_")[1]))
    finished = [f for f in folds if (read_status(f) or {}).get("state") == "finished"]
    return [f for f in finished if checkpoint_path(f).is_file()]


def _engines(fold_lists: dict[str, list[Path]], fold: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    return {
        name: checkpoint_engine(checkpoint_path(folds[fold]), "auto", "auto", "auto", 16)
        for name, folds in fold_lists.items()
    }


def _subset_probabilities(
    prepared: dict, engines: dict, modalities: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Each run's region probabilities of one prepared case given as ``modalities`` (no clean-up yet), in
    the stored (axial) axis order whatever view the run predicts in."""
    out = {}
    for name, (engine, meta) in engines.items():
        probabilities = engine.predict(given_as(prepared[name], modalities), min_component_fraction=0.0)
        out[name] = np.ascontiguousarray(from_view(probabilities.probabilities, checkpoint_view(meta)))
    return out


def _combined(members: dict[str, np.ndarray], combine: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """The runs alone and each named average of some of them."""
    out = dict(members)
    for name, parts in combine.items():
        out[name] = np.mean(np.stack([members[p] for p in parts]), axis=0)
    return out


def _score(
    probabilities: np.ndarray, truth: np.ndarray, spacing, regions, fraction: float, hd95: bool
) -> dict:
    label = final_label(probabilities, regions, min_component_fraction=fraction)
    scores = case_scores(label_masks(label, regions), truth, spacing, regions=regions, with_hd95=hd95)
    return {**{r: scores[r]["dice"] for r in regions}, "hd95_wt": scores["WT"]["hd95"]}


def held_out_scores(
    store_path: Path,
    runs: dict[str, Path],
    fraction: float,
    combine: dict[str, tuple[str, ...]] | None = None,
) -> dict[str, dict[str, list]]:
    """member (a run's name, or a name of ``combine``: the mean probabilities of its runs; default
    "ensemble": all runs) -> subset -> one row per held-out case (WT / TC / ET Dice, WT HD95 for all four
    modalities), after the same clean-up."""
    combine = combine or {"ensemble": tuple(runs)}
    fold_lists = {name: _fold_dirs(path) for name, path in runs.items()}
    counts = {name: len(folds) for name, folds in fold_lists.items()}
    if len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise SystemExit(f"every run needs the same number of finished folds; found {counts}")
    scored: dict[str, dict[str, list]] = {}
    with SliceStore(store_path) as store:
        for fold in range(next(iter(counts.values()))):
            engines = _engines(fold_lists, fold)
            held_out = [split_case_ids(store, meta, "val") for _, meta in engines.values()]
            if any(ids != held_out[0] for ids in held_out):
                raise SystemExit(f"fold {fold}: the runs hold out different cases: {held_out}")
            regions = next(iter(engines.values()))[0].regions
            for case_id in held_out[0]:
                truth = label_masks(store.read_label(case_id), regions)
                spacing = tuple(store.case_meta(case_id)["spacing"])
                image = store.read_image(case_id)
                prepared = {
                    name: engine.prepare_stored(np.ascontiguousarray(to_view(image, checkpoint_view(meta))))
                    for name, (engine, meta) in engines.items()
                }
                for subset in SUBSETS:
                    members = _subset_probabilities(prepared, engines, parse_subset(subset))
                    for name, probabilities in _combined(members, combine).items():
                        row = _score(probabilities, truth, spacing, regions, fraction, subset == SUBSETS[0])
                        scored.setdefault(name, {}).setdefault(subset, []).append({"case_id": case_id, **row})
                print(f"fold {fold}: {case_id} scored", file=sys.stderr, flush=True)
    return scored


def summary_row(by_subset: dict[str, list[dict]]) -> dict[str, float]:
    figures = {f"{s} {r}": float(np.mean([c[r] for c in by_subset[s]])) for s, r in GOALS}
    figures["median WT HD95"] = float(np.median([c["hd95_wt"] for c in by_subset[SUBSETS[0]]]))
    figures["mean of 7"] = float(np.mean([figures[f"{s} {r}"] for s, r in GOALS]))
    return figures


HEADER = (
    "| member | all four WT / TC / ET | median WT HD95 | FLAIR WT | T1ce TC "
    "| FLAIR+T1ce WT / TC | mean of 7 |"
)


def format_rows(
    scored: dict[str, dict[str, list[dict]]], combine: dict[str, tuple[str, ...]] | None = None
) -> str:
    lines = [HEADER, "|---|---|---|---|---|---|---|"]
    a = SUBSETS[0]
    for name, by_subset in scored.items():
        f = summary_row(by_subset)
        cells = [
            name,
            f"{f[a + ' WT']:.3f} / {f[a + ' TC']:.3f} / {f[a + ' ET']:.3f}",
            f"{f['median WT HD95']:.1f} mm",
            f"{f['flair WT']:.3f}",
            f"{f['t1ce TC']:.3f}",
            f"{f['flair+t1ce WT']:.3f} / {f['flair+t1ce TC']:.3f}",
            f"{f['mean of 7']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    combine = combine or {"ensemble": tuple(n for n in scored if n != "ensemble")}
    for name, parts in combine.items():
        if name not in scored:
            continue
        lines.append("")
        lines.append(f"all four WT Dice per case: {name} (mean of its runs alone)")
        for i, row in enumerate(scored[name][SUBSETS[0]]):
            alone = np.mean([scored[n][SUBSETS[0]][i]["WT"] for n in parts])
            lines.append(f"- {row['case_id']}: {row['WT']:.3f} ({alone:.3f})")
    return "\n".join(lines)


def parse_combine(items: Sequence[str], runs: tuple[str, ...]) -> dict[str, tuple[str, ...]] | str:
    """``NAME=RUN+RUN`` items -> {NAME: runs}; all runs as "ensemble" when none; a message when wrong."""
    if not items:
        return {"ensemble": runs}
    combine: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, _, parts = item.partition("=")
        members = tuple(p for p in parts.split("+") if p)
        unknown = [p for p in members if p not in runs]
        if not name or len(members) < 2 or unknown or name in runs or name in combine:
            why = f"unknown runs {unknown}" if unknown else "NAME=RUN+RUN, a new name, two or more runs"
            return f"--combine {item!r}: {why}"
        combine[name] = members
    return combine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvision.train.ensemble_study", description=__doc__)
    parser.add_argument("store", type=Path)
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR, two or more")
    parser.add_argument("--min-component-fraction", type=float, default=0.1)
    parser.add_argument("--out", type=Path, help="write every per-case figure here as JSON")
    parser.add_argument(
        "--combine",
        action="append",
        default=[],
        metavar="NAME=RUN+RUN",
        help="score the mean of these runs as NAME (repeatable; default: all runs as 'ensemble')",
    )
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.runs if "=" in item)
    if len(runs) < 2 or len(runs) != len(args.runs):
        parser.error("give two or more runs as NAME=RUN_DIR")
    combine = parse_combine(args.combine, tuple(runs))
    if isinstance(combine, str):
        parser.error(combine)
    paths = {k: Path(v) for k, v in runs.items()}
    scored = held_out_scores(args.store, paths, args.min_component_fraction, combine)
    print(format_rows(scored, combine))
    if args.out:
        args.out.write_text(
            json.dumps(
                {"runs": runs, "scores": scored, "summary": {n: summary_row(s) for n, s in scored.items()}},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
