"""`python -m medvision predict INPUT -o OUT.nii.gz`: segment one case and export the label volume.

Every failure a user can cause (unreadable input, missing checkpoint, bad output path, a device that is
not there) ends as one line on stderr and a non-zero exit, and never leaves a partial output: files
are written through temporary names, and outputs of a run that fails half way are removed again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

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


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment one case and write the tumour labels as NIfTI",
        description="Segment one case (BraTS case folder, .zip, Decathlon 4-D NIfTI or one Kaggle .h5 "
        "volume) and write BraTS labels (0/1/2/4) in the input's geometry. "
        "Research demo, not for clinical use.",
    )
    parser.add_argument("input", type=Path, help="case folder, .zip, 4-D .nii[.gz] or folder of .h5 slices")
    parser.add_argument("-o", "--output", type=Path, required=True, help="label file to write (.nii.gz)")
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


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before any slow work."""
    if args.mc_samples == 1:
        raise PredictError("--mc-samples must be 0 (off) or at least 2")
    if args.uncertainty is not None and args.mc_samples < 2:
        raise PredictError(f"{args.uncertainty}: an uncertainty map needs --mc-samples 2 or more")
    outputs = [p for p in (args.output, args.probabilities, args.uncertainty) if p is not None]
    for path in outputs:
        check_nifti_path(path)
    named = outputs + ([args.report] if args.report is not None else [])
    if len({p.resolve() for p in named}) != len(named):
        raise PredictError("the output files must all be different")


def _load_case(path: Path, only: str | None) -> Case:
    from medvision.data.readers import load_case

    try:
        case = load_case(path, allow_missing=True)
        return case if only is None else _keep_modalities(case, only)
    except MedVisionError:
        raise
    except Exception as exc:  # a reader bug must still be one line naming the input, not a traceback
        raise PredictError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _keep_modalities(case: Case, only: str) -> Case:
    """``case`` with only the modalities of ``only`` (e.g. "flair+t1ce"); the others' channels zeroed."""
    import dataclasses

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


def _write_outputs(args: argparse.Namespace, case: Case, prediction: Any, csv_text: str) -> list[Path]:
    """Write every requested file; if one fails, remove those this run already wrote."""
    from medvision.atomic import write_text_atomic

    jobs: list[tuple[Path, Any]] = [(args.output, lambda p: save_prediction_nifti(prediction.label, case, p))]
    if args.probabilities is not None:
        jobs.append(
            (
                args.probabilities,
                lambda p: save_probabilities_nifti(
                    prediction.probabilities, case, p, regions=prediction.regions
                ),
            )
        )
    if args.uncertainty is not None:
        jobs.append((args.uncertainty, lambda p: save_uncertainty_nifti(prediction.uncertainty, case, p)))
    if args.report is not None:
        jobs.append((args.report, lambda p: write_text_atomic(p, csv_text)))
    written: list[Path] = []
    try:
        for path, write in jobs:
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


def _summary(case: Case, prediction: Any, vol: dict[str, Any], predictor: Any, seconds: float) -> str:
    lines = [
        f"{case.case_id}: {case.shape[0]} slices of {case.shape[1]}x{case.shape[2]}, "
        f"{predictor.describe()}, {seconds:.1f} s",
        f"  modalities used: {', '.join(case.available)}",
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
    if prediction.uncertainty_score is not None:
        lines.append(
            f"  uncertainty score (mean std of P(tumour) in predicted tumour): "
            f"{prediction.uncertainty_score:.4f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from medvision.inference import Predictor
    from medvision.onnx_backend import user_cache_dir
    from medvision.volumetry import volumetry, volumetry_csv

    _check_args(args)
    case = _load_case(args.input, args.modalities)
    try:
        predictor = Predictor(
            args.checkpoint,
            device=args.device,
            threads=args.threads or "auto",
            onnx_cache_dir=args.cache_dir or user_cache_dir(),
        )
    except ValueError as exc:  # e.g. --device cuda without CUDA
        raise PredictError(str(exc)) from exc
    start = time.perf_counter()
    try:
        prediction = predictor.predict_volume(
            case,
            tta=args.tta,
            mc_samples=args.mc_samples,
            seed=args.seed,
            min_component_voxels=args.min_component_voxels,
        )
    except MedVisionError:
        raise
    except (RuntimeError, ValueError, MemoryError) as exc:
        raise PredictError(f"{args.input}: prediction failed ({type(exc).__name__}: {exc})") from exc
    seconds = time.perf_counter() - start
    vol = volumetry(prediction.label, case.spacing, regions=prediction.regions)
    _write_outputs(args, case, prediction, volumetry_csv(vol, case_id=case.case_id))
    print(_summary(case, prediction, vol, predictor, seconds))
    print(f"wrote {args.output}", file=sys.stdout)
    return 0
