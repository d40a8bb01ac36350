"""Inference speed: seconds per 240x240x155 volume, MedVision's path vs a plain loop, and time to first slice.

    python bench/infer_speed.py [--device cpu] [--repeats 3] [--variants] [--threads N]

The plain loop is what a straightforward script does: eager fp32, NCHW, batch 4, whole 240x240 slices,
no cropping, `torch.no_grad`. Ours is `Predictor.predict_volume` (brain crop, channels_last, bf16
autocast where native, inference_mode; the cache is cleared before every repeat so hashing and
normalisation are counted). Both use the same model: the demo checkpoint if present, else the original
project's seed-size network AttentionUNet(4, 1, 32, 4, 0.2) randomly initialised. The case is the real
BraTS 2021 case beside the project when present, else a synthetic phantom of the same size.
Repeats are interleaved (baseline, ours, baseline, ...) so background load hits both alike; medians are
reported. Figures are appended to bench/RESULTS.md with the date, device, torch version and command.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_report import Reporter, append_results, device_name, machine_calibration, report_machine  # noqa: E402

from medvision.data.case import Case  # noqa: E402
from medvision.data.preprocess import brain_mask, zscore_in_brain  # noqa: E402
from medvision.inference import DEFAULT_CHECKPOINT, Predictor  # noqa: E402
from medvision.models import AttentionUNet  # noqa: E402
from medvision.volumetry import remove_small_components  # noqa: E402

REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"


def onnx_versions() -> str:
    parts = []
    for name in ("onnxruntime", "onnx"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            parts.append(f"no {name}")
    return ", ".join(parts)


def load_model(seed: int) -> tuple[torch.nn.Module, dict, str]:
    if DEFAULT_CHECKPOINT.with_suffix(".json").is_file():
        from medvision.checkpoint import load_checkpoint

        model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
        return model, meta, f"demo checkpoint {DEFAULT_CHECKPOINT.name} ({model.config})"
    torch.manual_seed(seed)
    model = AttentionUNet(4, 1, 32, 4, 0.2).eval()
    return model, {"target": "wt"}, "AttentionUNet(4, 1, 32, 4, 0.2), random init (seed-size model)"


def load_bench_case() -> tuple[Case, str]:
    if (REAL_CASE / "BraTS2021_00006_flair.nii.gz").exists():
        from medvision.data.readers import load_case

        return load_case(REAL_CASE), f"real case {REAL_CASE.name}"
    from medvision.data.synthetic import make_phantom

    return make_phantom("Synth_bench", 0, (155, 240, 240)), "synthetic phantom 155x240x240"


def plain_loop(model: torch.nn.Module, case: Case, device: torch.device, batch: int = 4) -> np.ndarray:
    """The baseline: whole slices, fp32, NCHW, batch 4, every slice, no crop."""
    image = zscore_in_brain(case.image, brain_mask(case.image))
    slices = torch.from_numpy(np.ascontiguousarray(image.transpose(1, 0, 2, 3)))  # (D, 4, H, W)
    out = []
    with torch.no_grad():
        for i in range(0, slices.shape[0], batch):
            out.append(torch.sigmoid(model(slices[i : i + batch].to(device))).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out).numpy()


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default: the Predictor's)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also time fp32 / bf16 / ONNX Runtime and batch sizes (the figures behind the defaults)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the slow plain loop")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--note", default="", help="a remark recorded with the figures (e.g. how it was run)")
    return parser.parse_args()


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def median_text(times: list[float]) -> str:
    return f"median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)}"


def time_first_slice(predictor: Predictor, case: Case, k_mid: int, report: Reporter) -> None:
    """Time to first slice: a fresh predictor, a case it has never seen (hash + normalise + one forward)."""
    first_slice, _ = timed(predictor.predict_slice, case, k_mid)
    predictor.clear_cache()
    again, _ = timed(predictor.predict_slice, case, k_mid + 1)
    report(f"- predictor: {predictor.describe()}")
    report(
        f"- time to first slice (fresh predictor, unseen case): {first_slice:.3f} s; "
        f"next unseen case (warm predictor): {again:.3f} s"
    )


def report_agreement(base_probs: np.ndarray, result, case: Case, report: Reporter) -> None:
    """Agreement with the plain fp32 loop (first output channel; the loop has no crop or padding)."""
    ref = base_probs[:, 0]
    ours_p = result.probabilities[0]
    brain = brain_mask(case.image)
    diff = np.abs(ref - ours_p)[brain]
    agree = ((ref > 0.5) == (ours_p > 0.5))[brain].mean()
    report(
        f"- agreement with the plain fp32 loop inside the brain: mean |dp| {diff.mean():.2e}, "
        f"max |dp| {diff.max():.2e}, same voxel decision {agree * 100:.3f}%"
    )


def time_volumes(
    args: argparse.Namespace,
    predictor: Predictor,
    baseline_model: torch.nn.Module,
    case: Case,
    device: torch.device,
    report: Reporter,
):
    """Interleaved repeats of the plain loop and ours; reports the medians and returns our last result."""
    ours_times, base_times = [], []
    base_probs = None
    for _ in range(max(args.repeats, 1)):
        if not args.no_baseline:
            seconds, base_probs = timed(plain_loop, baseline_model, case, device)
            base_times.append(seconds)
        predictor.clear_cache()
        seconds, result = timed(predictor.predict_volume, case)
        sync(device)
        ours_times.append(seconds)
    ours = statistics.median(ours_times)
    report(f"- ours: {ours:.2f} s/volume ({median_text(ours_times)})")
    if base_times:
        base = statistics.median(base_times)
        report(f"- plain loop: {base:.2f} s/volume ({median_text(base_times)})")
        report(f"- speed-up: {base / ours:.1f}x")
        report_agreement(base_probs, result, case, report)
    return result


def report_postprocessing(result, report: Reporter) -> None:
    seconds, cleaned = timed(remove_small_components, result.label, 100)
    removed = int((result.label > 0).sum() - (cleaned > 0).sum())
    report(
        f"- postprocessing remove_small_components(min 100 voxels): {seconds:.2f} s, "
        f"removed {removed} of {int((result.label > 0).sum())} tumour voxels"
    )


def variant_options(device: torch.device) -> dict[str, dict]:
    """Ours with one option changed; the figures behind the Predictor's defaults."""
    if device.type == "cuda":
        return {
            "torch float32": {"dtype": "float32"},
            "torch bfloat16": {"dtype": "bfloat16"},
            "torch bfloat16, batch 64": {"dtype": "bfloat16", "batch_size": 64},
        }
    return {
        "torch float32": {"dtype": "float32", "backend": "torch"},
        "torch bfloat16": {"dtype": "bfloat16", "backend": "torch"},
        "onnxruntime float32": {"dtype": "float32", "backend": "onnx"},
        "torch bfloat16, 1 thread": {"dtype": "bfloat16", "backend": "torch", "threads": 1},
        "torch bfloat16, all threads always": {"dtype": "bfloat16", "backend": "torch", "threads": None},
        "torch bfloat16, batch 1": {"dtype": "bfloat16", "backend": "torch", "batch_size": 1},
        "torch bfloat16, batch 8": {"dtype": "bfloat16", "backend": "torch", "batch_size": 8},
        "torch bfloat16, batch 16": {"dtype": "bfloat16", "backend": "torch", "batch_size": 16},
    }


def time_variants(
    make_predictor: Callable[..., Predictor],
    case: Case,
    device: torch.device,
    repeats: int,
    k_mid: int,
    report: Reporter,
) -> None:
    report("- variants (median s/volume of ours with one option changed):")
    fp32 = None
    for name, overrides in variant_options(device).items():
        variant = make_predictor(**overrides)
        if "onnx" in name and variant.backend != "onnx":
            report(f"  - {name}: not available here (needs the onnx package; fell back to PyTorch)")
            continue
        variant.predict_slice(case, k_mid)  # warm the shapes
        times = []
        for _ in range(max(repeats, 1)):
            variant.clear_cache()
            seconds, out = timed(variant.predict_volume, case)
            times.append(seconds)
        extra = ""
        if name == "torch float32":
            fp32 = out
        elif fp32 is not None:
            brain = brain_mask(case.image)
            d = np.abs(out.probabilities - fp32.probabilities)[:, brain]
            same = (out.label == fp32.label)[brain].mean()
            extra = f"; vs fp32: mean |dp| {d.mean():.1e}, max |dp| {d.max():.1e}, same label {same:.4%}"
        report(f"  - {name}: {statistics.median(times):.2f} ({', '.join(f'{t:.2f}' for t in times)}){extra}")


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    load_before = os.getloadavg()
    calibration = machine_calibration()

    model, meta, model_desc = load_model(0)
    case, case_desc = load_bench_case()
    baseline_model = copy.deepcopy(model).to(device).eval()  # NCHW, fp32: never converted
    report = Reporter()

    def make_predictor(**overrides) -> Predictor:
        options = {
            "device": str(device),
            "dtype": args.dtype,
            "backend": args.backend,
            "batch_size": args.batch_size,
        }
        options.update(overrides)
        return Predictor.from_model(copy.deepcopy(model), meta, **options)

    k_mid = case.shape[0] // 2
    predictor = make_predictor()
    time_first_slice(predictor, case, k_mid, report)
    result = time_volumes(args, predictor, baseline_model, case, device, report)
    report_postprocessing(result, report)
    if args.variants:
        time_variants(make_predictor, case, device, args.repeats, k_mid, report)
    report_machine(calibration, load_before, report)
    if not args.no_record:
        path = append_results(
            "infer_speed",
            [
                f"- device: {device_name(device)}",
                f"- torch {torch.__version__}, Python {platform.python_version()}, {onnx_versions()}",
                f"- model: {model_desc}; case: {case_desc} {case.shape}",
                *report.lines,
                *([f"- note: {args.note}"] if args.note else []),
            ],
        )
        print(f"appended to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
