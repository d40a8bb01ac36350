"""`predict FOLDER -o OUTPUT_FOLDER/`: every case or study in FOLDER, one label file each.

Each subfolder or .zip of FOLDER is one item (a BraTS case folder, a zipped case, a DICOM study); a
FOLDER that is itself one case, or one DICOM study split into series folders (every series' files name
the same study), is one item. Outputs are ``OUTPUT_FOLDER/<item name>.nii.gz``, written atomically, so
a run stopped half way is resumed by running it again: items whose output exists are skipped. A broken
item is reported in one line and the run goes on; the failures are listed at the end and the exit status
is 1 when there were any. One model is loaded for the whole batch.

Many GPUs or machines: start the same command with torchrun (``torchrun --nproc_per_node=N -m medvision
predict FOLDER -o OUT/``, or with ``--nnodes``/``--rdzv-endpoint`` over machines sharing OUT). Rank r of
W takes items r, r + W, r + 2W, ... of the name-ordered list, on GPU LOCAL_RANK where there are GPUs
(on a CPU each process gets its share of the cores); no process waits for another, since the outputs
are separate files written atomically. Each rank prints its own lines and summary, prefixed by its rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.confinement import Confinement
from medvision.data.case import MODALITIES
from medvision.errors import InputDataError, MedVisionError

__all__ = ["Shard", "batch_items", "is_batch", "run_batch", "shard_from_env"]

# Options that name one file (or one series) and so make no sense for many cases at once.
_SINGLE_CASE_OPTIONS = ("dicom_seg", "probabilities", "uncertainty", "report", *MODALITIES)


def is_batch(args: argparse.Namespace) -> bool:
    """``-o`` names a folder: it ends with a path separator or already is one."""
    text = str(args.output)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def _first_dicom_study_uid(folder: Path, within: Confinement) -> str | None:
    """The StudyInstanceUID of the first DICOM file under ``folder`` (one header read), else None."""
    import pydicom

    from medvision.data.sniff import sniff

    for root, _dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or sniff(path, within=within) != "dicom":
                continue
            within.check(path)
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            return str(header.get("StudyInstanceUID", "")) or None
    return None


def _is_one_study(folder: Path, children: list[Path], within: Confinement) -> bool:
    """True when ``folder``'s subfolders are the series of one DICOM study (BRAINIX/DICOM/{FLAIR,T1,...})."""
    from medvision.dicom import is_dicom_study

    if not children or not all(c.is_dir() and is_dicom_study(c) for c in children):
        return False
    uids = {_first_dicom_study_uid(c, within) for c in children}
    return len(uids) == 1 and None not in uids


def batch_items(folder: Path) -> list[Path]:
    """The cases/studies of ``folder`` in name order (see the module docstring)."""
    from medvision.data.readers import list_case_sources

    within = Confinement.around(folder)
    within.check(folder)
    if not folder.is_dir():
        raise InputDataError(folder, "a batch (-o ending with /) needs a folder of cases or studies as INPUT")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    children = [folder / n for n in names if (folder / n).is_dir() or n.lower().endswith(".zip")]
    if _is_one_study(folder, children, within):
        return [folder]
    if not children or any(r.path == folder for r in _quiet_sources(list_case_sources, folder)):
        return [folder]  # the folder is one case itself
    return children


def _quiet_sources(list_case_sources: Callable[..., list], folder: Path) -> list:
    try:
        return list_case_sources(folder, allow_missing=True)
    except MedVisionError:
        return []


def _output_name(item: Path) -> str:
    name = item.name[: -len(".zip")] if item.name.lower().endswith(".zip") else item.name
    return f"{name}.nii.gz"


def _check_batch_args(args: argparse.Namespace) -> None:
    given = [f"--{o.replace('_', '-')}" for o in _SINGLE_CASE_OPTIONS if getattr(args, o, None) is not None]
    if given:
        raise InputDataError(
            args.output, f"{', '.join(given)} name one file; not usable with a folder output"
        )
    if args.input is None:
        raise InputDataError(args.output, "a folder output needs INPUT, a folder of cases or studies")


class BatchShardError(MedVisionError):
    """torchrun's environment does not describe a valid share of the batch."""


@dataclass(frozen=True)
class Shard:
    """This process's part of a batch: rank ``rank`` of ``world`` (0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def prefix(self) -> str:
        return f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""

    def take(self, items: list[Path]) -> list[tuple[int, Path]]:
        """(number in the whole batch, item) of this rank's items: every ``world``-th from ``rank``."""
        return [(n, item) for n, item in enumerate(items, start=1) if (n - 1) % self.world == self.rank]


def shard_from_env(env: Mapping[str, str] = os.environ) -> Shard:
    """The shard torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) describe."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as exc:
        raise BatchShardError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise BatchShardError(f"rank {rank} of world size {world} (local {local_rank}) is not a valid shard")
    return Shard(rank, world, local_rank, max(local_world, 1))


def _place_on_device(args: argparse.Namespace, shard: Shard) -> argparse.Namespace:
    """One GPU per local rank where there are GPUs; else a share of the CPU cores per process."""
    if shard.world == 1:
        return args
    import torch

    if args.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())
        return args
    if args.threads:
        return args
    share = max(1, (os.cpu_count() or 1) // shard.local_world)
    return argparse.Namespace(**{**vars(args), "threads": share})


def run_batch(
    args: argparse.Namespace,
    predict_case: Callable[[argparse.Namespace, Any], None],
    build_predictor: Callable[[argparse.Namespace], Any],
    shard: Shard | None = None,
) -> int:
    """Predict every item of ``args.input`` (this rank's share under torchrun) into the folder
    ``args.output``; 1 when any item failed."""
    _check_batch_args(args)
    shard = shard or shard_from_env()
    out_dir = Path(args.output)
    items = batch_items(Path(args.input))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = _place_on_device(args, shard)
    predictor = build_predictor(args)
    failures: list[str] = []
    done = skipped = 0
    start = time.perf_counter()
    tag = shard.prefix
    for number, item in shard.take(items):
        output = out_dir / _output_name(item)
        if output.exists():
            print(f"{tag}[{number}/{len(items)}] {item.name}: {output} exists, skipped")
            skipped += 1
            continue
        print(f"{tag}[{number}/{len(items)}] {item.name}")
        one = argparse.Namespace(**{**vars(args), "input": item, "output": output})
        try:
            predict_case(one, predictor)
            done += 1
        except MedVisionError as exc:  # one broken case must not stop the others
            message = " ".join(str(exc).split())
            print(f"{tag}  failed: {message}", file=sys.stderr)
            failures.append(f"{item.name}: {message}")
    print(
        f"{tag}batch: {done} predicted, {skipped} skipped (already done), {len(failures)} failed, "
        f"{time.perf_counter() - start:.1f} s"
    )
    for line in failures:
        print(f"{tag}failed: {line}", file=sys.stderr)
    return 1 if failures else 0
