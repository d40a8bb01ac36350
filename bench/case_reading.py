"""Benchmark: reading an uploaded case and preparing it for the network, this checkout against a revision.

    python bench/case_reading.py [--base REV] [--rounds 5] [--note TEXT] [--no-record] [--under-load]

What the Predict page does on the server between an upload and its first slice prediction, on the real
case BraTS2021_00006 (4 modalities + label, 240x240x155, gzip): ``read_brats_folder`` (inflate, check,
reorder axes, map labels), ``case_content_hash`` (the result cache's key) and ``prepare_case_image``
(brain mask, crop, z-score). ``medvision`` of the revision ``--base`` (default HEAD) is taken with
``git archive`` into a temporary folder; each round times both in fresh processes, interleaved (base,
this checkout, base, ...), so background load hits both alike. A fresh process meets the arrays the way a
server does for each upload: arrays this large are fresh memory from the system every time.

Prints the median per step and the ratio base / this checkout; appends a section to bench/RESULTS.md.
Run it on a quiet machine (``uptime`` load below 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
STEPS = ("read", "hash", "prepare")

# Run in a fresh interpreter with the medvision under test first on sys.path.
TIMED = """
import json, sys, time
from medvision.data.readers import read_brats_folder
from medvision.inference.geometry import prepare_case_image
from medvision.prediction_cache import case_content_hash
start = time.perf_counter()
case = read_brats_folder(sys.argv[1])
read = time.perf_counter()
case_content_hash(case)
hashed = time.perf_counter()
prepare_case_image(case.image, 16)
prepared = time.perf_counter()
print(json.dumps({"read": read - start, "hash": hashed - read, "prepare": prepared - hashed}))
"""


def _export(revision: str, into: Path) -> str:
    """``medvision`` of ``revision`` unpacked under ``into``; returns the commit it resolved to."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "medvision"], cwd=ROOT, check=True, capture_output=True
    )
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def _time_once(package_root: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    done = subprocess.run(
        [sys.executable, "-c", TIMED, str(REAL_CASE)], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _working_tree_state() -> str:
    changed = subprocess.run(
        ["git", "status", "--porcelain", "medvision"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return f"{head} with uncommitted changes in medvision/" if changed else head


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against (default HEAD)")
    parser.add_argument("--rounds", type=int, default=5)
    from bench_report import add_report_flags

    add_report_flags(parser)
    args = parser.parse_args()
    if not REAL_CASE.is_dir():
        raise SystemExit(f"needs the real case in {REAL_CASE}")
    from bench_report import Reporter, finish_from_args, machine_calibration

    from medvision.precision import cpu_kind

    calibration, load_before = machine_calibration(), os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="case_reading_") as tmp:
        base_commit = _export(args.base, Path(tmp))
        for _ in range(args.rounds):
            runs["base"].append(_time_once(Path(tmp)))
            runs["this"].append(_time_once(ROOT))
    report = Reporter()
    report(f"- CPU: {cpu_kind()}")
    report(
        f"- what: read_brats_folder + case_content_hash + prepare_case_image of BraTS2021_00006 "
        f"(4 modalities + label, 240x240x155, gzip), {args.rounds} fresh processes each, interleaved"
    )
    report(f"- base: {base_commit}; this checkout: {_working_tree_state()}")
    for step in (*STEPS, "total"):
        base, this = (
            statistics.median(sum(r.values()) if step == "total" else r[step] for r in runs[name])
            for name in ("base", "this")
        )
        report(f"- {step}: base median {base * 1000:.0f} ms, this {this * 1000:.0f} ms; {base / this:.2f}x")
    finish_from_args(
        "case_reading (bench/case_reading.py)", report, args, calibration=calibration, load_before=load_before
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
