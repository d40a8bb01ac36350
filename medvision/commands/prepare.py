"""`python -m medvision prepare SRC --out STORE.h5`: build the prepared store training and EDA read."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medvision.data.store import SliceStore, prepare_store
from medvision.data.views import VIEWS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that may have to prepare a store from a dataset."""
    parser.add_argument(
        "--workers", type=positive_int, default=2, help="processes loading cases (1 = no extra process)"
    )
    parser.add_argument(
        "--kaggle-channel-order",
        default=None,
        help="channel order of Kaggle BraTS2020 .h5 slices, comma-separated (default flair,t1,t1ce,t2)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def channel_order(args: argparse.Namespace) -> tuple[str, ...] | None:
    if not args.kaggle_channel_order:
        return None
    return tuple(part.strip() for part in args.kaggle_channel_order.split(",") if part.strip())


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="crop, normalise and pack a dataset into one HDF5 store",
        description="Read a dataset (BraTS folders, Decathlon Task01, Kaggle .h5 slices, zips, or one case), "
        "crop each case to its brain, z-score it and write a chunked HDF5 store.",
    )
    parser.add_argument(
        "source",
        type=Path,
        nargs="+",
        help="dataset folder, case folder, .zip or 4-D NIfTI (several: one store of all their cases)",
    )
    parser.add_argument("--out", type=Path, required=True, help="store file to write (e.g. data/brats.h5)")
    parser.add_argument(
        "--view",
        choices=VIEWS,
        default="axial",
        help="store each case resliced so that training sees coronal or sagittal slices (default axial)",
    )
    add_source_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = prepare_store(
        args.source if len(args.source) > 1 else args.source[0],
        args.out,
        workers=args.workers,
        progress=not args.no_progress,
        kaggle_channel_order=channel_order(args),
        view=args.view,
    )
    with SliceStore(path) as store:
        table = store.slice_table()
        tumour = int((table["pixels_wt"] > 0).sum())
        print(f"{path}: {len(store.case_ids)} cases, {len(table)} slices ({tumour} with tumour)")
    return 0
