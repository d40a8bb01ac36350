"""Benchmark: a whole DICOM study (BRAINIX) to a segmentation and a DICOM-SEG, as a user runs it, with the
default brain extractor (deepbet) against the classical recipe and our phantom-trained network.

    python bench/dicom_end_to_end.py [--rounds 2] [--note TEXT] [--no-record] [--under-load]

Each run is one ``python -m medvision predict ../shared/data/brainix/DICOM -o seg.nii.gz --dicom-seg seg.dcm
--brain-extractor WAY`` process (start-up, imports, reading, preprocessing, brain extraction, the model,
both writes), timed from outside; the ONNX export is made once before the timed rounds (a user's second
run finds it cached). Rounds alternate the ways; medians, their ratio and each way's WT Dice against
BRAINIX's FLAIR_ROI go to bench/RESULTS.md with the CPU model. Goal: <= 20 s on 2 CPU cores. Run it on a
quiet machine.
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

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BRAINIX = ROOT.parent / "shared" / "data" / "brainix"
WAYS = ("network", "classical", "phantom")


def _run(way: str, out: Path, cache: Path) -> float:
    command = [
        sys.executable, "-m", "medvision", "predict", str(BRAINIX / "DICOM"),
        "-o", str(out / f"{way}.nii.gz"), "--dicom-seg", str(out / f"{way}.dcm"),
        "--brain-extractor", way, "--cache-dir", str(cache),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"predict --brain-extractor {way} failed:\n{done.stderr[-2000:]}")
    return seconds


def wt_dice(label_file: Path) -> float:
    """WT Dice of a written label against BRAINIX's ROI (reoriented onto the label's axes)."""
    written = nib.load(label_file)
    roi_image = nib.load(BRAINIX / "ROI.nii.gz")
    turn = ornt.ornt_transform(ornt.io_orientation(roi_image.affine), ornt.io_orientation(written.affine))
    roi = ornt.apply_orientation(np.asarray(roi_image.dataobj) > 0, turn)
    wt = np.asarray(written.dataobj) > 0
    return float(2 * (wt & roi).sum() / max(int(wt.sum() + roi.sum()), 1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per way")
    from bench_report import add_report_flags

    add_report_flags(parser)
    args = parser.parse_args()
    if not (BRAINIX / "DICOM").is_dir():
        raise SystemExit(f"needs the BRAINIX study at {BRAINIX}")
    from bench_report import Reporter, finish_from_args, machine_calibration

    from medvision.precision import cpu_kind

    calibration, load_before = machine_calibration(), os.getloadavg()
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as folder:
        out, cache = Path(folder), Path(folder) / "onnx_cache"
        _run("classical", out, cache)  # warm-up: the ONNX export, the file cache
        for _ in range(args.rounds):
            for way in WAYS:
                times[way].append(_run(way, out, cache))
        dice = {way: wt_dice(out / f"{way}.nii.gz") for way in WAYS}
    report = Reporter()
    report(f"- CPU: {cpu_kind()}")
    report(
        "- what: `python -m medvision predict ../shared/data/brainix/DICOM -o seg.nii.gz --dicom-seg seg.dcm "
        f"--brain-extractor WAY` (default model, FLAIR + T1 + T2), whole process, {args.rounds} rounds per "
        "way, alternating, ONNX export cached"
    )
    medians = {way: statistics.median(t) for way, t in times.items()}
    for way, t in times.items():
        shown = ", ".join(f"{x:.1f}" for x in t)
        report(f"- {way}: median {medians[way]:.1f} s ({shown}); WT Dice vs FLAIR_ROI {dice[way]:.3f}")
    for way in WAYS[1:]:
        report(f"- ratio: network / {way} = {medians['network'] / medians[way]:.2f}x the time")
    verdicts = ", ".join(f"{way} {'met' if medians[way] <= 20 else 'not met'}" for way in WAYS)
    report(f"- goal <= 20 s on 2 CPU cores: {verdicts}")
    finish_from_args(
        "dicom_end_to_end (bench/dicom_end_to_end.py)",
        report,
        args,
        calibration=calibration,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
