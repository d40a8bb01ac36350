"""CPU options side by side: is the default ("auto") the fastest measured option on the CPU at hand?

    python bench/cpu_options.py [--train-steps N] [--rounds N] [--no-infer] [--no-train] [--no-record]

Training: the ``demo`` preset (base 16, batch 8, 128x128 crops, light augmentation, cosine schedule) through
the real ``Trainer.train_step`` on a small phantom store, with each precision / memory-format option:
what ``--amp auto`` picks here, fp32 with and without channels_last, and bf16 autocast + channels_last.
Inference: ``Predictor.predict_volume`` of the shipped default model on the real case BraTS2021_00006 (a
phantom where it is missing) with the default options and with each backend / precision / batch option.

Rounds are interleaved (option A, B, C, A, B, C, ...) so background load hits every option alike; medians
are reported with the ratio to the default. The CPU model and whether it runs bf16 natively are printed
and recorded: the answer differs between CPU kinds (AMX vs AVX2 only), which is why "auto" decides at run
time (medvision/precision.py). Figures are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, machine_calibration  # noqa: E402

from medvision.data.readers import load_case  # noqa: E402
from medvision.data.store import SliceStore, prepare_store  # noqa: E402
from medvision.data.synthetic import make_phantom, write_cohort  # noqa: E402
from medvision.inference import Predictor  # noqa: E402
from medvision.precision import AMP_NAMES, autocast_dtype, cpu_has_native_bf16, cpu_kind  # noqa: E402
from medvision.train.config import TrainConfig  # noqa: E402
from medvision.train.trainer import Trainer  # noqa: E402

REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
CPU = torch.device("cpu")
# (label, TrainConfig overrides); the first is what the demo preset does by default here.
TRAIN_OPTIONS: list[tuple[str, dict]] = [
    ("default: amp auto + channels_last", {"amp": "auto", "channels_last": True}),
    ("fp32 + channels_last", {"amp": "off", "channels_last": True}),
    ("fp32, contiguous (NCHW)", {"amp": "off", "channels_last": False}),
    ("bf16 autocast + channels_last", {"amp": "bf16", "channels_last": True}),
]
# (label, Predictor keyword options); the first is the default.
INFER_OPTIONS: list[tuple[str, dict]] = [
    ("default (auto)", {}),
    ("torch fp32", {"backend": "torch", "dtype": "float32"}),
    ("torch bf16 autocast", {"backend": "torch", "dtype": "bfloat16"}),
    ("onnx fp32, batch 4", {"backend": "onnx", "dtype": "float32", "batch_size": 4}),
    ("onnx fp32, batch 8", {"backend": "onnx", "dtype": "float32", "batch_size": 8}),
    ("onnx fp32, batch 16", {"backend": "onnx", "dtype": "float32", "batch_size": 16}),
]


def median_rates(samples: dict[str, list[float]]) -> dict[str, float]:
    return {label: statistics.median(values) for label, values in samples.items()}


def table(rates: dict[str, float], settings: dict[str, str], unit: str, higher_is_better: bool) -> list[str]:
    """One line per option (its median and the ratio to the default), then the verdict.

    ``settings`` says what each option resolves to on this machine: an option that resolves to the same
    settings as the default is the default measured twice (their difference is the noise), so the verdict
    compares the default only with options that run differently.
    """
    default_label = next(iter(rates))
    default = rates[default_label]
    rivals = {k: v for k, v in rates.items() if k == default_label or settings[k] != settings[default_label]}
    best = max(rivals, key=rivals.get) if higher_is_better else min(rivals, key=rivals.get)
    lines = []
    for label, value in rates.items():
        ratio = value / default if higher_is_better else default / value
        mark = " (fastest)" if label == best else ""
        same = " (= the default's settings here)" if label != default_label and label not in rivals else ""
        lines.append(
            f"  - {label} [{settings[label]}]: {value:.2f} {unit}{mark}{same}; {ratio:.2f}x the default"
        )
    if best == default_label:
        verdict = "the default is the fastest option"
    else:
        gain = rates[best] / default if higher_is_better else default / rates[best]
        verdict = f"the default is NOT the fastest: {best} is {gain:.2f}x faster"
    lines.append(f"  - verdict: {verdict}")
    return lines


def training_store(folder: Path) -> tuple[Path, dict[str, list[str]]]:
    write_cohort(folder / "cohort", 3, seed=0, size=(64, 160, 160), workers=1, progress=False)
    store = prepare_store(folder / "cohort", folder / "store.h5", workers=1, progress=False)
    with SliceStore(store) as s:
        ids = list(s.case_ids)
    return store, {"train": ids[:-1], "val": ids[-1:], "test": []}


def train_loop(config: TrainConfig, store: Path, run_dir: Path, splits: dict) -> Callable[[], int]:
    trainer = Trainer(config, store, run_dir, splits=splits, data_info={"path": str(store)})

    def batches() -> Iterator:
        epoch = 0
        while True:
            epoch += 1
            yield from trainer.train_slices.iterate(trainer.plan.rows(epoch))

    source = batches()

    def step() -> int:
        return int(trainer.train_step(next(source))["slices"])

    return step


def bench_training(steps: int, rounds: int, report: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="mv_cpu_options_") as tmp:
        store, splits = training_store(Path(tmp))
        loops, settings = {}, {}
        for i, (label, overrides) in enumerate(TRAIN_OPTIONS):
            config = TrainConfig.from_preset(
                "demo", device="cpu", sample_slices=0, in_memory="always", **overrides
            )
            loops[label] = train_loop(config, store, Path(tmp) / f"run{i}", splits)
            layout = "channels_last" if config.channels_last else "NCHW"
            settings[label] = f"{AMP_NAMES[autocast_dtype(config.amp, CPU)]}, {layout}"
            loops[label]()  # warm-up: first-call allocations and oneDNN kernel selection
        picked = AMP_NAMES[autocast_dtype("auto", CPU)]
        demo = TrainConfig.from_preset("demo")
        report(
            f"- training, demo preset (batch {demo.batch_size}, {demo.patch_size[0]}x{demo.patch_size[1]} "
            f"crops, base {demo.base_filters}), {steps} steps x {rounds} rounds interleaved; "
            f"amp auto picks {picked} here"
        )
        samples: dict[str, list[float]] = {label: [] for label in loops}
        for _ in range(rounds):
            for label, step in loops.items():
                start = time.perf_counter()
                slices = sum(step() for _ in range(steps))
                samples[label].append(slices / (time.perf_counter() - start))
        for line in table(median_rates(samples), settings, "slices/s", higher_is_better=True):
            report(line)


def bench_inference(rounds: int, report: Callable[[str], None]) -> None:
    if (REAL_CASE / "BraTS2021_00006_flair.nii.gz").exists():
        case, what = load_case(REAL_CASE), f"real case {REAL_CASE.name}"
    else:
        case, what = make_phantom("Synth_bench", 0, (155, 240, 240)), "phantom 155x240x240"
    with tempfile.TemporaryDirectory(prefix="mv_cpu_onnx_") as tmp:
        predictors = {}
        for label, options in INFER_OPTIONS:
            predictors[label] = Predictor(
                None, device="cpu", onnx_cache_dir=Path(tmp), cache_bytes=0, **options
            )
        default = predictors[INFER_OPTIONS[0][0]]
        report(
            f"- inference, shipped default model on the {what} {case.shape}; "
            f"default runs as: {default.describe()}"
        )
        samples: dict[str, list[float]] = {label: [] for label in predictors}
        once = set()
        for label, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict_volume(case)  # warm-up
            if predictor.amp_dtype == torch.bfloat16 and not cpu_has_native_bf16():
                # Emulated bf16 takes minutes per volume: its warm-up run is its one sample.
                samples[label].append(time.perf_counter() - start)
                once.add(label)
        for _ in range(rounds):
            for label, predictor in predictors.items():
                if label in once:
                    continue
                start = time.perf_counter()
                predictor.predict_volume(case)
                samples[label].append(time.perf_counter() - start)
        settings = {
            label: f"{p.backend}, {p.precision}, batch {p.batch_size}" for label, p in predictors.items()
        }
        for line in table(median_rates(samples), settings, "s per volume", higher_is_better=False):
            report(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=12, help="timed steps per option and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-infer", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--note", default="", help="a remark recorded with the figures")
    args = parser.parse_args()
    report = Reporter()
    lines = report.lines

    load_before = os.getloadavg()
    report(f"- CPU: {cpu_kind()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    report(f"- load average before {load_before[0]:.2f}; SHA-256 calibration {machine_calibration():.2f} s")
    if not args.no_train:
        bench_training(args.train_steps, args.rounds, report)
    if not args.no_infer:
        bench_inference(args.rounds, report)
    report(f"- load average after {os.getloadavg()[0]:.2f}")
    if args.note:
        report(f"- note: {args.note}")
    if not args.no_record:
        append_results("CPU options (bench/cpu_options.py)", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
