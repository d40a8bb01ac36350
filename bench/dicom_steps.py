"""Seconds per step of a DICOM study import on BRAINIX, and pydicom against SimpleITK for reading series.

    python bench/dicom_steps.py [--rounds N] [--no-record] [--note TEXT]

Steps timed (median of N rounds): the scan (headers of all 88 files, grouping, checks), reading the three
series' pixels with pydicom (what medvision.dicom does) and with SimpleITK's GDCM series reader, the
resampling of T1 and T2 onto the FLAIR grid, the optional rigid refinement (SimpleITK Mattes MI) and how
far it moves each series, the model's 1 mm in-plane grid, and writing the DICOM-SEG. The geometry of both
readers is compared with the NIfTI conversions provided beside the study (largest affine difference in mm,
after nibabel's closest-canonical reorientation). Figures go to bench/RESULTS.md with the CPU model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, machine_calibration, report_machine  # noqa: E402

from medvision.confinement import Confinement  # noqa: E402
from medvision.data.native_grid import InputVolume, rigid_refinement, to_model_grid, to_reference_grid  # noqa: E402
from medvision.data.sniff import sitk_affine_ras  # noqa: E402
from medvision.dicom.scan import scan_study  # noqa: E402
from medvision.dicom.seg_export import write_dicom_seg  # noqa: E402
from medvision.dicom.study import read_study  # noqa: E402
from medvision.dicom.volume import read_series_volume  # noqa: E402
from medvision.precision import cpu_kind  # noqa: E402

BRAINIX = ROOT.parent / "shared" / "data" / "brainix"
NAMES = {"301": "T2", "401": "FLAIR", "601": "T1"}


def median_seconds(work: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def read_pydicom(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    scan = scan_study(root)
    within = Confinement.around(root)
    out = {}
    for series in scan.candidates:
        volume = read_series_volume(series, within=within, where=str(root))
        out[NAMES[str(series.number)]] = (volume.data, volume.affine)
    return out


def read_simpleitk(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import SimpleITK as sitk

    out = {}
    for name in NAMES.values():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(root / name)))
        image = reader.Execute()
        out[name] = (
            sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32),
            sitk_affine_ras(image),
        )
    return out


def geometry_error(volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Largest affine difference (mm per voxel step or mm of origin) against the provided conversions."""
    worst = 0.0
    for name, (data, affine) in volumes.items():
        ours = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
        theirs = nib.as_closest_canonical(nib.load(BRAINIX / f"{name}.nii.gz"))
        if ours.shape != theirs.shape:
            return float("inf")
        worst = max(worst, float(np.abs(ours.affine - theirs.affine).max()))
    return worst


def run(rounds: int, report: Reporter) -> None:
    root = BRAINIX / "DICOM"
    scan_s, _ = median_seconds(lambda: scan_study(root), rounds)
    report(f"- scan (headers of 88 files, 4 series): median {scan_s:.3f} s")
    pyd_s, pyd = median_seconds(lambda: read_pydicom(root), rounds)
    itk_s, itk = median_seconds(lambda: read_simpleitk(root), rounds)
    report(
        f"- scan + read FLAIR/T1/T2 with pydicom: median {pyd_s:.3f} s; "
        f"SimpleITK series reader: {itk_s:.3f} s"
    )
    report(f"- ratio: SimpleITK reads {pyd_s / itk_s:.2f}x as fast as pydicom (pydicom includes the scan)")
    report(
        f"- geometry against the provided .nii.gz: max affine difference pydicom "
        f"{geometry_error(pyd):.2e} mm, SimpleITK {geometry_error(itk):.2e} mm"
    )
    volumes = {m.lower(): InputVolume(m.lower(), d, a, m) for m, (d, a) in pyd.items()}
    grid_s, case = median_seconds(lambda: to_reference_grid(volumes, case_id="brainix"), rounds)
    report(f"- T1 and T2 (512x512x22) resampled onto the FLAIR grid (288x288x22): median {grid_s:.3f} s")
    for moving in ("t1", "t2"):
        reg_s, transform = median_seconds(
            lambda m=moving: rigid_refinement(volumes["flair"], volumes[m]), rounds
        )
        shift = float(np.linalg.norm(transform[:3, 3]))
        angle = float(np.degrees(np.arccos(np.clip((np.trace(transform[:3, :3]) - 1) / 2, -1, 1))))
        report(
            f"- rigid refinement {moving} onto FLAIR (30 iterations): median {reg_s:.2f} s; "
            f"translation {shift:.2f} mm, rotation {angle:.2f} deg"
        )
    model_s, (model_case, back) = median_seconds(lambda: to_model_grid(case), rounds)
    report(f"- model grid {model_case.shape} at 1 mm in-plane: median {model_s:.3f} s")
    study = read_study(root)
    label = np.zeros(study.case.shape, dtype=np.uint8)
    label[8:14, 120:160, 120:160] = 2
    label[10:12, 130:150, 130:150] = 4
    with tempfile.TemporaryDirectory() as tmp:
        seg_s, _ = median_seconds(
            lambda: write_dicom_seg(label, study.reference_datasets, Path(tmp) / "s.dcm"), rounds
        )
    report(f"- DICOM-SEG of 2 segments on 22 FLAIR slices: median {seg_s:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="a line recorded with the figures")
    args = parser.parse_args()
    if not (BRAINIX / "DICOM").is_dir():
        raise SystemExit(f"BRAINIX not found at {BRAINIX}")
    load_before = os.getloadavg()
    calibration = machine_calibration()
    report = Reporter()
    report(f"- CPU: {cpu_kind()}; {args.rounds} rounds")
    run(args.rounds, report)
    if args.note:
        report(f"- note: {args.note}")
    report_machine(calibration, load_before, report)
    if not args.no_record:
        append_results("dicom_steps (bench/dicom_steps.py)", report.lines)


if __name__ == "__main__":
    main()
