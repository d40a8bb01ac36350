"""Benchmark: what the shipped ensemble costs against one of its networks alone, on the real case.

    python bench/ensemble_cost.py [--rounds 3] [--mc-samples 6] [--backend auto] [--dtype auto]
                                  [--note TEXT] [--no-record] [--under-load]

The shipped default model (checkpoints/default.*) is an ensemble of networks whose probabilities are
averaged (medvision.models.ensemble). Timed, alternating in one process on BraTS2021_00006
(240x240x155): the whole volume's prediction by the ensemble and by its first member alone (the same
weights, packed as a one-network model), and, where the ensemble sets T1 aside for all four modalities,
by the same ensemble with T1 used, each with the backend ``auto`` picks on this CPU; then focused
MC dropout with the plain volume cached (as on the Predict page), where the ensemble runs one member per
pass. Medians, their ratios and the CPU go to bench/RESULTS.md. Time it on a quiet machine.

An AVX-512 machine stands in for an AVX2 laptop with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
... --backend torch``: PyTorch's kernels then use AVX2 only and ``auto`` picks fp32, as there. ONNX Runtime
(what ``auto`` runs on such a laptop) has no such cap, so it would still use AVX-512 here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
CHECKPOINT = ROOT / "checkpoints" / "default.safetensors"


def _predictors(backend: str, dtype: str):
    """(ensemble predictor, predictor of its first member alone, the members that predict a four-modality
    case: a routed ensemble's general ones) with these options."""
    from medvision.checkpoint import load_checkpoint
    from medvision.inference import Predictor
    from medvision.models import ModelEnsemble

    ensemble = Predictor(CHECKPOINT, device="cpu", backend=backend, dtype=dtype)
    model, meta = load_checkpoint(CHECKPOINT)
    if not isinstance(model, ModelEnsemble):
        raise SystemExit(f"{CHECKPOINT} is not an ensemble; nothing to compare")
    member = model.members[0]
    member_meta = {**meta, "model": dict(member.config)}
    alone = Predictor.from_model(member, member_meta, device="cpu", backend=backend, dtype=dtype)
    return ensemble, alone, len(model.general), _with_t1(model, meta, backend, dtype)


def _with_t1(model, meta: dict, backend: str, dtype: str):
    """The same ensemble predicting all four modalities as given, or None when it sets none aside for them
    (the shipped one predicts them as FLAIR + T1ce + T2: what does that cost?)."""
    from medvision.data.case import MODALITIES
    from medvision.data.modality_sets import subset_name
    from medvision.inference import Predictor
    from medvision.models import build_model

    four = subset_name(MODALITIES)
    if four not in model.route_supersets:
        return None
    kept = {k: v for k, v in model.route_supersets.items() if k != four}
    config = {**model.config, "route_supersets": kept}
    as_given = build_model(config)
    as_given.load_state_dict(model.state_dict())
    options = {"device": "cpu", "backend": backend, "dtype": dtype}
    return Predictor.from_model(as_given, {**meta, "model": config}, **options)


def _seconds(predict) -> float:
    start = time.perf_counter()
    predict()
    return time.perf_counter() - start


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed volumes per way and kind")
    parser.add_argument("--mc-samples", type=int, default=6, help="MC passes (the Predict page's default)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    from bench_report import Reporter, add_report_flags, finish_from_args, machine_calibration

    add_report_flags(parser)
    args = parser.parse_args()
    from medvision.data.readers import load_case
    from medvision.inference.forward import MC_FOCUS_PROBABILITY
    from medvision.precision import cpu_kind

    if not REAL_CASE.is_dir():
        raise SystemExit("needs ../shared/data/brats2021_00006")
    calibration, load_before = machine_calibration(), os.getloadavg()
    report = Reporter()
    report(f"- CPU: {cpu_kind()}")
    case = load_case(REAL_CASE)
    ensemble, alone, members, with_t1 = _predictors(args.backend, args.dtype)
    ways = {"ensemble": ensemble, "one member": alone}
    if with_t1 is not None:
        ways["ensemble, T1 used"] = with_t1
    for predictor in ways.values():  # warm-up: ONNX export where auto picks it, threads, prepared case
        predictor.predict_volume(case)
    report(f"- ensemble: {ensemble.describe()}; alone: {alone.describe()}")
    plain: dict[str, list[float]] = {name: [] for name in ways}
    mc: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, predictor in ways.items():
            predictor.clear_cache()
            plain[name].append(_seconds(lambda p=predictor: p.predict_volume(case)))
            mc[name].append(
                _seconds(
                    lambda p=predictor: p.predict_volume(
                        case, mc_samples=args.mc_samples, seed=0, mc_focus=MC_FOCUS_PROBABILITY
                    )
                )
            )
    report(
        f"- what: BraTS2021_00006 (240x240x155), whole volume with the clean-up, {args.rounds} rounds per "
        f"way, alternating; then focused MC dropout ({args.mc_samples} passes, plain volume cached)"
    )
    for label, times in (("whole volume", plain), (f"MC dropout, {args.mc_samples} passes", mc)):
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            report(f"- {label}, {name}: median {medians[name]:.2f} s ({', '.join(f'{x:.2f}' for x in t)})")
        ratio = medians["ensemble"] / medians["one member"]
        report(f"- {label}: ensemble of {members} / one member = {ratio:.2f}x")
        if "ensemble, T1 used" in medians:
            ratio = medians["ensemble"] / medians["ensemble, T1 used"]
            report(f"- {label}: ensemble with T1 set aside (as shipped) / with T1 used = {ratio:.2f}x")
    name = "ensemble_cost (bench/ensemble_cost.py)"
    finish_from_args(name, report, args, calibration=calibration, load_before=load_before)


if __name__ == "__main__":
    main()
