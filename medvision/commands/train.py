"""`python -m medvision train`: train a model into a run directory (also under torchrun for several GPUs).

Examples::

    python -m medvision train --data data/synth --run-dir runs/demo --preset demo
    python -m medvision train --data store.h5 --run-dir runs/brats --preset brats
    torchrun --nproc_per_node=4 -m medvision train --data store.h5 --run-dir runs/brats4 --preset brats
    python -m medvision train --run-dir runs/demo --resume --epochs 8
"""

from __future__ import annotations

import argparse
import logging
import os

from medvision.train.config import (
    AMP_MODES,
    DEVICES,
    DISTILL_LOSSES,
    PRESETS,
    TARGETS,
    TrainConfig,
)

logger = logging.getLogger(__name__)

# CLI flag dest -> TrainConfig field (flags left out stay at the preset's value).
OVERRIDES = {
    "epochs": "epochs",
    "steps_per_epoch": "steps_per_epoch",
    "batch_size": "batch_size",
    "lr": "lr",
    "amp": "amp",
    "base_filters": "base_filters",
    "depth": "depth",
    "target": "target",
    "compile": "compile",
    "device": "device",
    "workers": "workers",
    "seed": "seed",
    "neighbours": "neighbours",
    "patch_size": "patch_size",
    "scheduler": "scheduler",
    "tumour_fraction": "tumour_fraction",
    "augment": "augment",
    "in_memory": "in_memory",
    "val_max_slices": "val_max_slices",
    "log_every": "log_every",
    "channels_last": "channels_last",
    "threads": "threads",
    "modality_dropout": "modality_dropout",
    "modality_subsets": "modality_subsets",
    "split_file": "split_file",
    "dice_weight": "dice_weight",
    "bce_weight": "bce_weight",
    "focal_weight": "focal_weight",
    "distill_from": "distill_from",
    "distill_weight": "distill_weight",
    "distill_loss": "distill_loss",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model",
        description="Train an Attention U-Net. Writes config.json, status.json, metrics.jsonl, "
        "checkpoints/{last,best}.safetensors, samples/ and train.log into --run-dir.",
    )
    parser.add_argument(
        "--data",
        help="a prepared store (.h5) or any dataset source "
        "(prepared into <run-dir>/store.h5 first); optional with --resume",
    )
    parser.add_argument("--run-dir", required=True, help="folder for this run's outputs")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="starting settings: seed (original recipe), demo (CPU minutes, phantoms), "
        "real (the default model: real cases, any modality subset), brats (GPU)",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--amp", choices=AMP_MODES)
    parser.add_argument("--base-filters", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--target", choices=TARGETS)
    parser.add_argument("--neighbours", type=int, help="neighbouring slices each side as extra channels")
    parser.add_argument(
        "--modality-dropout",
        type=float,
        metavar="P",
        help="train for any subset of the modalities: drop a random subset from a share P of the slices",
    )
    parser.add_argument(
        "--modality-subsets",
        metavar="{uniform,inverse-size,SUBSET}",
        help="how the dropped subsets are drawn: uniform over the 15, inverse-size (1/k for k modalities), or"
        " one subset alone (e.g. t1ce; with --modality-dropout 1 a network for that input only)",
    )
    parser.add_argument("--patch-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--scheduler", choices=("plateau", "cosine"))
    parser.add_argument("--tumour-fraction", type=float, help="share of draws from tumour slices")
    parser.add_argument("--augment", choices=("none", "light", "strong"))
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model"
    )
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device", choices=DEVICES)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 helps on a busy shared machine)")
    parser.add_argument("--workers", type=int, help="DataLoader workers when slices are streamed")
    parser.add_argument(
        "--in-memory",
        choices=("auto", "always", "never"),
        help="hold the slices as tensors on the device (auto: when they fit)",
    )
    parser.add_argument("--val-max-slices", type=int)
    parser.add_argument(
        "--split-file",
        metavar="JSON",
        help="fixed split {train, val, test: [case ids]}, e.g. a fold from `python -m medvision folds`",
    )
    _add_loss_arguments(parser)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    parser.add_argument(
        "--init-from", metavar="CKPT", help="start from this checkpoint's weights (fine-tune)"
    )
    parser.add_argument("--prepare-workers", type=int, default=2, help="processes preparing a raw source")
    parser.set_defaults(func=run)


def _add_loss_arguments(parser: argparse.ArgumentParser) -> None:
    """The loss terms' weights and distillation from a teacher checkpoint (medvision.train.distillation)."""
    # The loss is dice_weight * Dice + bce_weight * BCE + focal_weight * focal (medvision.losses).
    parser.add_argument("--dice-weight", type=float, metavar="W", help="Dice term weight (presets: 0.5)")
    parser.add_argument("--bce-weight", type=float, metavar="W", help="BCE term weight (presets: 0.3)")
    parser.add_argument("--focal-weight", type=float, metavar="W", help="focal term weight (presets: 0.2)")
    parser.add_argument(
        "--distill-from",
        metavar="CKPT",
        help="also learn this checkpoint's probabilities (e.g. an ensemble's), trained on no held-out case",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        metavar="W",
        help="weight of the teacher's probabilities in the loss, against 1 - W for the labels (default 0.5)",
    )
    parser.add_argument(
        "--distill-loss",
        choices=DISTILL_LOSSES,
        help="the teacher's term: the run's own loss (combined, default) or binary cross-entropy alone (bce)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with every given flag applied (ValueError for invalid combinations)."""
    overrides = {field: getattr(args, dest) for dest, field in OVERRIDES.items()}
    if overrides["patch_size"] is not None:
        overrides["patch_size"] = tuple(overrides["patch_size"])
    if args.resume:
        from medvision.train.run import resume_config

        return resume_config(args.run_dir, overrides)
    return TrainConfig.from_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from medvision.errors import MedVisionError
    from medvision.train.run import run_training  # lazy: torch import only when training

    try:
        config = config_from_args(args)
    except ValueError as error:
        raise MedVisionError(f"invalid training settings: {error}") from error
    try:
        state = run_training(
            config,
            args.run_dir,
            args.data,
            resume=args.resume,
            init_from=args.init_from,
            prepare_workers=args.prepare_workers,
        )
    except OSError as error:  # a full disk, a folder without permission: the run's status says failed
        raise MedVisionError(f"training failed: {error}") from error
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
        print(f"training {state}: {args.run_dir}")
    return 0
