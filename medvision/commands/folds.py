"""`python -m medvision folds STORE -k 3 --out DIR`: patient-wise cross-validation splits of a store.

Writes ``DIR/fold_<i>.json`` (for ``train --split-file``); cases matching ``--train-only`` (a glob on
the case id, e.g. ``Synth_*`` for phantoms) are in every fold's training part and never held out.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "folds",
        help="write patient-wise cross-validation splits of a prepared store",
        description="Split a prepared store's cases into k folds (one JSON split per fold).",
    )
    parser.add_argument("store", type=Path, help="prepared store (.h5)")
    parser.add_argument("-k", type=int, default=3, help="number of folds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle before splitting")
    parser.add_argument(
        "--train-only", action="append", default=[], metavar="GLOB", help="case ids never held out"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for fold_<i>.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medvision.data.splits import make_folds, save_splits
    from medvision.data.store import SliceStore
    from medvision.errors import MedVisionError

    with SliceStore(args.store) as store:
        case_ids = list(store.case_ids)
    train_only = [c for c in case_ids if any(fnmatch.fnmatch(c, g) for g in args.train_only)]
    try:
        folds = make_folds(case_ids, args.k, args.seed, train_only)
    except ValueError as exc:
        raise MedVisionError(f"{args.store}: {exc}") from exc
    args.out.mkdir(parents=True, exist_ok=True)
    for i, fold in enumerate(folds):
        path = save_splits(args.out / f"fold_{i}.json", fold)
        print(f"{path}: train {len(fold['train'])}, held out {', '.join(fold['val'])}")
    return 0
