"""`python -m medvision predict INPUT -o OUT.nii.gz`: segment one case and export the label volume.

INPUT is a BraTS case folder, a .zip, a Decathlon 4-D NIfTI, a folder of Kaggle slices or a DICOM study
(folder or .zip); or, with no INPUT, single files given as ``--flair/--t1/--t1ce/--t2`` (see
predict_inputs.py). DICOM studies and single files are predicted on the model's grid and every output
is written back on the reference series' own grid; ``--dicom-seg`` also writes a DICOM-SEG for a study.

Every failure a user can cause (unreadable input, missing checkpoint, bad output path, a device that is
not there) ends as one line on stderr and a non-zero exit, and never leaves a partial output: files
are written through temporary names, and outputs of a run that fails half way are removed again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvision.commands.arguments import unit_fraction
from medvision.commands.predict_inputs import PreparedInput, add_input_arguments, load_input, strip_skull
from medvision.data.case import Case
from medvision.errors import InputDataError, MedVisionError
from medvision.export import (
    check_nifti_path,
    save_prediction_nifti,
    save_probabilities_nifti,
    save_uncertainty_nifti,
)

logger = logging.getLogger(__name__)


class PredictError(MedVisionError):
    """A predict run failed for a reason that is not a bad input or checkpoint (device, disk, options)."""


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_input_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        type=Path,
        nargs="?",
        default=None,
        help="case folder, .zip, 4-D .nii[.gz], folder of .h5 slices, or DICOM study (folder or .zip); "
        "leave out to give single files with --flair/--t1/--t1ce/--t2",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="label file to write (.nii.gz); a folder (ending with /) to predict every case or study "
        "in INPUT, one file each, skipping those already written",
    )
    parser.add_argument(
        "--dicom-seg",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the labels as a DICOM-SEG referencing the study's reference series (DICOM input)",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment one case and write the tumour labels as NIfTI",
        description="Segment one case (BraTS case folder, .zip, Decathlon 4-D NIfTI, one Kaggle .h5 "
        "volume, a DICOM study, or single NIfTI/NRRD files) and write BraTS labels (0/1/2/4) in the "
        "input's geometry (for a DICOM study or single files: the reference series' own grid). A scan "
        "that is not skull-stripped is cut to the brain first. Research demo, not for clinical use.",
    )
    _add_input_output(parser)
    add_input_arguments(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint (.safetensors); default: the shipped checkpoints/default.safetensors "
        "(any modality subset)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the network (default: the cores other work leaves free)",
    )
    parser.add_argument(
        "--tta", action="store_true", help="average over horizontal/vertical flips (4x slower)"
    )
    parser.add_argument(
        "--mc-samples",
        type=_non_negative_int,
        default=0,
        help="MC-dropout passes for uncertainty (0 = off, else >= 2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC-dropout draws")
    parser.add_argument(
        "--min-component-voxels",
        type=_non_negative_int,
        default=0,
        help="drop 3-D tumour pieces smaller than this many voxels (0 = keep all)",
    )
    parser.add_argument(
        "--min-component-fraction",
        type=unit_fraction,
        default=None,
        metavar="F",
        help="drop tumour pieces smaller than F x the largest piece (default: the model's own choice, "
        "recorded in its checkpoint; 0 keeps every piece)",
    )
    parser.add_argument("--report", type=Path, default=None, help="write the volumetry as CSV here")
    parser.add_argument(
        "--modalities",
        default=None,
        metavar="SET",
        help="use only these of the given modalities, e.g. flair+t1ce (default: every one given; the "
        "default model accepts any non-empty subset)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the CPU (ONNX Runtime) export of the model is kept between runs "
        "(default: $MEDVISION_CACHE_DIR, else $XDG_CACHE_HOME/medvision/onnx, else ~/.cache/medvision/onnx)",
    )
    parser.add_argument(
        "--probabilities",
        type=Path,
        default=None,
        help="also write region probabilities as a 4-D float32 NIfTI",
    )
    parser.add_argument(
        "--uncertainty",
        type=Path,
        default=None,
        help="also write the MC-dropout uncertainty map (needs --mc-samples >= 2)",
    )
    parser.set_defaults(func=run)


def _check_options(args: argparse.Namespace) -> None:
    """What a single case and a batch alike must refuse before any slow work."""
    if args.mc_samples == 1:
        raise PredictError("--mc-samples must be 0 (off) or at least 2")


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before any slow work."""
    _check_options(args)
    if args.uncertainty is not None and args.mc_samples < 2:
        raise PredictError(f"{args.uncertainty}: an uncertainty map needs --mc-samples 2 or more")
    outputs = [p for p in (args.output, args.probabilities, args.uncertainty) if p is not None]
    for path in outputs:
        check_nifti_path(path)
    named = outputs + [p for p in (args.report, args.dicom_seg) if p is not None]
    if len({p.resolve() for p in named}) != len(named):
        raise PredictError("the output files must all be different")
    if args.dicom_seg is not None:
        from medvision.dicom import is_dicom_study

        if args.input is None or not is_dicom_study(args.input):
            raise PredictError(
                f"{args.dicom_seg}: --dicom-seg needs a DICOM study (folder or .zip) as INPUT, whose series "
                f"the SEG references; {args.input or 'single files'} is not one"
            )


def _load(args: argparse.Namespace) -> tuple[PreparedInput, list[str]]:
    """The input on the model grid, the modalities of ``--modalities`` kept, cut to the brain if need be;
    and the lines saying what was read and done."""
    prepared = load_input(args)
    if args.modalities is not None:
        prepared = dataclasses.replace(prepared, case=_keep_modalities(prepared.case, args.modalities))
    prepared, stripped = strip_skull(prepared, args.brain_extraction, args.brain_extractor)
    return prepared, [*prepared.lines, *([stripped] if stripped else [])]


def _keep_modalities(case: Case, only: str) -> Case:
    """``case`` with only the modalities of ``only`` (e.g. "flair+t1ce"); the others' channels zeroed."""
    from medvision.data.modality_sets import keep_only, parse_subset

    try:
        wanted = parse_subset(only)
    except ValueError as exc:
        raise PredictError(f"--modalities: {exc}") from exc
    absent = [m for m in wanted if m not in case.available]
    if absent:
        raise InputDataError(
            case.source_paths[0] if case.source_paths else case.case_id,
            f"--modalities asks for {', '.join(absent)}, which the input does not have "
            f"(it has {', '.join(case.available)})",
        )
    return dataclasses.replace(case, image=keep_only(case.image, wanted), available=wanted)


@dataclass(frozen=True)
class _Exported:
    """The prediction on the export (reference) grid: what every output file and the volumes come from."""

    label: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray | None
    uncertainty_score: float | None
    regions: tuple[str, ...]


def _exported(prepared: PreparedInput, prediction: Any) -> _Exported:
    uncertainty = prediction.uncertainty
    return _Exported(
        label=prepared.to_export(prediction.label),
        probabilities=prepared.to_export(prediction.probabilities),
        uncertainty=prepared.to_export(uncertainty) if uncertainty is not None else None,
        uncertainty_score=prediction.uncertainty_score,
        regions=prediction.regions,
    )


def _jobs(args: argparse.Namespace, prepared: PreparedInput, out: _Exported, csv_text: str) -> list:
    from medvision.atomic import write_text_atomic

    case = prepared.export_case
    jobs: list[tuple[Path, Any]] = [(args.output, lambda p: save_prediction_nifti(out.label, case, p))]
    if args.probabilities is not None:
        jobs.append(
            (
                args.probabilities,
                lambda p: save_probabilities_nifti(out.probabilities, case, p, regions=out.regions),
            )
        )
    if args.uncertainty is not None:
        jobs.append((args.uncertainty, lambda p: save_uncertainty_nifti(out.uncertainty, case, p)))
    if args.dicom_seg is not None and prepared.reference_datasets is not None:
        from medvision.dicom.seg_export import write_dicom_seg

        # highdicom logs every module it copies, naming instance UIDs: not for a user's terminal.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        jobs.append((args.dicom_seg, lambda p: write_dicom_seg(out.label, prepared.reference_datasets, p)))
    if args.report is not None:
        jobs.append((args.report, lambda p: write_text_atomic(p, csv_text)))
    return jobs


def _write_outputs(
    args: argparse.Namespace, prepared: PreparedInput, out: _Exported, csv_text: str
) -> list[Path]:
    """Write every requested file; if one fails, remove those this run already wrote."""
    written: list[Path] = []
    try:
        for path, write in _jobs(args, prepared, out, csv_text):
            write(path)
            written.append(path)
    except BaseException as exc:
        for done in written:
            with contextlib.suppress(OSError):
                done.unlink()
        if isinstance(exc, (OSError, ValueError)):
            raise PredictError(f"{path}: cannot write ({exc})") from exc
        raise
    return written


def _modalities_used(available: tuple[str, ...], predictor: Any) -> str:
    """``modalities used: flair, t1ce, t2 (t1 given, set aside: ...)`` or the plain list."""
    set_aside = predictor.set_aside(available) if hasattr(predictor, "set_aside") else ()
    used = [m for m in available if m not in set_aside]
    line = f"  modalities used: {', '.join(used)}"
    if set_aside:
        line += (
            f" ({', '.join(set_aside)} given but set aside: the model's cross-validation scored this input "
            "higher without it; checkpoints/MODEL_CARD.md)"
        )
    return line


def _summary(
    prepared: PreparedInput, out: _Exported, vol: dict[str, Any], predictor: Any, seconds: float
) -> str:
    case = prepared.export_case  # the grid written; the modalities are those the model was given
    lines = [
        f"{case.case_id}: {case.shape[0]} slices of {case.shape[1]}x{case.shape[2]}, "
        f"{predictor.describe()}, {seconds:.1f} s",
        _modalities_used(prepared.case.available, predictor),
    ]
    volumes = ", ".join(f"{k.removesuffix('_cm3')} {v:.2f}" for k, v in vol.items() if k.endswith("_cm3"))
    lines.append(f"  volumes (cm^3): {volumes}")
    if vol["first_slice"] is None:
        lines.append("  no tumour predicted")
    else:
        lines.append(
            f"  tumour on axial slices {vol['first_slice']}-{vol['last_slice']}; largest axial diameter "
            f"{vol['max_diameter_mm']:.1f} mm (slice {vol['largest_slice']})"
        )
    if out.uncertainty_score is not None:
        lines.append(
            f"  uncertainty score (mean std of P(tumour) in predicted tumour): {out.uncertainty_score:.4f}"
        )
    return "\n".join(lines)


def _predictor(args: argparse.Namespace) -> Any:
    from medvision.inference import Predictor
    from medvision.onnx_backend import user_cache_dir

    try:
        return Predictor(
            args.checkpoint,
            device=args.device,
            threads=args.threads or "auto",
            onnx_cache_dir=args.cache_dir or user_cache_dir(),
        )
    except ValueError as exc:  # e.g. --device cuda without CUDA
        raise PredictError(str(exc)) from exc


def _check_model_takes(args: argparse.Namespace, case: Case) -> None:
    """Refuse a subset of the modalities for a model that needs all four before the model is loaded
    (or exported), from its metadata file alone."""
    if not case.missing:
        return
    from medvision.app_support.subset_expectations import weak_subset_warning
    from medvision.checkpoint import read_checkpoint_meta
    from medvision.inference import DEFAULT_CHECKPOINT
    from medvision.inference.spec import check_modalities, takes_availability

    meta = read_checkpoint_meta(args.checkpoint or DEFAULT_CHECKPOINT)
    where = str(case.source_paths[0]) if case.source_paths else case.case_id
    check_modalities(takes_availability(meta), case.available, where)
    weak = weak_subset_warning(meta, case.available)
    if weak:  # the prediction still runs: the user may have nothing else
        print(f"warning: {where}: {weak}", file=sys.stderr)


def predict_case(args: argparse.Namespace, predictor: Any | None = None) -> None:
    """Read ``args.input``, predict, write every output ``args`` names; ``predictor``: one already built
    (a batch shares it), else built after the input was read (so a bad input is reported first)."""
    from medvision.volumetry import volumetry, volumetry_csv

    prepared, lines = _load(args)
    for line in lines:
        print(line)
    _check_model_takes(args, prepared.case)
    predictor = predictor if predictor is not None else _predictor(args)
    start = time.perf_counter()
    try:
        prediction = predictor.predict_volume(
            prepared.case,
            tta=args.tta,
            mc_samples=args.mc_samples,
            seed=args.seed,
            min_component_voxels=args.min_component_voxels,
            min_component_fraction=args.min_component_fraction,
        )
    except MedVisionError:
        raise
    except (RuntimeError, ValueError, MemoryError) as exc:
        raise PredictError(
            f"{args.input or prepared.case.case_id}: prediction failed ({type(exc).__name__}: {exc})"
        ) from exc
    seconds = time.perf_counter() - start
    out = _exported(prepared, prediction)
    case = prepared.export_case
    # Volumes from the export grid: the scan's own spacing, not the model's resampled one.
    vol = volumetry(out.label, case.spacing, regions=out.regions)
    _write_outputs(args, prepared, out, volumetry_csv(vol, case_id=case.case_id))
    print(_summary(prepared, out, vol, predictor, seconds))
    print(f"wrote {args.output}" + (f" and {args.dicom_seg}" if args.dicom_seg else ""), file=sys.stdout)


def run(args: argparse.Namespace) -> int:
    from medvision.commands.predict_batch import is_batch, run_batch

    if is_batch(args):
        _check_options(args)
        return run_batch(args, predict_case, _predictor)
    args.output = Path(args.output)
    _check_args(args)
    predict_case(args)
    return 0
