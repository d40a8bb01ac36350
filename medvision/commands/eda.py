"""`python -m medvision eda SRC --out report.json`: dataset statistics of a store or of any dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from medvision.atomic import write_json_atomic
from medvision.commands.prepare import add_source_options, channel_order
from medvision.data.store import SliceStore, is_store, prepare_store
from medvision.eda import compute_eda

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eda",
        help="dataset statistics (tumour sizes, positions, intensities) as JSON",
        description="Compute the EDA report of a prepared store. If SRC is a dataset rather than a store, "
        "it is prepared first into OUT's folder (<out stem>.store.h5), reused while its source is the same.",
    )
    parser.add_argument("source", type=Path, help="a prepared store (.h5) or any dataset `prepare` accepts")
    parser.add_argument("--out", type=Path, required=True, help="report file to write (JSON)")
    parser.add_argument(
        "--reprepare", action="store_true", help="prepare again even if a cached store exists"
    )
    add_source_options(parser)
    parser.set_defaults(func=run)


def _store_for(args: argparse.Namespace) -> Path:
    if is_store(args.source):
        return args.source
    cached = args.out.parent / f"{args.out.stem}.store.h5"
    if not args.reprepare and is_store(cached):
        with SliceStore(cached) as store:
            same_source = store.source == str(args.source.resolve())
        if same_source:
            log.info("reusing prepared store %s (use --reprepare after changing the data)", cached)
            return cached
    return prepare_store(
        args.source,
        cached,
        workers=args.workers,
        progress=not args.no_progress,
        kaggle_channel_order=channel_order(args),
    )


def run(args: argparse.Namespace) -> int:
    store_path = _store_for(args)
    report = compute_eda(store_path)
    write_json_atomic(args.out, report, indent=1)
    slices = report["slices"]
    print(
        f"{args.out}: {report['n_cases']} cases, {report['n_slices']} slices "
        f"({slices['tumour']} tumour, {slices['healthy']} healthy); store {store_path}"
    )
    return 0
