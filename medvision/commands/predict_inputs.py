"""What ``predict`` reads, as people have their scans: a DICOM study (folder or .zip), single NIfTI/NRRD
files named anything (``--flair a.nii.gz.gz --t2 b.nrrd``), or a BraTS/Decathlon/Kaggle case.

DICOM studies and single files are put on the reference series' grid, then on the model's ~1 mm in-plane
grid (``medvision.dicom.study``, ``medvision.data.native_grid``); the prediction goes back to the
reference grid, where every output is written. A scan that still shows the skull (``check_skull_stripped``)
is cut to the brain first (``medvision.data.brain_extraction``), because the model's brain is the
non-zero voxels. Only series descriptions and file names are reported, never patient data.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvision.data.case import MODALITIES, Case
from medvision.errors import InputDataError, MedVisionError

__all__ = ["PreparedInput", "add_input_arguments", "load_input", "modality_flags", "strip_skull"]

_ODD_SUFFIXES = (".gz", ".nii", ".nrrd", ".nhdr")


@dataclass(frozen=True)
class PreparedInput:
    """The case the model sees, the case the outputs are written against, and the way between them."""

    case: Case  # what the model predicts on
    export_case: Case  # the grid (and header source) every output is written on
    back: Callable[[np.ndarray], np.ndarray] | None = None  # model grid -> export grid; None = same grid
    reference_datasets: tuple | None = None  # the reference series' DICOM headers (DICOM input only)
    lines: tuple[str, ...] = ()  # what was read and done, for the user

    def to_export(self, array: np.ndarray) -> np.ndarray:
        """A (D, H, W) or (R, D, H, W) array on the model grid, on the export grid (nearest voxel)."""
        if self.back is None:
            return np.asarray(array)
        if np.asarray(array).ndim == 4:
            return np.stack([self.back(np.asarray(channel)) for channel in array])
        return self.back(np.asarray(array))


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The options naming what is read: one flag per modality, the reference, the rigid refinement."""
    for modality in MODALITIES:
        parser.add_argument(
            f"--{modality}",
            default=None,
            metavar="FILE_OR_SERIES",
            help=f"{modality.upper()}: with a DICOM study as INPUT a series number, description or UID "
            f"('none' leaves it out); without INPUT a single NIfTI/NRRD file (any name)",
        )
    parser.add_argument(
        "--reference",
        choices=MODALITIES,
        default=None,
        help="modality whose grid the others are resampled onto and the outputs are written on "
        "(default: FLAIR, else T1ce, else the first given)",
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="refine the alignment of the other series onto the reference (rigid, mutual information)",
    )
    parser.add_argument(
        "--brain-extraction",
        choices=("auto", "on", "off"),
        default="auto",
        help="cut the scan to the brain: auto = when it is not skull-stripped (default)",
    )
    parser.add_argument(
        "--brain-extractor",
        choices=("auto", "network", "classical", "phantom"),
        default="auto",
        help="how the brain is found: network = deepbet (weights in its wheel, offline), classical = "
        "threshold and morphology (faster, fails more often without FLAIR), phantom = our small network "
        "trained on head phantoms; auto = network when deepbet is installed (default)",
    )


def modality_flags(args: argparse.Namespace) -> dict[str, str]:
    """Modality -> what ``--flair/--t1/--t1ce/--t2`` named, for the flags given."""
    return {m: str(getattr(args, m)) for m in MODALITIES if getattr(args, m, None) is not None}


def _case_id(path: Path) -> str:
    """``BraTS2021_00006_flair.nii.gz.gz`` -> ``BraTS2021_00006``; any other name without its suffixes."""
    from medvision.data.readers import classify_name

    stem = path.name
    while stem.lower().endswith(_ODD_SUFFIXES) and "." in stem:
        stem = stem[: stem.rindex(".")]
    found = classify_name(stem)
    return found[0] if found and found[0] else stem


def _from_files(files: Mapping[str, str], reference: str | None, register: bool) -> PreparedInput:
    """Single files, one per modality, told apart by content, put on the reference file's grid."""
    from medvision.confinement import Confinement
    from medvision.data.native_grid import GridNote, InputVolume, to_model_grid, to_reference_grid
    from medvision.data.sniff import read_any_volume

    volumes = {}
    for modality, text in files.items():
        path = Path(text)
        volume = read_any_volume(path, within=Confinement.around(path))
        volumes[modality] = InputVolume(modality, volume.data, volume.affine, path.name, (path,))
    if reference is not None and reference not in volumes:
        given = ", ".join(f"--{m}" for m in volumes)
        raise InputDataError(f"--reference {reference}", f"no file given for it (given: {given})")
    notes: list[GridNote] = []
    first = next(m for m in ("flair", "t1ce", *MODALITIES) if m in volumes)
    case_id = _case_id(Path(files[reference or first]))
    native = to_reference_grid(volumes, case_id=case_id, reference=reference, register=register, notes=notes)
    model_case, back = to_model_grid(native, notes=notes)
    read = [f"read {m}: {Path(files[m]).name} {volumes[m].data.shape}" for m in volumes]
    return PreparedInput(model_case, native, back, None, tuple(read + [str(n) for n in notes]))


def _from_dicom(
    path: Path, overrides: Mapping[str, str], reference: str | None, register: bool
) -> PreparedInput:
    from medvision.dicom import load_study

    case, report, native = load_study(path, overrides, reference, register=register)
    if reference is not None and report.reference != reference:
        used = ", ".join(case.available)
        raise InputDataError(
            path, f"--reference {reference}: no series of the study is used as {reference} (used: {used})"
        )
    lines = tuple(report.lines())
    return PreparedInput(case, native.case, native, native.reference_datasets, lines)


def _from_case(path: Path) -> PreparedInput:
    from medvision.data.readers import load_case

    case = load_case(path, allow_missing=True)
    return PreparedInput(case, case)


def load_input(args: argparse.Namespace) -> PreparedInput:
    """What ``args`` names, read and on the model's grid; every refusal is one InputDataError line."""
    flags = modality_flags(args)
    path: Path | None = args.input
    try:
        if path is None:
            if not flags:
                raise InputDataError(
                    "predict", "give INPUT (a case or DICOM study) or --flair/--t1/--t1ce/--t2"
                )
            return _from_files(flags, args.reference, args.register)
        from medvision.dicom import is_dicom_study

        if is_dicom_study(path):
            return _from_dicom(path, flags, args.reference, args.register)
        if flags or args.reference is not None or args.register:
            raise InputDataError(
                path,
                "--flair/--t1/--t1ce/--t2, --reference and --register apply to a DICOM study (series) or, "
                "without INPUT, to single files; this input is not a DICOM study",
            )
        return _from_case(path)
    except MedVisionError:
        raise
    except ValueError as exc:  # options the grid code refuses (e.g. an unknown reference)
        raise InputDataError(path or "predict", str(exc)) from exc
    except Exception as exc:  # a reader bug must still be one line naming the input, not a traceback
        raise InputDataError(path or "predict", f"cannot read ({type(exc).__name__}: {exc})") from exc


def strip_skull(
    prepared: PreparedInput, mode: str, extractor: str = "auto"
) -> tuple[PreparedInput, str | None]:
    """``prepared`` cut to the brain when it shows the skull (``mode`` "auto") or always ("on"), by the
    ``extractor`` method of ``extract_case_brain``; the line saying so, or None when nothing was done."""
    from medvision.data.brain_extraction import apply_brain_mask, extract_case_brain
    from medvision.data.skull import check_skull_stripped

    if mode == "off":
        return prepared, None
    check = check_skull_stripped(prepared.case)
    if check.skull_stripped and mode == "auto":
        return prepared, None
    brain = extract_case_brain(prepared.case, method=extractor)
    if not brain.mask.any():  # nothing brain-like found: the whole scan is better than an empty one
        return prepared, f"predict: scan is not skull-stripped ({check.reason}); no brain found to extract"
    state = "not skull-stripped" if not check.skull_stripped else "looks skull-stripped, extraction asked"
    figures = check.reason.split(": ", 1)[-1]  # the verdict is said here already
    line = (
        f"predict: scan is {state} ({figures}); brain extracted ({brain.method}, on {brain.channel}; "
        f"mask volume {brain.volume_cm3:.0f} cm^3)"
    )
    case = apply_brain_mask(prepared.case, brain.mask)
    return dataclasses.replace(prepared, case=case), line
