"""`python -m medvision <command>`: one sub-command per module in medvision.commands.

Each command module exposes ``register(subparsers)`` that adds its parser and sets ``func``.
Errors MedVision raises on purpose become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medvision.errors import MedVisionError

COMMANDS = ("synth", "prepare", "eda", "folds", "train", "evaluate", "predict")


def build_parser(commands: tuple[str, ...] = COMMANDS) -> argparse.ArgumentParser:
    """The parser with ``commands`` registered (each imports its module, so fewer start faster)."""
    parser = argparse.ArgumentParser(
        prog="python -m medvision",
        description="MedVision: brain-tumour segmentation on MRI (research demo, not for clinical use).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"medvision.commands.{name}").register(subparsers)
    return parser


def _commands_needed(argv: list[str]) -> tuple[str, ...]:
    """Only the command named on the line: importing all six (scipy, pandas, h5py...) cost ~2 s of a
    `predict` run. Help, a typo or no command get the full parser and its usage message."""
    named = next((a for a in argv if not a.startswith("-")), None)
    return (named,) if named in COMMANDS else COMMANDS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_commands_needed(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
    except MedVisionError as error:
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
