"""Whole-process `python -m medvision predict` on the real case: this tree vs an earlier revision.

    python bench/predict_process.py [--baseline-rev REV] [--rounds N] [--no-record]

What a command-line user waits for is the whole process: interpreter start, imports, reading the four
NIfTI files, model load (and the ONNX Runtime session on CPUs without native bf16), the forward passes and
writing the label file. Both sides run the same command on BraTS2021_00006 with the shipped demo model
and a warm ONNX export cache (one untimed run each first), interleaved round by round; medians and the
ratio are printed and appended to bench/RESULTS.md with the CPU kind. The baseline is a `git worktree`
of ``--baseline-rev`` in a temporary folder, run with this tree's virtual environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, machine_calibration  # noqa: E402

from medvision.precision import cpu_kind  # noqa: E402

REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"


def predict_seconds(tree: Path, out: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall time of one whole `python -m medvision predict` run in ``tree``, and its summary line."""
    command = [sys.executable, "-m", "medvision", "predict", str(REAL_CASE), "-o", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: predict failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, done.stdout.splitlines()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default="5c0390f", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if not (REAL_CASE / "BraTS2021_00006_flair.nii.gz").exists():
        raise SystemExit(f"the real case is needed: {REAL_CASE}")
    report = Reporter()
    lines = report.lines

    with tempfile.TemporaryDirectory(prefix="mv_predict_bench_") as tmp:
        tmp_path = Path(tmp)
        baseline = tmp_path / "baseline"
        add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline_rev]
        subprocess.run(add, check=True, capture_output=True)
        try:
            # Each side gets its own empty home (its ONNX export cache) and the checkout on PYTHONPATH.
            envs = {}
            for name, tree in (("this tree", ROOT), (f"baseline {args.baseline_rev}", baseline)):
                home = tmp_path / f"home-{len(envs)}"
                home.mkdir()
                envs[name] = (tree, {**os.environ, "HOME": str(home), "PYTHONPATH": str(tree)})
            report(
                f"- CPU: {cpu_kind()}; load average before {os.getloadavg()[0]:.2f}; "
                f"SHA-256 calibration {machine_calibration():.2f} s"
            )
            report(f"- command: python -m medvision predict {REAL_CASE.name} -o pred.nii.gz (the demo model)")
            samples: dict[str, list[float]] = {name: [] for name in envs}
            for name, (tree, env) in envs.items():
                _, summary = predict_seconds(tree, tmp_path / "warm.nii.gz", env)  # exports the ONNX model
                report(f"- {name}: {summary}")
            for _ in range(args.rounds):
                for name, (tree, env) in envs.items():
                    seconds, _ = predict_seconds(tree, tmp_path / "pred.nii.gz", env)
                    samples[name].append(seconds)
            medians = {name: statistics.median(values) for name, values in samples.items()}
            ours, base = medians.values()
            for name, values in samples.items():
                report(
                    f"- {name}: median {medians[name]:.2f} s whole process "
                    f"(runs: {', '.join(f'{v:.2f}' for v in values)})"
                )
            report(f"- ratio: this tree is {base / ours:.2f}x the baseline's speed")
            report(f"- load average after {os.getloadavg()[0]:.2f}")
            if args.note:
                report(f"- note: {args.note}")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                check=False,
                capture_output=True,
            )
    if not args.no_record:
        append_results("predict_process (bench/predict_process.py)", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
