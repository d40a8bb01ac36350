"""Benchmark: MC-dropout uncertainty of the shipped default model on the real case, one forward per pass (the
default) vs several passes stacked into one forward.

    python bench/mc_dropout.py [--samples 6] [--rounds 2] [--note TEXT] [--no-record] [--under-load]

``Predictor.predict_volume(case, mc_samples=N)`` on BraTS2021_00006 (240x240x155): N dropout passes over
every brain slice, on PyTorch (the ONNX export has dropout folded away). "stacked" sends up to
``--stacked-slices`` slices (several passes of one batch) through the network at once (sets
``forward.MC_SLICES_PER_FORWARD``); "one per pass" sets that bound to 1, the engine's default. Rounds
alternate the two ways so that background load hits both alike; medians and their ratio are printed and
appended to bench/RESULTS.md with the CPU model. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
CHECKPOINT = ROOT / "checkpoints" / "default.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=6, help="MC passes (the Predict page's default: 6)")
    parser.add_argument("--rounds", type=int, default=2, help="timed volumes per way")
    parser.add_argument("--stacked-slices", type=int, default=48, help="slices per forward when stacked")
    from bench_report import add_report_flags

    add_report_flags(parser)
    args = parser.parse_args()
    if not REAL_CASE.is_dir():
        raise SystemExit("needs ../shared/data/brats2021_00006")
    from bench_report import Reporter, finish_from_args, machine_calibration

    from medvision.data.readers import load_case
    from medvision.inference import Predictor, forward
    from medvision.precision import cpu_kind

    calibration, load_before = machine_calibration(), os.getloadavg()
    case = load_case(REAL_CASE)
    predictor = Predictor(CHECKPOINT, device="cpu")
    default_bound = forward.MC_SLICES_PER_FORWARD
    ways = {"stacked": args.stacked_slices, "one per pass": 1}
    times: dict[str, list[float]] = {name: [] for name in ways}
    predictor.predict_volume(case, mc_samples=2, seed=0)  # warm-up: threads, allocator, prepared case
    for _ in range(args.rounds):
        for name, bound in ways.items():
            forward.MC_SLICES_PER_FORWARD = bound
            predictor.clear_cache()
            start = time.perf_counter()
            predictor.predict_volume(case, mc_samples=args.samples, seed=0)
            times[name].append(time.perf_counter() - start)
    forward.MC_SLICES_PER_FORWARD = default_bound

    report = Reporter()
    report(f"- CPU: {cpu_kind()}; predictor: {predictor.describe()}")
    report(
        f"- what: MC dropout, {args.samples} passes over BraTS2021_00006 (240x240x155, its brain crop), "
        f"{args.rounds} rounds per way, alternating"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        bound = ways[name]
        shown = ", ".join(f"{x:.1f}" for x in t)
        report(f"- {name} (at most {bound} slices per forward): median {medians[name]:.1f} s ({shown})")
    ratio = medians["stacked"] / medians["one per pass"]
    report(f"- ratio: stacked / one per pass = {ratio:.2f} (above 1: stacking is slower)")
    finish_from_args(
        "mc_dropout (bench/mc_dropout.py)",
        report,
        args,
        calibration=calibration,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
