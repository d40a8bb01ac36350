"""Pack several training runs' checkpoints into one ensemble checkpoint.

``python -m medvision.train.pack_ensemble OUT CHECKPOINT CHECKPOINT [...] [--half]``

The members must be the same network (model config) trained for the same input and output (target,
regions, modalities, modality input, neighbours, patch size, normalisation) on the same split: an
ensemble of models that saw other cases would make a cross-validation fold score cases one member was
trained on. The result is an ordinary MedVision checkpoint (medvision.models.ensemble.ModelEnsemble), so
``predict``, ``evaluate``, the calibration and post-processing studies and the app all take it as it is.
``--half`` stores the weights in float16 (half the file; they are run in fp32). ``--route SUBSET=CHECKPOINT``
(repeatable) adds a specialist: a run trained for that modality subset alone (``train --modality-dropout 1
--modality-subsets t1ce``), which then predicts every input of exactly that subset in place of the others;
``--route-superset LARGER=SMALLER`` predicts a larger subset as the smaller one, the other modalities set
aside: ``t1+t1ce=t1ce`` sends T1 + T1ce to the T1ce specialist without T1, ``flair+t1+t1ce+t2=flair+t1ce+t2``
gives all four to the general members without T1 (where the cross-validation scored the smaller input higher).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medvision.checkpoint import (
    RESERVED_KEYS,
    checkpoint_paths,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from medvision.data.modality_sets import parse_subset, subset_name
from medvision.data.views import checkpoint_view
from medvision.errors import CheckpointError
from medvision.models import AttentionUNet, ModelEnsemble

# What the members must agree on: the input and output contract, and the cases they were trained on.
SHARED_KEYS = (
    "model",
    "target",
    "regions",
    "modalities",
    "modality_input",
    "neighbours",
    "patch_size",
    "normalisation",
)
# Figures of one training run's own validation: per member in the ensemble's record, not at the top.
PER_RUN_KEYS = ("val", "val_loss", "val_mean_dice", "val_modalities", "best_val_mean_dice", "best_epoch")
# Where in training the members were taken: kept at the top when all agree (the last epoch of one schedule).
SCHEDULE_KEYS = ("epoch", "step", "total_steps")
COMBINE = "mean of the members' sigmoid probabilities"


def _split_cases(meta: dict[str, Any]) -> dict[str, list[str]]:
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    return {part: sorted(split.get(part) or []) for part in ("train", "val", "test")}


def check_members(metas: Sequence[dict[str, Any]], sources: Sequence[Path]) -> None:
    """CheckpointError naming the first member that differs from the first one in what must be shared."""
    first = metas[0]
    for meta, source in zip(metas, sources, strict=True):
        if checkpoint_view(meta) != "axial":
            # The ensemble averages its members slice by slice: every member must cut the same axial slices.
            raise CheckpointError(
                source, f"was trained on {checkpoint_view(meta)} slices; an ensemble packs axial runs"
            )
    for meta, source in zip(metas[1:], sources[1:], strict=True):
        for key in SHARED_KEYS:
            if meta.get(key) != first.get(key):
                theirs, ours = meta.get(key), first.get(key)
                problem = f"{key} differs from {sources[0].name}'s ({theirs!r} vs {ours!r})"
                raise CheckpointError(source, problem)
        if _split_cases(meta) != _split_cases(first):
            raise CheckpointError(source, f"trained on other cases than {sources[0]} (its split differs)")


def member_record(meta: dict[str, Any], source: Path) -> dict[str, Any]:
    config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    record = {"checkpoint": str(source), "weights_sha256": meta.get("weights_sha256")}
    record["seed"] = config.get("seed")
    record.update({key: meta[key] for key in (*PER_RUN_KEYS, *SCHEDULE_KEYS) if key in meta})
    return record


def pack(
    out: Path,
    checkpoints: Sequence[Path],
    *,
    half: bool = False,
    routes: Mapping[str, Sequence[Path]] | None = None,
    route_supersets: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the ensemble of ``checkpoints`` (and the specialists of ``routes``: subset name -> their
    checkpoints) to ``out`` (``out.safetensors`` + ``out.json``); its metadata."""
    routes = {subset_name(parse_subset(name)): list(paths) for name, paths in (routes or {}).items()}
    specialists = [(name, path) for name, paths in routes.items() for path in paths]
    if len(checkpoints) + len(specialists) < 2 or not checkpoints:
        raise ValueError("an ensemble needs two or more checkpoints, one or more of them for every subset")
    checkpoints = [*checkpoints, *(path for _, path in specialists)]
    loaded = [load_checkpoint(path) for path in checkpoints]
    for (model, _), path in zip(loaded, checkpoints, strict=True):
        if not isinstance(model, AttentionUNet):
            raise CheckpointError(path, "is an ensemble already; give the single runs' checkpoints")
    metas = [meta for _, meta in loaded]
    check_members(metas, checkpoints)
    general = len(checkpoints) - len(specialists)
    member_routes: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(specialists, start=general):
        member_routes.setdefault(name, []).append(index)
    ensemble = ModelEnsemble(
        members=len(loaded), routes=member_routes, route_supersets=route_supersets, **metas[0]["model"]
    )
    for member, (model, _) in zip(ensemble.members, loaded, strict=True):
        member.load_state_dict(model.state_dict())
    meta = {k: v for k, v in metas[0].items() if k not in RESERVED_KEYS and k not in PER_RUN_KEYS}
    for key in SCHEDULE_KEYS:
        if any(m.get(key) != metas[0].get(key) for m in metas):
            meta.pop(key, None)
    records = [member_record(m, p) for m, p in zip(metas, checkpoints, strict=True)]
    for record, (name, _) in zip(records[general:], specialists, strict=True):
        record["route"] = name
    weights_dtype = "float16" if half else "float32"
    meta.update(
        kind="ensemble",
        train_config={**(meta.get("train_config") or {}), "seed": [r["seed"] for r in records]},
        ensemble={"combine": COMBINE, "weights_dtype": weights_dtype, "members": records},
    )
    save_checkpoint(out, ensemble, meta, weights_dtype=weights_dtype)
    return read_checkpoint_meta(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvision.train.pack_ensemble", description=__doc__)
    parser.add_argument("out", type=Path, help="the ensemble checkpoint to write (name or name.safetensors)")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="two or more single runs' checkpoints")
    parser.add_argument("--half", action="store_true", help="store the weights in float16")
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="SUBSET=CHECKPOINT",
        help="a specialist for one modality subset (e.g. t1ce=runs/t1ce/checkpoints/last.safetensors)",
    )
    parser.add_argument(
        "--route-superset",
        action="append",
        default=[],
        metavar="LARGER=SMALLER",
        help="predict a larger subset as a smaller one, the other modalities set aside (e.g. t1+t1ce=t1ce)",
    )
    args = parser.parse_args(argv)
    supersets = dict(item.partition("=")[::2] for item in args.route_superset)
    routes: dict[str, list[Path]] = {}
    for item in args.route:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--route {item!r}: give SUBSET=CHECKPOINT")
        routes.setdefault(name, []).append(Path(path))
    if len(args.checkpoints) + sum(map(len, routes.values())) < 2:
        parser.error("give two or more checkpoints")
    try:
        meta = pack(args.out, args.checkpoints, half=args.half, routes=routes, route_supersets=supersets)
    except (CheckpointError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    weights, _ = checkpoint_paths(args.out)
    print(f"{weights}: {meta['model']['members']} members, {weights.stat().st_size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
