"""Training throughput: slices/s of MedVision's training step vs a plain loop with the original's settings.

    python bench/train_throughput.py [--device auto|cpu|cuda] [--small] [--compile] [--store STORE]
                                     [--steps N] [--warmup N] [--batch-size N] [--rounds N] [--threads N]

Both sides train the original project's seed-size network, AttentionUNet(4, 1, 32, 4, 0.2) (7,852,061
parameters, necrotic-core target), from the same initial weights, and both are timed end to end: every
timed step includes fetching its batch.

- plain loop (the original's settings): a DataLoader over ``SliceDataset`` (shuffled, natural slice
  frequency, whole slices padded to 240x240, no augmentation unless ``--baseline-augment light``), batch 4,
  NCHW, fp16 autocast + GradScaler on CUDA and fp32 on CPU, cudnn deterministic (benchmark off), the
  original ``CombinedLoss`` and AdamW(1e-4, 1e-5). No per-step ``loss.item()``.
- ours: the ``brats`` preset's speed settings driven through the real ``Trainer``: the in-memory batch
  path of ``medvision.train.batches`` (slices held as tensors on the device, the preset's tumour
  oversampling plan), a random crop to the preset's brain-cropped 160x192 patch, the preset's "strong"
  augmentation on the device, ``Trainer.train_step`` (channels_last, bf16 autocast, fused AdamW on CUDA,
  grad clipping, cosine schedule), batch 64 (``--small``: 8). ``--compile`` adds torch.compile. The model
  is the seed-size one (the preset's own is 3 outputs and dropout 0.1), so both sides do the same network.

Steps are timed with ``torch.cuda.synchronize`` on a GPU and the wall clock on a CPU, after warm-up steps
(which also cover DataLoader start-up, cudnn autotuning and compilation). Rounds are interleaved (plain,
ours, plain, ours, ...) so background load hits both alike; medians are reported, with the ratio. The data
is a synthetic store of a few full-size (240x240x155) phantoms made in a temporary folder, or ``--store``.
Figures are appended to bench/RESULTS.md with the date, device, torch version, command and load average.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, device_name, machine_calibration, report_machine  # noqa: E402

from medvision.cpu_threads import auto_threads  # noqa: E402
from medvision.data.augment import augment_batch  # noqa: E402
from medvision.data.dataset import SliceDataset  # noqa: E402
from medvision.data.store import SliceStore, prepare_store  # noqa: E402
from medvision.data.synthetic import write_cohort  # noqa: E402
from medvision.losses import CombinedLoss  # noqa: E402
from medvision.models import AttentionUNet  # noqa: E402
from medvision.train.batches import augment_config, random_crop  # noqa: E402
from medvision.train.config import TrainConfig  # noqa: E402
from medvision.train.trainer import Trainer  # noqa: E402

SEED_MODEL = {
    "in_channels": 4,
    "out_channels": 1,
    "base_filters": 32,
    "depth": 4,
    "dropout": 0.2,
    "attention": True,
}
ORIGINAL_SLICE = (240, 240)
ORIGINAL_BATCH = 4
# Goals (one H100, end to end) and the original loop's figure measured there (DESIGN.md).
GOAL_SLICES_PER_S = 2000.0
GOAL_RATIO = 10.0
ORIGINAL_H100_SLICES_PER_S = 170.0

Batch = tuple[torch.Tensor, torch.Tensor]


# Machine description (as in infer_speed.py) ---------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Data -----------------------------------------------------------------------------------------------
def synthetic_store(folder: Path, n_cases: int, workers: int) -> Path:
    """A store of ``n_cases`` full-size phantoms (python -m medvision synth + prepare, via the APIs)."""
    write_cohort(folder / "cohort", n_cases, seed=0, workers=workers)
    return prepare_store(folder / "cohort", folder / "store.h5", workers=workers, progress=False)


def pick_cases(store_path: Path, n_cases: int | None) -> dict[str, list[str]]:
    """The first ``n_cases`` labelled cases of the store: the last one validates, the others train."""
    with SliceStore(store_path) as store:
        ids = [c for c in store.case_ids if store.has_label(c)]
    if n_cases is not None:
        ids = ids[:n_cases]
    if len(ids) < 2:
        raise SystemExit(f"{store_path}: need at least 2 labelled cases, found {len(ids)}")
    return {"train": ids[:-1], "val": ids[-1:], "test": []}


# The plain loop ---------------------------------------------------------------------------------------
def original_flags(device: torch.device) -> None:
    """The original's backend settings: cudnn deterministic, no autotuning, no TF32 matmuls."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False


def our_flags(device: torch.device) -> None:
    """What Trainer.__init__ sets for the brats preset (deterministic=False)."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class PlainLoop:
    """The original project's training loop: DataLoader -> .to(device) -> fp16 autocast -> GradScaler."""

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: SliceDataset,
        device: torch.device,
        batch_size: int,
        workers: int,
    ) -> None:
        self.device = device
        self.model = model.to(device)  # NCHW, fp32 weights
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-5)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.loss_fn = CombinedLoss(0.5, 0.3, 0.2)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),
        )
        self.batches = self._cycle()

    def _cycle(self) -> Iterator[dict]:
        while True:
            yield from self.loader

    def autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step(self) -> int:
        item = next(self.batches)
        images = item["image"].to(self.device, non_blocking=True)
        targets = item["target"].to(self.device, non_blocking=True)
        self.model.train()
        with self.autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.loss_sum += loss.detach().double()
        return images.shape[0]


# Ours -------------------------------------------------------------------------------------------------
class OurLoop:
    """Trainer.fit's inner loop without the callbacks: the plan's rows -> in-memory batch -> train_step."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=trainer.device)
        self.batches = self._cycle()

    def _cycle(self) -> Iterator[Batch]:
        epoch = 0
        while True:
            epoch += 1
            yield from self.trainer.train_slices.iterate(self.trainer.plan.rows(epoch))

    def step(self) -> int:
        info = self.trainer.train_step(next(self.batches))
        self.loss_sum += info["loss"].double()
        return int(info["slices"])

    def data_only(self) -> int:
        """The data half of a step (batch gather, crop, augmentation, layout) without the network."""
        t = self.trainer
        images, targets = next(self.batches)
        if images.shape[-2:] != t.config.patch_size:
            images, targets = random_crop(images, targets, t.config.patch_size, t.aug_generator)
        if t.augment is not None:
            images, targets = augment_batch(images, targets, t.augment, t.aug_generator)
        images.contiguous(memory_format=t.memory_format)
        return images.shape[0]


def timed_steps(step: Callable[[], int], n: int, device: torch.device) -> tuple[float, int]:
    """(seconds, slices) of ``n`` calls of ``step``, synchronised on the GPU."""
    sync(device)
    start = time.perf_counter()
    slices = sum(step() for _ in range(n))
    sync(device)
    return time.perf_counter() - start, slices


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1024**3


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# Main -------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--small",
        action="store_true",
        help="CPU-friendly: 3 synthetic cases, ours at batch 8, few steps and rounds",
    )
    parser.add_argument("--store", type=Path, default=None, help="a prepared store (default: synthetic)")
    parser.add_argument(
        "--cases",
        type=int,
        default=None,
        help="cases to synthesise or to take from --store (default 4, --small 3; store: 16)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps of ours per round")
    parser.add_argument("--baseline-steps", type=int, default=None, help="timed steps of the plain loop")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of each side before timing")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median)")
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default: brats preset's 64)")
    parser.add_argument("--baseline-batch-size", type=int, default=ORIGINAL_BATCH)
    parser.add_argument(
        "--patch",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="ours: training crop (default: brats preset's 160 192)",
    )
    parser.add_argument(
        "--amp",
        default="bf16",
        choices=("auto", "bf16", "fp16", "off"),
        help="ours (default bf16: the preset's choice on an H100, and 3x fp32 on these CPUs)",
    )
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile (as the brats preset)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="plain loop's DataLoader workers (default: 4 on CUDA, 0 on CPU)",
    )
    parser.add_argument(
        "--baseline-augment",
        default="none",
        choices=("none", "light"),
        help="per-item augmentation in the plain loop's Dataset (default none)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: CPU cores not busy with other work; GPU: torch's)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--note", default="", help="a remark recorded with the figures")
    return parser.parse_args()


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class Settings:
    """The run's sizes: the given options, else defaults for a GPU, a CPU or ``--small``."""

    threads: int | None
    steps: int  # timed steps of ours per round
    base_steps: int  # timed steps of the plain loop per round
    warmup: int
    rounds: int
    batch: int  # ours
    workers: int  # the plain loop's DataLoader workers

    @classmethod
    def from_args(cls, args: argparse.Namespace, gpu: bool) -> Settings:
        small = args.small
        cores = os.cpu_count() or 1
        return cls(
            threads=args.threads or (None if gpu else auto_threads(cores)),
            steps=args.steps or (8 if small else (50 if gpu else 10)),
            base_steps=args.baseline_steps or (6 if small else (200 if gpu else 10)),
            warmup=args.warmup if args.warmup is not None else (2 if small else (10 if gpu else 2)),
            rounds=args.rounds or (2 if small else 3),
            batch=args.batch_size or (8 if small else 64),
            workers=args.workers if args.workers is not None else (min(4, cores) if gpu else 0),
        )


def bench_data(args: argparse.Namespace, tmp_path: Path) -> tuple[Path, dict[str, list[str]], str]:
    """(store, case splits, description): ``--store``, else a synthetic store made in ``tmp_path``."""
    if args.store is None:
        n_cases = args.cases or (3 if args.small else 4)
        start = time.perf_counter()
        store_path = synthetic_store(tmp_path / "data", n_cases, workers=min(4, os.cpu_count() or 1))
        data_desc = (
            f"synthetic store of {n_cases} full-size phantoms (155x240x240), made in "
            f"{time.perf_counter() - start:.0f} s"
        )
    else:
        store_path = args.store
        n_cases = args.cases or 16
        data_desc = f"store {store_path}"
    splits = pick_cases(store_path, n_cases)
    data_desc += f"; {len(splits['train'])} training cases, validation case {splits['val'][0]}"
    return store_path, splits, data_desc


def build_trainer(
    args: argparse.Namespace,
    settings: Settings,
    device: torch.device,
    store_path: Path,
    splits: dict[str, list[str]],
    run_dir: Path,
) -> tuple[Trainer, float]:
    """Ours: the brats preset's speed settings on the seed-size model, through the real Trainer.

    Returns the trainer and its setup time (model + store into memory)."""
    overrides = {
        "target": "necrotic",
        "dropout": SEED_MODEL["dropout"],
        "batch_size": settings.batch,
        "amp": args.amp,
        "compile": args.compile,
        "device": device.type,
        "threads": settings.threads,
        "in_memory": "always",
        "sample_slices": 0,
        "workers": 0,
    }
    if args.patch:
        overrides["patch_size"] = tuple(args.patch)
    config = TrainConfig.from_preset("brats", **overrides)
    our_flags(device)
    start = time.perf_counter()
    trainer = Trainer(config, store_path, run_dir, splits=splits, data_info={"path": str(store_path)})
    sync(device)
    setup_s = time.perf_counter() - start
    if trainer.model.config != SEED_MODEL:
        raise SystemExit(f"ours is not the seed-size model: {trainer.model.config}")
    return trainer, setup_s


def build_plain_loop(
    args: argparse.Namespace,
    trainer: Trainer,
    store_path: Path,
    splits: dict[str, list[str]],
    device: torch.device,
    workers: int,
) -> PlainLoop:
    """The plain loop: a copy of the same initial weights, NCHW."""
    base_model = AttentionUNet(**SEED_MODEL)
    base_model.load_state_dict(copy.deepcopy(trainer.model.state_dict()))
    base_model = base_model.to(memory_format=torch.contiguous_format)
    base_augment = None if args.baseline_augment == "none" else augment_config(args.baseline_augment)
    dataset = SliceDataset(
        store_path,
        splits["train"],
        target="necrotic",
        patch_size=ORIGINAL_SLICE,
        neighbours=0,
        tumour_fraction=None,
        augment=base_augment,
    )
    return PlainLoop(base_model, dataset, device, args.baseline_batch_size, workers)


def report_setup(
    args: argparse.Namespace,
    settings: Settings,
    trainer: Trainer,
    setup_s: float,
    gpu: bool,
    report: Reporter,
) -> None:
    config = trainer.config
    n_params = sum(p.numel() for p in trainer.model.parameters())
    report(f"- model: AttentionUNet(4, 1, 32, 4, 0.2), {n_params:,} parameters, same initial weights")
    report(
        f"- plain loop: batch {args.baseline_batch_size}, whole {ORIGINAL_SLICE[0]}x{ORIGINAL_SLICE[1]} "
        f"slices, NCHW, {'fp16 autocast + GradScaler' if gpu else 'fp32'}, cudnn deterministic, "
        f"DataLoader over SliceDataset ({settings.workers} workers, shuffled, augmentation "
        f"{args.baseline_augment}), CombinedLoss, AdamW(1e-4, wd 1e-5)"
    )
    amp_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
    report(
        f"- ours: Trainer.train_step, brats preset speed settings: batch {settings.batch}, "
        f"{config.patch_size[0]}x{config.patch_size[1]} crops of slices held at "
        f"{trainer.load_size[0]}x{trainer.load_size[1]} (brain-cropped) in memory "
        f"({type(trainer.train_slices).__name__}), tumour fraction {config.tumour_fraction}, "
        f"augmentation {config.augment}, {amp_name} autocast, channels_last, "
        f"{'fused ' if gpu else ''}AdamW, grad clip {config.grad_clip}, "
        f"{'torch.compile' if config.compile else 'no compile'}; setup (model + store into memory) "
        f"{setup_s:.1f} s"
    )
    chosen = "given" if args.threads else ("torch's default" if gpu else "auto: cores not busy elsewhere")
    report(
        f"- timing: {settings.warmup} warm-up steps per side, then {settings.rounds} interleaved rounds of "
        f"{settings.base_steps} plain-loop steps and {settings.steps} steps of ours; torch threads "
        f"{torch.get_num_threads()} ({chosen}), both sides"
    )


@dataclass
class Rates:
    """Slices/s per timed round, and peak GPU memory (GiB) of each side."""

    base: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    data: list[float] = field(default_factory=list)
    base_peak: float = 0.0
    our_peak: float = 0.0


def time_both(
    plain: PlainLoop, ours: OurLoop, settings: Settings, device: torch.device, report: Reporter
) -> Rates:
    """Warm-up, then interleaved rounds (plain, ours, plain, ...), then ours' data path alone."""
    # Warm-up (DataLoader workers, cudnn autotuning, oneDNN kernels, compilation).
    original_flags(device)
    warm_base, _ = timed_steps(plain.step, settings.warmup, device)
    our_flags(device)
    warm_ours, _ = timed_steps(ours.step, settings.warmup, device)
    report(f"- warm-up: plain loop {warm_base:.1f} s, ours {warm_ours:.1f} s")

    rates = Rates()
    for _ in range(settings.rounds):
        original_flags(device)
        reset_peak(device)
        seconds, slices = timed_steps(plain.step, settings.base_steps, device)
        rates.base.append(slices / seconds)
        rates.base_peak = max(rates.base_peak, peak_memory_gib(device) or 0.0)
        our_flags(device)
        reset_peak(device)
        seconds, slices = timed_steps(ours.step, settings.steps, device)
        rates.ours.append(slices / seconds)
        rates.our_peak = max(rates.our_peak, peak_memory_gib(device) or 0.0)
    seconds, slices = timed_steps(ours.data_only, settings.steps, device)
    rates.data.append(slices / seconds)
    for loop in (plain, ours):
        if not torch.isfinite(loop.loss_sum):
            raise SystemExit("a loss was not finite")
    return rates


def rates_text(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def report_rates(
    args: argparse.Namespace, settings: Settings, rates: Rates, gpu: bool, report: Reporter
) -> tuple[float, float]:
    """Reports the medians; returns (ours, plain loop) in slices/s."""
    base, our = statistics.median(rates.base), statistics.median(rates.ours)
    report(
        f"- plain loop (original settings): {base:.1f} slices/s (median of {len(rates.base)}: "
        f"{rates_text(rates.base)}); {1000 * args.baseline_batch_size / base:.0f} ms/step"
    )
    report(
        f"- ours: {our:.1f} slices/s (median of {len(rates.ours)}: {rates_text(rates.ours)}); "
        f"{1000 * settings.batch / our:.0f} ms/step"
    )
    report(f"- ratio ours / plain loop: {our / base:.1f}x")
    report(
        f"- ours, data path alone (gather + crop + augmentation, no network): {rates.data[0]:.0f} slices/s"
    )
    if gpu:
        report(f"- peak GPU memory: plain loop {rates.base_peak:.2f} GiB, ours {rates.our_peak:.2f} GiB")
    return our, base


def report_goals(our: float, base: float, name: str, gpu: bool, report: Reporter) -> None:
    """The goals are set for one H100; elsewhere they are stated as not measured."""
    ratio = our / base
    if gpu and "H100" in name:
        goal_1 = "meets" if our >= GOAL_SLICES_PER_S else "misses"
        goal_2 = "meets" if ratio >= GOAL_RATIO else "misses"
        report(
            f"- goal on one H100, ours >= {GOAL_SLICES_PER_S:,.0f} slices/s end to end: {our:.0f} ({goal_1})"
        )
        report(
            f"- goal on one H100, >= {GOAL_RATIO:.0f}x the original settings: {ratio:.1f}x ({goal_2}); "
            f"the original loop measured {ORIGINAL_H100_SLICES_PER_S:.0f} slices/s there, here {base:.0f}"
        )
        return
    where = f"this run is on {name}" if gpu else "this run is on the CPU"
    report(
        f"- goal on one H100, ours >= {GOAL_SLICES_PER_S:,.0f} slices/s end to end: not measured ({where})"
    )
    report(
        f"- goal on one H100, >= {GOAL_RATIO:.0f}x the original settings (original loop measured "
        f"{ORIGINAL_H100_SLICES_PER_S:.0f} slices/s there): not measured ({where})"
    )


def main() -> int:
    args = parse_args()
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    settings = Settings.from_args(args, gpu)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    load_before = os.getloadavg()
    calibration = machine_calibration()
    report = Reporter()

    with tempfile.TemporaryDirectory(prefix="mv_train_bench_") as tmp:
        tmp_path = Path(tmp)
        store_path, splits, data_desc = bench_data(args, tmp_path)
        trainer, setup_s = build_trainer(args, settings, device, store_path, splits, tmp_path / "run")
        ours = OurLoop(trainer)
        plain = build_plain_loop(args, trainer, store_path, splits, device, settings.workers)
        report(f"- data: {data_desc}")
        report_setup(args, settings, trainer, setup_s, gpu, report)
        rates = time_both(plain, ours, settings, device, report)

    our, base = report_rates(args, settings, rates, gpu, report)
    name = device_name(device)
    report_goals(our, base, name, gpu, report)
    report_machine(calibration, load_before, report)
    if not args.no_record:
        path = append_results(
            "train_throughput",
            [
                f"- device: {name}",
                f"- torch {torch.__version__}, Python {platform.python_version()}",
                *report.lines,
                *([f"- note: {args.note}"] if args.note else []),
            ],
        )
        print(f"appended to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
