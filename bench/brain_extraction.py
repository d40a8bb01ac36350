"""Brain extraction compared: ours (medvision/data/brain_extraction.py) against what the package registries
ship and runs offline, by brain-mask Dice against a known brain.

    pip install -r bench/requirements.txt   # nilearn, brainextractor, deepbet (bench only)
    python bench/brain_extraction.py [--no-record] [--note TEXT] [--skip-bet] [--under-load]

Methods (each given one head volume as a NIfTI image, one thread each):

- ``ours``: :func:`medvision.data.brain_extraction.extract_brain`, as ``predict --brain-extraction`` runs it
  (default 6 mm in-plane erosion; also at 4 and 8 mm to show whether the radius is the limit);
- ``bet``: ``brainextractor`` (PyPI), a Python port of FSL's BET surface deformation, default settings
  (it takes the in-plane voxel size for all three axes); ``bet@1mm`` as ``deepbet@1mm`` below;
- ``phantom net (ours)``: :func:`medvision.data.brain_extraction_net.phantom_net_brain`, our 2-D network
  trained only on head phantoms (``checkpoints/brain_extractor.*``), as ``--brain-extractor phantom`` runs it;
- ``deepbet``: ``deepbet`` (PyPI), two small 3-D U-Nets whose TorchScript weights ship inside the wheel,
  run on the CPU (``no_gpu=True``); ``deepbet@1mm`` is the same on a 1 mm resampling of a thick-slice scan,
  its mask sampled back at the slice centres.

Test volumes with a known brain (the nilearn wheel ships only the *skull-stripped* MNI152 T1 template, so
every known-brain volume here is a stripped brain with a synthetic CSF gap, skull, scalp and background
noise drawn around it by :func:`add_skull`; the true brain is the stripped image's non-zero voxels):

- ``mni152``: nilearn's MNI152 2009a T1 template (197x233x189, 1 mm) with the synthetic skull;
- ``mni152-5mm``: the same cut into 22 axial slabs 5 mm thick, 6 mm apart, from the vertex down (the
  geometry of the clinical BRAINIX study); the true brain is the slabs more than half brain;
- ``brats-t1``, ``brats-flair``: BraTS2021_00006 (240x240x155, 1 mm) with the synthetic skull.

And one real raw scan with no known brain: BRAINIX (clinical DICOM, 22 slices 6 mm apart, model grid at 1 mm
in-plane), from FLAIR (what predict uses) and from T1: the mask's volume, the share of the tumour ROI inside
it, and its Dice against ours from FLAIR.
Figures go to bench/RESULTS.md with the CPU model, the load and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # one thread per method, set before numpy and torch load their thread pools
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_report import Reporter, append_results, machine_calibration, report_machine  # noqa: E402

from medvision.data.brain_extraction import DEFAULT_ERODE_MM, extract_brain  # noqa: E402
from medvision.data.brain_extraction_net import phantom_net_brain  # noqa: E402
from medvision.data.case import MODALITIES, case_to_nifti_axes, nifti_to_case_axes  # noqa: E402
from medvision.precision import cpu_kind  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BRATS = DATA / "brats2021_00006"
BRAINIX = DATA / "brainix"
# Synthetic layers outside the brain, in mm from its surface: (outer edge, intensity as a share of the
# brain's median). CSF and cortical bone are dark on FLAIR/T1/T2, scalp fat is brighter than brain.
LAYERS: tuple[tuple[float, float], ...] = ((2.0, 0.15), (7.0, 0.04), (12.0, 1.3))
NOISE: float = 0.03  # background and layer noise, as a share of the brain's median
THICK_SLICES = 22  # BRAINIX: 22 axial slices of 5 mm, 6 mm apart
SLAB_MM, GAP_MM = 5, 6
ERODE_SWEEP_MM: tuple[float, ...] = (4.0, 8.0)


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


# --- test volumes ------------------------------------------------------------------------------------


@dataclass
class Volume:
    name: str
    image: nib.Nifti1Image  # the head, float32, (i, j, k) with k axial
    truth: np.ndarray | None  # (i, j, k) bool, the true brain, where known
    note: str
    to_native: Callable[[np.ndarray], np.ndarray] | None = None  # BRAINIX: mask -> tumour-ROI grid
    roi: np.ndarray | None = None
    compare_to: str | None = None  # the volume whose ``ours`` mask the figures compare with (else its own)


def _with_skull(data: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    zooms = tuple(float(z) for z in nib.affines.voxel_sizes(affine))
    head = add_skull(data.astype(np.float32), truth, zooms)  # type: ignore[arg-type]
    return nib.Nifti1Image(head, affine)


def thick_slices(image: nib.Nifti1Image, truth: np.ndarray) -> tuple[nib.Nifti1Image, np.ndarray]:
    """``image`` (1 mm) as ``THICK_SLICES`` axial slabs ``SLAB_MM`` thick, ``GAP_MM`` apart, from the top of
    the head down (slab means: partial volume as a thick-slice acquisition has it); truth = slabs > half."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    head = data > 0.5 * float(np.median(data[truth]))  # skull-free top: the scalp ring is bright
    top = int(np.nonzero(head.any(axis=(0, 1)))[0].max()) + 1
    starts = [top - GAP_MM * s - SLAB_MM for s in range(THICK_SLICES)][::-1]
    if starts[0] < 0:
        raise ValueError("the volume is too short for the thick-slice stack")
    slabs = np.stack([data[..., s : s + SLAB_MM].mean(axis=2) for s in starts], axis=2)
    brain = np.stack([truth[..., s : s + SLAB_MM].mean(axis=2) > 0.5 for s in starts], axis=2)
    affine = image.affine.copy()
    first_centre = np.array([0.0, 0.0, starts[0] + (SLAB_MM - 1) / 2])
    affine[:3, 3] = image.affine[:3, :3] @ first_centre + image.affine[:3, 3]
    affine[:3, 2] = image.affine[:3, 2] * GAP_MM
    return nib.Nifti1Image(slabs, affine), brain


def mni_volumes() -> list[Volume]:
    import nilearn
    from nilearn import datasets

    template = datasets.load_mni152_template()  # skull-stripped (nilearn ships no with-skull T1)
    data = np.asarray(template.dataobj, dtype=np.float32)
    truth = data > 0
    nilearn_mask = np.asarray(datasets.load_mni152_brain_mask().dataobj) > 0
    differ = int((truth ^ nilearn_mask).sum()) / truth.sum()
    image = _with_skull(data, truth, template.affine)
    thick, thick_truth = thick_slices(image, truth)
    return [
        Volume(
            "mni152",
            image,
            truth,
            f"nilearn {nilearn.__version__} MNI152 2009a T1 template (stripped) {data.shape} + "
            f"synthetic skull; truth = template > 0 (nilearn's load_mni152_brain_mask differs "
            f"by {differ:.2%} of it)",
        ),
        Volume(
            "mni152-5mm",
            thick,
            thick_truth,
            f"the same, {THICK_SLICES} axial slabs {SLAB_MM} mm thick {GAP_MM} mm apart from the vertex "
            f"down {thick.shape}",
        ),
    ]


def brats_volumes() -> list[Volume]:
    out = []
    for modality in ("t1", "flair"):
        source = nib.load(next(BRATS.glob(f"*_{modality}.nii*")))
        data = np.asarray(source.dataobj, dtype=np.float32)
        truth = data > 0
        out.append(
            Volume(
                f"brats-{modality}",
                _with_skull(data, truth, source.affine),
                truth,
                f"BraTS2021_00006 {modality} {data.shape} + synthetic skull; truth = {modality} > 0",
            )
        )
    return out


def brainix_volumes() -> list[Volume]:
    from medvision.dicom import load_study

    case, _report, native = load_study(BRAINIX / "DICOM")
    roi = roi_on_grid(BRAINIX / "ROI.nii.gz", native.case.affine)

    def to_native(mask: np.ndarray) -> np.ndarray:
        return native(nifti_to_case_axes(mask).astype(np.uint8)).astype(bool)

    out = []
    for modality in ("flair", "t1"):  # flair first: the others compare with its mask
        if modality not in case.available:
            continue
        data = case_to_nifti_axes(case.image[MODALITIES.index(modality)])
        out.append(
            Volume(
                f"brainix-{modality}",
                nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), case.affine),
                None,
                f"BRAINIX {modality} on the model grid {data.shape} (raw clinical, no known brain)",
                to_native,
                roi,
                compare_to="brainix-flair",  # what predict computes its mask from
            )
        )
    return out


# --- methods -----------------------------------------------------------------------------------------


def _in_case_axes(image: nib.Nifti1Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    zooms = nib.affines.voxel_sizes(image.affine)
    spacing = (float(zooms[2]), float(zooms[0]), float(zooms[1]))  # Case axes (k, i, j)
    return nifti_to_case_axes(np.asarray(image.dataobj, dtype=np.float32)), spacing


def ours(image: nib.Nifti1Image, erode_mm: float = DEFAULT_ERODE_MM) -> np.ndarray:
    volume, spacing = _in_case_axes(image)
    return case_to_nifti_axes(extract_brain(volume, spacing, erode_mm=erode_mm))


def phantom_net(image: nib.Nifti1Image) -> np.ndarray:
    volume, spacing = _in_case_axes(image)
    return case_to_nifti_axes(phantom_net_brain(volume, spacing))


def bet(image: nib.Nifti1Image) -> np.ndarray:
    from brainextractor import BrainExtractor

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-isotropic voxels": recorded in the report instead
        extractor = BrainExtractor(nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float64), image.affine))
        extractor.run()
        return np.asarray(extractor.compute_mask()) > 0


class DeepBet:
    def __init__(self) -> None:
        from deepbet.bet import BrainExtraction

        start = time.perf_counter()
        self.model = BrainExtraction(no_gpu=True)
        self.load_seconds = time.perf_counter() - start

    def __call__(self, image: nib.Nifti1Image) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):
            _, mask, _ = self.model.run(image)
        return np.asarray(mask.dataobj) > 0


def on_1mm(method: Callable[[nib.Nifti1Image], np.ndarray]) -> Callable[[nib.Nifti1Image], np.ndarray]:
    """``method`` run on a linear 1 mm resampling along k of a thick-slice image, its mask read back at the
    slice centres (for methods that assume isotropic voxels)."""

    def run(image: nib.Nifti1Image) -> np.ndarray:
        gap = float(nib.affines.voxel_sizes(image.affine)[2])
        data = np.asarray(image.dataobj, dtype=np.float32)
        factor = max(1, round(gap))
        fine = ndimage.zoom(data, (1, 1, factor), order=1, grid_mode=False)
        affine = image.affine.copy()
        affine[:3, 2] = image.affine[:3, 2] / factor
        mask = method(nib.Nifti1Image(fine, affine))
        centres = np.round(np.arange(data.shape[2]) * (fine.shape[2] - 1) / max(data.shape[2] - 1, 1))
        return mask[..., centres.astype(int)]

    return run


# --- the run -----------------------------------------------------------------------------------------


def measure(method: Callable[[nib.Nifti1Image], np.ndarray], volume: Volume) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    mask = method(volume.image)
    return mask.astype(bool), time.perf_counter() - start


def figures(volume: Volume, mask: np.ndarray, seconds: float, ours_mask: np.ndarray) -> str:
    """One table cell: Dice / volume ratio / seconds where the brain is known; else the mask's volume, the
    share of the tumour ROI inside it and its Dice against ours."""
    if volume.truth is not None:
        return f"{dice(mask, volume.truth):.3f} / {mask.sum() / volume.truth.sum():.3f} / {seconds:.1f} s"
    cm3 = mask.sum() * float(np.prod(nib.affines.voxel_sizes(volume.image.affine))) / 1000
    kept = float("nan")
    if volume.roi is not None and volume.to_native is not None:
        kept = (volume.to_native(mask) & volume.roi).sum() / max(int(volume.roi.sum()), 1)
    return f"{cm3:.0f} cm^3, ROI {kept:.1%}, vs ours {dice(mask, ours_mask):.3f} / {seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="a remark recorded with the figures")
    parser.add_argument("--skip-bet", action="store_true", help="leave out brainextractor (slowest)")
    parser.add_argument("--under-load", action="store_true", help="mark the seconds as measured under load")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    calibration = machine_calibration()
    report = Reporter()
    report(f"- CPU: {cpu_kind()}; one thread per method (torch threads {torch.get_num_threads()})")
    load = " (under load: other work shares the 2 cores)" if args.under_load else ""

    volumes = mni_volumes() + brats_volumes() + brainix_volumes()
    for volume in volumes:
        report(f"- `{volume.name}`: {volume.note}")
    deepbet = DeepBet()
    report(f"- deepbet: TorchScript weights from the wheel loaded in {deepbet.load_seconds:.1f} s (once)")
    report("- bet warns of non-isotropic voxels on thick slices and takes the in-plane size for all axes")
    methods: list[tuple[str, Callable[[nib.Nifti1Image], np.ndarray], bool]] = [
        ("ours", ours, False),
        *[(f"ours erode {e:g} mm", lambda image, e=e: ours(image, e), False) for e in ERODE_SWEEP_MM],
        ("phantom net (ours)", phantom_net, False),
        ("deepbet", deepbet, False),
        ("deepbet@1mm", on_1mm(deepbet), True),  # thick-slice volumes only
    ]
    if not args.skip_bet:
        methods[1:1] = [("bet (brainextractor)", bet, False), ("bet@1mm", on_1mm(bet), True)]

    rows: dict[tuple[str, str], str] = {}
    reference: dict[str, np.ndarray] = {}
    for volume in volumes:
        thick = float(nib.affines.voxel_sizes(volume.image.affine)[2]) > 1.5
        for name, method, thick_only in methods:
            if thick_only and not thick:
                continue
            mask, seconds = measure(method, volume)
            if name == "ours":
                reference[volume.name] = mask
            cell = figures(volume, mask, seconds, reference[volume.compare_to or volume.name])
            rows[(name, volume.name)] = cell
            print(f"  {volume.name:12s} {name:22s} {cell}", flush=True)

    known = [v.name for v in volumes if v.truth is not None]
    raw = [v.name for v in volumes if v.truth is None]
    names = [name for name, _m, _t in methods]
    report("")
    report(f"Dice / volume ratio (predicted / true) / seconds per volume{load}:")
    report("")

    def table(columns: list[str]) -> None:
        report("| method | " + " | ".join(columns) + " |")
        report("|---" * (len(columns) + 1) + "|")
        for name in names:
            report(f"| {name} | " + " | ".join(rows.get((name, v), "-") for v in columns) + " |")
        report("")

    table(known)
    report(f"BRAINIX (no known brain): mask volume, tumour ROI inside, Dice vs ours on FLAIR / s{load}:")
    report("")
    table(raw)
    if args.note:
        report(f"- note: {args.note}")
    report_machine(calibration, load_before, report)
    if not args.no_record:
        print(f"appended to {append_results('brain_extraction (bench/brain_extraction.py)', report.lines)}")


if __name__ == "__main__":
    main()


__all__ = ["add_skull", "dice", "roi_on_grid", "thick_slices"]
