"""Pack several training runs' checkpoints into one ensemble checkpoint.

``python -m medvision.train.pack_ensemble OUT CHECKPOINT CHECKPOINT [...] [--half]``

The members must be the same network (model config) trained for the same input and output (target,
regions, modalities, modality input, neighbours, patch size, normalisation) on the same split: an
ensemble of models that saw other cases would make a cross-validation fold score cases one member was
trained on. The result is an ordinary MedVision checkpoint (medvision.models.ensemble.ModelEnsemble), so
``predict``, ``evaluate``, the calibration and post-processing studies and the app all take it as it is.
``--half`` stores the weights in float16 (half the file; they are run in fp32).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvision.checkpoint import (
    RESERVED_KEYS,
    checkpoint_paths,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
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
PER_RUN_KEYS = ("val", "val_loss", "val_mean_dice", "best_val_mean_dice", "best_epoch")
# Where in training the members were taken: kept at the top when all agree (the last epoch of one schedule).
SCHEDULE_KEYS = ("epoch", "step", "total_steps")
COMBINE = "mean of the members' sigmoid probabilities"


def _split_cases(meta: dict[str, Any]) -> dict[str, list[str]]:
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    return {part: sorted(split.get(part) or []) for part in ("train", "val", "test")}


def check_members(metas: Sequence[dict[str, Any]], sources: Sequence[Path]) -> None:
    """CheckpointError naming the first member that differs from the first one in what must be shared."""
    first = metas[0]
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


def pack(out: Path, checkpoints: Sequence[Path], *, half: bool = False) -> dict[str, Any]:
    """Write the ensemble of ``checkpoints`` to ``out`` (``out.safetensors`` + ``out.json``); its metadata."""
    if len(checkpoints) < 2:
        raise ValueError("an ensemble needs two or more checkpoints")
    loaded = [load_checkpoint(path) for path in checkpoints]
    for (model, _), path in zip(loaded, checkpoints, strict=True):
        if not isinstance(model, AttentionUNet):
            raise CheckpointError(path, "is an ensemble already; give the single runs' checkpoints")
    metas = [meta for _, meta in loaded]
    check_members(metas, checkpoints)
    ensemble = ModelEnsemble(members=len(loaded), **metas[0]["model"])
    for member, (model, _) in zip(ensemble.members, loaded, strict=True):
        member.load_state_dict(model.state_dict())
    meta = {k: v for k, v in metas[0].items() if k not in RESERVED_KEYS and k not in PER_RUN_KEYS}
    for key in SCHEDULE_KEYS:
        if any(m.get(key) != metas[0].get(key) for m in metas):
            meta.pop(key, None)
    records = [member_record(m, p) for m, p in zip(metas, checkpoints, strict=True)]
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
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give two or more checkpoints")
    try:
        pack(args.out, args.checkpoints, half=args.half)
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    weights, _ = checkpoint_paths(args.out)
    print(f"{weights}: {len(args.checkpoints)} members, {weights.stat().st_size / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
