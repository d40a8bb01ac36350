"""`python -m medvision synth`: write a deterministic synthetic cohort (MedVision's built-in dataset)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medvision.data.synthetic import DEFAULT_SIZE, FORMATS, MIN_SIZE, write_cohort
from medvision.errors import MedVisionError

LAYOUT_HELP = (
    "layouts: nifti -> OUT/Synth_000/Synth_000_{flair,t1,t1ce,t2,seg}.nii.gz (BraTS 2021 folders); "
    "h5 -> OUT/h5/volume_<i>_slice_<s>.h5 (Kaggle BraTS2020 slices, volume i = case i); "
    "both -> OUT/nifti/Synth_000/... and OUT/h5/... (the same cases twice; `prepare OUT` reads OUT/nifti, "
    "`prepare OUT/h5` the slices)"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _size_int(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"each size must be >= {MIN_SIZE}, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic 4-modality brain-tumour cohort",
        description="Write a deterministic cohort of synthetic BraTS-like cases (phantoms + tumour labels). "
        + LAYOUT_HELP,
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cases", type=_positive_int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed; case i depends only on (seed, i)")
    parser.add_argument(
        "--size",
        type=_size_int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=list(DEFAULT_SIZE),
        help="volume size in voxels (default 155 240 240 = BraTS at 1 mm; smaller sizes mean coarser voxels)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="nifti", dest="fmt", help="on-disk layout (see above)"
    )
    parser.add_argument("--workers", type=_positive_int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        paths = write_cohort(
            args.out,
            args.cases,
            seed=args.seed,
            size=tuple(args.size),
            fmt=args.fmt,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except OSError as error:  # unwritable folder, full disk: one line on stderr via cli.main
        raise MedVisionError(f"{args.out}: cannot write the cohort: {error}") from error
    seconds = time.perf_counter() - start
    size = "x".join(str(s) for s in args.size)
    print(
        f"wrote {args.cases} synthetic cases ({size}, {args.fmt}, seed {args.seed}) to {args.out} "
        f"in {seconds:.1f} s ({len(paths)} paths)"
    )
    if args.fmt == "both":
        nifti, h5 = args.out / "nifti", args.out / "h5"
        print(f"`prepare {args.out}` reads the NIfTI copy {nifti}; give {h5} to prepare the .h5 slices")
    return 0
