"""Seconds from pressing "Launch training" on the Train page to the first loss it can show.

    python bench/first_loss.py [--rounds N] [--no-record] [--note TEXT]

The Train page starts `python -m medvision train` through `medvision.app_support.launcher.start_training`
with the form's defaults (the `demo` preset) and draws whatever `metrics.jsonl` holds. This script does the
same on the app's default demo cohort size (a few phantom cases prepared once into a store) and times the
launch until the first "step" record appears, for the default `--amp auto` and for `--amp bf16` (the old
default, emulated and slow on CPUs without native bf16), interleaved round by round. Each run is stopped as
soon as its first loss is seen. Medians and the ratio go to bench/RESULTS.md with the CPU kind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, machine_calibration  # noqa: E402

from medvision.app_support import launcher  # noqa: E402
from medvision.app_support.workspace import AppSettings  # noqa: E402
from medvision.data.store import prepare_store  # noqa: E402
from medvision.data.synthetic import write_cohort  # noqa: E402
from medvision.precision import cpu_kind  # noqa: E402
from medvision.train.config import TrainConfig  # noqa: E402
from medvision.train.rundir import read_metrics  # noqa: E402

GOAL_S = 10.0
TIMEOUT_S = 600.0


def seconds_to_first_loss(store: Path, runs: Path, name: str, amp: str) -> tuple[float, float]:
    """Launch a demo-preset run as the Train page does; (seconds to the first step record, its loss)."""
    config = TrainConfig.from_preset("demo", amp=amp)
    start = time.perf_counter()
    started = launcher.start_training(store, runs, name, config)
    try:
        while time.perf_counter() - start < TIMEOUT_S:
            steps = read_metrics(started.run_dir, kind="step")
            if steps:
                return time.perf_counter() - start, float(steps[0]["loss"])
            if launcher.exit_code(started.run_dir) is not None:
                raise SystemExit(
                    f"{name}: training ended before its first step:\n"
                    + launcher.launch_log_tail(started.run_dir)
                )
            time.sleep(0.05)
        raise SystemExit(f"{name}: no loss within {TIMEOUT_S:.0f} s")
    finally:
        launcher.stop_training(started.run_dir)
        deadline = time.perf_counter() + 60
        while launcher.is_busy(started.run_dir) and time.perf_counter() < deadline:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=4, help="phantom cases in the store")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    report = Reporter()
    size = AppSettings.__dataclass_fields__["demo_size"].default
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="mv_first_loss_") as tmp:
        tmp_path = Path(tmp)
        write_cohort(tmp_path / "cohort", args.cases, size=size, workers=1)
        store = prepare_store(tmp_path / "cohort", tmp_path / "store.h5", workers=1, progress=False)
        times: dict[str, list[float]] = {"auto": [], "bf16": []}
        for round_index in range(args.rounds):
            for amp in times:
                seconds, loss = seconds_to_first_loss(store, tmp_path / "runs", f"r{round_index}_{amp}", amp)
                times[amp].append(seconds)
                print(
                    f"round {round_index + 1} amp {amp}: first loss {loss:.4f} after {seconds:.2f} s",
                    flush=True,
                )

    report(
        f"- CPU: {cpu_kind()}; load average before {load_before:.2f}; "
        f"SHA-256 calibration {machine_calibration():.2f} s"
    )
    report(
        f"- what: launch of the `demo` preset as the Train page does it, to the first loss in metrics.jsonl; "
        f"store of {args.cases} phantoms of {size[0]}x{size[1]}x{size[2]}"
    )
    if args.note:
        report(f"- note: {args.note}")
    medians = {amp: statistics.median(values) for amp, values in times.items()}
    for amp, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        report(f"- `--amp {amp}`: median {medians[amp]:.2f} s to the first loss (runs: {runs})")
    report(
        f"- ratio: `--amp auto` shows its first loss {medians['bf16'] / medians['auto']:.2f}x "
        "sooner than `--amp bf16`"
    )
    met = "met" if medians["auto"] <= GOAL_S else "NOT met"
    report(f"- goal: first loss within {GOAL_S:.0f} s of the launch with the form's defaults: {met}")
    report(f"- load average after {os.getloadavg()[0]:.2f}")
    if not args.no_record:
        append_results("first_loss (bench/first_loss.py)", report.lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
