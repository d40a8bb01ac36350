"""Distillation: train one network on a teacher's probabilities as well as on the labels.

Why: the shipped ensemble of three networks beats its members on the cross-validated real cases, but every
volume costs three networks (2.2x one network's time; bench/ensemble_cost.py). A student trained to
reproduce the ensemble's probabilities (Hinton et al. 2015, "Distilling the knowledge in a neural network")
can keep part of that gain at one network's cost. The teacher sees exactly the student's input (after crop,
augmentation and modality dropout), so it teaches what the ensemble predicts for the subset that is left.

The student's loss is ``(1 - w) * loss(logits, labels) + w * term(logits, teacher probabilities)``, with the
run's own Dice + BCE + focal loss for the labels (``w``: ``TrainConfig.distill_weight``). The teacher's term
(``TrainConfig.distill_loss``) is that same loss ("combined") or binary cross-entropy alone ("bce"). BCE is a
proper score, lowest where the student's probabilities are the teacher's; soft Dice is not: against a
target of 0.6 it is lowest at 1, so it pushes the student past the teacher's uncertain rim.

A teacher must take the student's input (target, regions, modality input, neighbours, normalisation) and
must not have been trained on a case the student validates or is tested on: a cross-validation fold's
student taught by a model that saw the fold's held-out cases would score cases it learnt from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvision.checkpoint import load_checkpoint
from medvision.errors import CheckpointError
from medvision.train.config import NORMALISATION, TrainConfig


def distillation_term(
    logits: torch.Tensor, taught: torch.Tensor, kind: str, loss_fn: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """The teacher's term of the student's loss: ``loss_fn`` ("combined") or BCE ("bce") against the
    teacher's probabilities ``taught``, in float32 outside autocast."""
    if kind == "combined":
        return loss_fn(logits, taught)
    if kind == "bce":
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.binary_cross_entropy_with_logits(logits.float(), taught.float())
    raise ValueError(f"distill_loss must be combined or bce, got {kind!r}")


def _split(meta: dict[str, Any], part: str) -> set[str]:
    split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
    return set(split.get(part) or [])


def check_teacher(
    meta: dict[str, Any], config: TrainConfig, splits: dict[str, list[str]], source: str | Path
) -> None:
    """CheckpointError naming ``source`` and the first thing that makes it unfit to teach this run."""
    wanted = {
        "target": config.target,
        "regions": list(config.region_names),
        "modality_input": config.modality_input,
        "neighbours": config.neighbours,
        "normalisation": NORMALISATION,
    }
    for key, value in wanted.items():
        if meta.get(key) != value:
            raise CheckpointError(
                source, f"cannot teach this run: its {key} is {meta.get(key)!r}, the run's is {value!r}"
            )
    in_channels = (meta.get("model") or {}).get("in_channels")
    if in_channels != config.in_channels:
        raise CheckpointError(
            source,
            f"cannot teach this run: it takes {in_channels} input channels, the run {config.in_channels}",
        )
    held_out = set(splits.get("val") or []) | set(splits.get("test") or [])
    seen = sorted(_split(meta, "train") & held_out)
    if seen:
        raise CheckpointError(
            source,
            f"cannot teach this run: it was trained on {', '.join(seen)}, which this run holds out "
            "(its scores on them would be the teacher's memory)",
        )


class Teacher:
    """A checkpoint's model, frozen in eval mode, that gives probabilities for a training batch."""

    def __init__(
        self,
        path: str | Path,
        config: TrainConfig,
        splits: dict[str, list[str]],
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        model, meta = load_checkpoint(path, device="cpu")
        check_teacher(meta, config, splits, path)
        self.source = str(path)
        self.meta = meta
        self.model: nn.Module = model.to(device, memory_format=memory_format).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        """What goes into the student's checkpoint metadata."""
        return {
            "checkpoint": self.source,
            "weights_sha256": self.meta.get("weights_sha256"),
            "kind": self.meta.get("kind"),
            "members": (self.meta.get("model") or {}).get("members", 1),
        }

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities (B, T, H, W), float32, without gradient (no_grad, not inference_mode:
        the loss keeps them for its backward pass)."""
        with torch.no_grad():
            return torch.sigmoid(self.model(images).float())
