"""`python -m medvision evaluate`: score a checkpoint in 3-D on the cases of one split.

Example::

    python -m medvision evaluate --checkpoint runs/demo/checkpoints/best.safetensors --data store.h5 \\
        --split test --out metrics.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from medvision.commands.arguments import unit_fraction


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a dataset split",
        description="Per-region Dice, IoU, precision, recall, specificity, HD95 (per case, 3-D), "
        "small-tumour Dice and the original project's pixel-pooled numbers.",
    )
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint (with its .json)")
    parser.add_argument("--data", required=True, help="a prepared store or any dataset source")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="cases to score: the checkpoint's split lists, or all labelled cases",
    )
    parser.add_argument("--out", help="write the full results (incl. per case) as JSON here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "fp16", "off"),
        help="autocast precision; auto: bf16 on GPUs and on CPUs with native bf16, else fp32",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-hd95", action="store_true", help="skip the (slow) HD95 distance")
    parser.add_argument(
        "--min-component-fraction",
        type=unit_fraction,
        default=None,
        metavar="F",
        help="as predict --min-component-fraction (default: the model's own clean-up)",
    )
    parser.add_argument(
        "--modalities",
        default="flair+t1+t1ce+t2",
        metavar="SET",
        help="score each case given only these modalities (e.g. flair+t1ce); several sets separated by "
        "spaces in one quoted argument, or 'subsets' for all 15 (models trained with --modality-dropout)",
    )
    parser.set_defaults(func=run)


def _subsets(text: str) -> list[tuple[str, ...]]:
    from medvision.data.modality_sets import SUBSETS, parse_subset
    from medvision.errors import MedVisionError

    if text.strip() == "subsets":
        return list(SUBSETS)
    try:
        return [parse_subset(part) for part in text.split()]
    except ValueError as exc:
        raise MedVisionError(f"--modalities: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from medvision.data.store import is_store, prepare_store
    from medvision.train.evaluation import evaluate_checkpoint, format_table
    from medvision.train.rundir import json_safe, write_json_atomic

    def progress(i: int, n: int, case_id: str) -> None:
        print(f"\r[{i + 1}/{n}] {case_id}", end="", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="medvision-eval-") as tmp:
        store = Path(args.data)
        if not is_store(store):
            store = prepare_store(args.data, Path(tmp) / "store.h5", progress=False)
        results = [
            evaluate_checkpoint(
                args.checkpoint,
                store,
                split=args.split,
                device=args.device,
                amp=args.amp,
                batch_size=args.batch_size,
                with_hd95=not args.no_hd95,
                progress=progress,
                modalities=subset,
                min_component_fraction=args.min_component_fraction,
            )
            for subset in _subsets(args.modalities)
        ]
    print(file=sys.stderr)
    print("\n\n".join(format_table(result) for result in results))
    if args.out:
        saved = results[0] if len(results) == 1 else {"subsets": results}
        write_json_atomic(args.out, json_safe(saved))  # inf/nan -> null
        print(f"saved {args.out}")
    return 0
