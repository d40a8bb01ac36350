"""How good the classical brain extraction (medvision/data/brain_extraction.py) is, on two real scans.

    python bench/brain_extraction.py [--no-record] [--note TEXT]

(a) BraTS2021_00006 (skull-stripped, so its true brain is the non-zero voxels) with a synthetic CSF gap,
    skull and scalp and background noise added around that brain (:func:`add_skull`): Dice and the
    share of the true brain kept / of the mask outside it, per modality the mask is computed from;
(b) BRAINIX (raw clinical DICOM with skull, 6 mm slices): the share of the tumour ROI (drawn on the FLAIR
    grid) inside the mask, and the mask's volume, as ``predict`` computes it (model grid, then back).
Figures go to bench/RESULTS.md with the CPU model, the load and the command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_report import Reporter, append_results, machine_calibration, report_machine  # noqa: E402

from medvision.data.brain_extraction import extract_brain  # noqa: E402
from medvision.data.case import MODALITIES, nifti_to_case_axes  # noqa: E402
from medvision.precision import cpu_kind  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BRATS = DATA / "brats2021_00006"
BRAINIX = DATA / "brainix"
# Synthetic layers outside the brain, in mm from its surface: (outer edge, intensity as a share of the
# brain's median). CSF and cortical bone are dark on FLAIR/T2, scalp fat is brighter than brain.
LAYERS: tuple[tuple[float, float], ...] = ((2.0, 0.15), (7.0, 0.04), (12.0, 1.3))
NOISE: float = 0.03  # background and layer noise, as a share of the brain's median


def add_skull(
    volume: np.ndarray, brain: np.ndarray, spacing: tuple[float, float, float], *, seed: int = 0
) -> np.ndarray:
    """``volume`` (D, H, W) with a CSF gap, a skull and a scalp (``LAYERS``) drawn around ``brain`` and
    Rician-like noise everywhere outside it: what a skull-stripped case looked like before stripping."""
    rng = np.random.default_rng(seed)
    median = float(np.median(volume[brain]))
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing)
    out = np.abs(rng.normal(0.0, NOISE * median, volume.shape)).astype(np.float32)
    inner = 0.0
    for outer, level in LAYERS:
        ring = (distance > inner) & (distance <= outer)
        out[ring] += level * median * (1.0 + 0.1 * rng.standard_normal(int(ring.sum())))
        inner = outer
    out[brain] = volume[brain]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))


def roi_on_grid(path: Path, affine: np.ndarray) -> np.ndarray:
    """The BRAINIX ROI (a conversion made elsewhere: the FLAIR grid with its j axis flipped) as a (D, H, W)
    mask on the grid of ``affine``, by flips and transposes read from the two affines (no interpolation)."""
    image = nib.load(path)
    turn = ornt.ornt_transform(ornt.io_orientation(image.affine), ornt.io_orientation(affine))
    return nifti_to_case_axes(ornt.apply_orientation(np.asarray(image.dataobj) > 0, turn)).astype(bool)


def brats_figures(report: Reporter) -> None:
    from medvision.data.readers import read_brats_folder

    case = read_brats_folder(BRATS)
    truth = np.any(case.image != 0, axis=0)
    report(f"- (a) {case.case_id} {case.shape} with a synthetic skull/scalp (layers {LAYERS}, noise {NOISE})")
    for modality in MODALITIES:
        head = add_skull(case.image[MODALITIES.index(modality)], truth, case.spacing)
        start = time.perf_counter()
        mask = extract_brain(head, case.spacing)
        seconds = time.perf_counter() - start
        kept = (mask & truth).sum() / truth.sum()
        extra = (mask & ~truth).sum() / max(int(mask.sum()), 1)
        report(
            f"  - from {modality}: Dice {dice(mask, truth):.3f}, true brain kept {kept:.1%}, "
            f"mask outside the brain {extra:.1%}, {seconds:.1f} s"
        )


def brainix_figures(report: Reporter) -> None:
    from medvision.data.brain_extraction import extract_case_brain
    from medvision.dicom import load_study

    case, _report, native = load_study(BRAINIX / "DICOM")
    start = time.perf_counter()
    brain = extract_case_brain(case)
    seconds = time.perf_counter() - start
    mask = native(brain.mask.astype(np.uint8)).astype(bool)
    roi = roi_on_grid(BRAINIX / "ROI.nii.gz", native.case.affine)
    inside = (mask & roi).sum() / max(int(roi.sum()), 1)
    report(
        f"- (b) BRAINIX ({', '.join(case.available)}; mask from {brain.channel}, model grid {case.shape}): "
        f"tumour ROI inside the mask {inside:.1%} of {int(roi.sum())} voxels; "
        f"mask {brain.volume_cm3:.0f} cm^3; {seconds:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="a remark recorded with the figures")
    args = parser.parse_args()
    load_before = os.getloadavg()
    calibration = machine_calibration()
    report = Reporter()
    report(f"- CPU: {cpu_kind()}")
    report("- what: classical brain extraction (medvision/data/brain_extraction.py), default settings")
    brats_figures(report)
    brainix_figures(report)
    if args.note:
        report(f"- note: {args.note}")
    report_machine(calibration, load_before, report)
    if not args.no_record:
        print(f"appended to {append_results('brain_extraction (bench/brain_extraction.py)', report.lines)}")


if __name__ == "__main__":
    main()


__all__ = ["add_skull", "dice", "roi_on_grid"]
