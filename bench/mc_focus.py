"""Benchmark: focused MC dropout (dropout passes only near the plain pass's tumour probability) against MC
dropout on every brain slice: what it leaves out and how much time it saves.

    python bench/mc_focus.py [--samples 6] [--bars 0.02 0.05 0.2] [--rounds 2] [--quality-only]
                             [--timing-only] [--note TEXT] [--no-record] [--under-load]

Quality (``--bars``): each cross-validation fold model of the default recipe (runs/default/fold_*) on its
held-out real cases from data/default_mix.h5 (without those, the shipped model on the labelled real cases of
../shared/data, which it was trained on), all four modalities: the share of the full run's uncertainty (sum
of the per-voxel spread) where the focus runs no dropout pass (slices it skips, and outside the in-plane
window on the others), the largest spread there, the AUROC of uncertainty for wrong voxels with and without
focus, and the share of the network input that still gets dropout passes.
Timing: the shipped model on BraTS2021_00006 (240x240x155), full MC vs focused MC after the
plain volume is cached (as on the Predict page, where the prediction is there before uncertainty is asked),
alternating rounds; medians and their ratio go to bench/RESULTS.md with the CPU model. Time it on a quiet
machine; the quality part may share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
CHECKPOINT = ROOT / "checkpoints" / "default.safetensors"
FOLDS = ROOT / "runs" / "default"
STORE = ROOT / "data" / "default_mix.h5"


def _cases_of_folds():
    """(engine, prepared, truth of the first region in the brain) of each fold's held-out real cases."""
    from medvision.data.store import SliceStore
    from medvision.inference import label_masks
    from medvision.train.evaluation import checkpoint_engine, split_case_ids

    folds = sorted(FOLDS.glob("fold_*/checkpoints/last.safetensors"))
    with SliceStore(str(STORE)) as store:
        for checkpoint in folds:
            engine, meta = checkpoint_engine(str(checkpoint), "cpu", "auto", "torch", 16)
            for case_id in split_case_ids(store, meta, "val"):
                if not case_id.startswith("Synth_"):
                    prepared = engine.prepare_stored(store.read_image(case_id))
                    truth = label_masks(store.read_label(case_id), engine.regions)[0][prepared.brain]
                    yield engine, prepared, truth


def _real_cases_with_the_shipped_model():
    """The same for the shipped model on every labelled real case of ../shared/data (cases it was trained
    on: this measures how well focus approximates the full run, not how the model generalises)."""
    from medvision.data.readers import load_case
    from medvision.inference import Predictor, label_masks

    engine = Predictor(CHECKPOINT, device="cpu", backend="torch").engine
    folders = [REAL_CASE, *sorted((REAL_CASE.parent / "brats2018_dev").iterdir())]
    for folder in folders:
        case = load_case(folder)
        prepared = engine.prepare_case(case.image)
        crop = case.label[prepared.box]
        yield engine, prepared, label_masks(crop, engine.regions)[0][prepared.brain]


def quality(bars: list[float], samples: int, report) -> None:
    """Per bar, over real cases: uncertainty left out where no dropout pass ran (skipped slices and outside
    the in-plane window), AUROC of uncertainty for wrong voxels with and without focus, and the share of the
    brain slices' network input that still gets dropout passes."""
    from medvision.inference import label_masks
    from medvision.inference.forward import focus_slices, window_mask
    from medvision.inference.geometry import uncrop
    from medvision.train.calibration import auroc

    rows: dict[float, list[tuple[float, ...]]] = {bar: [] for bar in bars}
    full_auroc: list[float] = []
    held_out = any(FOLDS.glob("fold_*/checkpoints/last.safetensors")) and STORE.exists()
    cases = _cases_of_folds() if held_out else _real_cases_with_the_shipped_model()
    for engine, prepared, truth in cases:
        plain = engine.predict(prepared).probabilities
        full = engine.predict(prepared, mc_samples=samples, seed=0)
        wrong = label_masks(full.label, engine.regions)[0][prepared.brain] != truth
        full_auroc.append(auroc(full.uncertainty[prepared.brain], wrong))
        brain_slices = np.flatnonzero(prepared.has_brain)
        total = float(full.uncertainty.sum())
        for bar in bars:
            kept = focus_slices(plain[0], brain_slices, bar)
            run = np.zeros(full.uncertainty.shape, dtype=bool)
            for batch, window in engine.focus_plan(plain[0], kept, bar, prepared):
                run[batch] = uncrop(prepared, window_mask(prepared, window))
            left_out = float(full.uncertainty[~run].sum()) / total if total else 0.0
            worst = float(full.uncertainty[~run].max()) if (~run).any() else 0.0
            focused = engine.predict(prepared, mc_samples=samples, seed=0, mc_focus=bar, plain=plain)
            wrong_f = label_masks(focused.label, engine.regions)[0][prepared.brain] != truth
            score = auroc(focused.uncertainty[prepared.brain], wrong_f)
            slices = kept.size / max(brain_slices.size, 1)
            area = float(run[kept].mean()) if kept.size else 0.0  # of the crop, not the padded input
            rows[bar].append((left_out, worst, score, slices, area))
    where = (
        "held-out real cases of the fold models"
        if held_out
        else "real cases, the shipped model (trained on them)"
    )
    report(
        f"- quality: {len(full_auroc)} {where}, {samples} passes, all four modalities; AUROC of uncertainty "
        f"for wrong WT voxels without focus: mean {np.nanmean(full_auroc):.3f}"
    )
    for bar, values in rows.items():
        left, worst, score, slices, area = (np.array(column) for column in zip(*values, strict=True))
        report(
            f"- focus at p >= {bar:g} (slice margin forward.MC_FOCUS_MARGIN, in-plane window "
            f"forward.MC_FOCUS_CONTEXT): uncertainty left out mean {left.mean():.2%} (worst case "
            f"{left.max():.2%}), largest spread left out {worst.max():.3f}, "
            f"AUROC mean {np.nanmean(score):.3f}, "
            f"slices with passes mean {slices.mean():.0%}, their windows' share of the brain crop mean "
            f"{area.mean():.0%} (crop voxels that get passes {np.mean(slices * area):.0%})"
        )


def timing(bar: float, samples: int, rounds: int, report) -> None:
    """Full MC vs focused MC on the real case, the plain volume cached for the focused way."""
    from medvision.data.readers import load_case
    from medvision.inference import Predictor

    case = load_case(REAL_CASE)
    predictor = Predictor(CHECKPOINT, device="cpu")
    predictor.predict_volume(case, mc_samples=2, seed=0)  # warm-up: threads, allocator, prepared case
    times: dict[str, list[float]] = {"every slice": [], "focused": []}
    for _ in range(rounds):
        predictor.clear_cache()
        start = time.perf_counter()
        full = predictor.predict_volume(case, mc_samples=samples, seed=0)
        times["every slice"].append(time.perf_counter() - start)
        predictor.clear_cache()
        predictor.predict_volume(case)  # the page's prediction, there before uncertainty is asked for
        start = time.perf_counter()
        focused = predictor.predict_volume(case, mc_samples=samples, seed=0, mc_focus=bar)
        times["focused"].append(time.perf_counter() - start)
    report(f"- CPU: predictor: {predictor.describe()}")
    report(
        f"- timing: MC dropout, {samples} passes over BraTS2021_00006 (240x240x155), {rounds} rounds per "
        f"way, alternating; focus at p >= {bar:g} with the plain volume cached"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        report(f"- {name}: median {medians[name]:.1f} s ({', '.join(f'{x:.1f}' for x in t)})")
    report(f"- ratio: every slice / focused = {medians['every slice'] / medians['focused']:.2f}x")
    tumour = full.label > 0
    report(
        f"- this case: case uncertainty score {full.uncertainty_score:.4f} every slice vs "
        f"{focused.uncertainty_score:.4f} focused; predicted WT voxels {int(tumour.sum())} vs "
        f"{int((focused.label > 0).sum())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=6, help="MC passes (the Predict page's default: 6)")
    parser.add_argument("--bars", type=float, nargs="+", default=[0.02, 0.05, 0.2])
    parser.add_argument("--rounds", type=int, default=2, help="timed volumes per way")
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="in-plane context in pixels (default forward.MC_FOCUS_CONTEXT)",
    )
    parser.add_argument(
        "--no-patch-minimum",
        action="store_true",
        help="let the in-plane window be smaller than the training patch (to measure what that costs)",
    )
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--timing-only", action="store_true")
    from bench_report import add_report_flags

    add_report_flags(parser)
    args = parser.parse_args()
    from bench_report import Reporter, finish_from_args, machine_calibration

    from medvision.inference import forward
    from medvision.inference.forward import MC_FOCUS_PROBABILITY
    from medvision.precision import cpu_kind

    if args.context is not None:
        forward.MC_FOCUS_CONTEXT = args.context
    if args.no_patch_minimum:
        forward.MC_FOCUS_PATCH_MINIMUM = False
    calibration, load_before = machine_calibration(), os.getloadavg()
    report = Reporter()
    report(f"- CPU: {cpu_kind()}")
    report(
        f"- in-plane window: context {forward.MC_FOCUS_CONTEXT} px, at least the training patch: "
        f"{forward.MC_FOCUS_PATCH_MINIMUM}"
    )
    if not args.timing_only:
        quality(args.bars, args.samples, report)
    if not args.quality_only:
        if not REAL_CASE.is_dir():
            raise SystemExit("timing needs ../shared/data/brats2021_00006")
        timing(MC_FOCUS_PROBABILITY, args.samples, args.rounds, report)
    finish_from_args(
        "mc_focus (bench/mc_focus.py)",
        report,
        args,
        calibration=calibration,
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
