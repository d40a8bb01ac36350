"""What a checkpoint says about its input and output: target, regions, neighbour slices, padding multiple,
and the label clean-up chosen for it.

Read from the checkpoint's metadata (or a nested training config), checked against the model's own
channel counts, so a checkpoint whose metadata and weights disagree fails with a message naming it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from medvision.data.case import MODALITIES
from medvision.data.regions import TARGET_TABLE
from medvision.errors import CheckpointError, InputDataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """The input/output contract of one model (see the module docstring)."""

    target: str
    regions: tuple[str, ...]
    neighbours: int  # slices each side stacked as extra input channels (2.5-D)
    multiple: int  # 2**depth: the network input's H and W must be multiples of this
    patch_size: tuple[int, int] | None  # the training patch (H, W), when the checkpoint records it
    # Trained with modality dropout: after the image channels come 4 availability planes, and any
    # non-empty subset of the modalities may be given (medvision.data.modality_sets).
    availability: bool = False
    # Whole-tumour pieces smaller than this fraction of the largest are dropped from the label (0: none);
    # recorded as ``postprocess.min_component_fraction`` when cross-validation chose it for this model.
    min_component_fraction: float = 0.0

    @property
    def image_channels(self) -> int:
        return len(MODALITIES) * (1 + 2 * self.neighbours)


def meta_value(meta: dict[str, Any], key: str) -> Any:
    """``meta[key]``, or the same key inside a nested training config (``meta["config"]``/``["train"]``)."""
    if key in meta:
        return meta[key]
    for nested in ("config", "train", "train_config"):
        value = meta.get(nested)
        if isinstance(value, dict) and key in value:
            return value[key]
    return None


def _target(meta: dict[str, Any], out_channels: int) -> str:
    where = meta.get("weights_file", "checkpoint")
    target = meta_value(meta, "target")
    if target is None:
        target = "regions" if out_channels == 3 else "wt"
        logger.info("checkpoint does not name its target; assuming %r from %d outputs", target, out_channels)
    if target not in TARGET_TABLE:
        raise CheckpointError(where, f"unknown target {target!r}")
    needed = TARGET_TABLE[target].channels
    if needed != out_channels:
        raise CheckpointError(
            where, f"target {target!r} needs {needed} outputs, the model has {out_channels}"
        )
    return str(target)


def takes_availability(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint (its metadata file alone, before any weights are loaded) accepts a subset of
    the modalities."""
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return _availability(meta, int(model.get("in_channels", len(MODALITIES))))


def check_modalities(availability: bool, available: tuple[str, ...], where: str) -> None:
    """InputDataError naming ``where`` when a model without availability planes is given a subset."""
    missing = [m for m in MODALITIES if m not in available]
    if missing and not availability:
        raise InputDataError(
            where,
            f"missing modality {', '.join(missing)}: this model needs all four; the shipped default "
            "model (trained with modality dropout) accepts any subset",
        )


def _availability(meta: dict[str, Any], in_channels: int) -> bool:
    """Whether the model takes availability planes: from the metadata, else from the channel count
    (4 * (1 + 2n) image channels is 4 times an odd number; with the 4 planes it is 4 times an even one)."""
    recorded = meta_value(meta, "modality_input")
    if recorded is not None:
        return recorded == "availability"
    return in_channels % (2 * len(MODALITIES)) == 0


def _neighbours(meta: dict[str, Any], in_channels: int, availability: bool) -> int:
    n_modalities = len(MODALITIES)
    image_channels = in_channels - (n_modalities if availability else 0)
    neighbours = meta_value(meta, "neighbours")
    if neighbours is None:
        # 4 * (1 + 2n) image channels -> n neighbour slices each side.
        neighbours = max((image_channels // n_modalities - 1) // 2, 0)
    neighbours = int(neighbours)
    if n_modalities * (1 + 2 * neighbours) != image_channels:
        planes = f" + {n_modalities} availability planes" if availability else ""
        raise CheckpointError(
            meta.get("weights_file", "checkpoint"),
            f"model takes {in_channels} input channels, neighbours={neighbours} gives "
            f"{n_modalities * (1 + 2 * neighbours)}{planes}",
        )
    return neighbours


def model_spec(model: nn.Module, meta: dict[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of ``model`` with checkpoint metadata ``meta``.

    Raises:
        CheckpointError: an unknown target, or a target or neighbour count the model's channels contradict.
    """
    config = dict(getattr(model, "config", {}))
    target = _target(meta, int(config.get("out_channels", 3)))
    patch = meta_value(meta, "patch_size")
    in_channels = int(config.get("in_channels", 4))
    availability = _availability(meta, in_channels)
    return ModelSpec(
        target=target,
        regions=TARGET_TABLE[target].regions,
        neighbours=_neighbours(meta, in_channels, availability),
        multiple=2 ** int(config.get("depth", getattr(model, "depth", 4))),
        patch_size=(int(patch[0]), int(patch[1])) if patch else None,
        availability=availability,
        min_component_fraction=_min_component_fraction(meta),
    )


def _min_component_fraction(meta: dict[str, Any]) -> float:
    recorded = (meta.get("postprocess") or {}).get("min_component_fraction", 0.0)
    try:
        fraction = float(recorded)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:
        raise CheckpointError(
            meta.get("weights_file", "checkpoint"),
            f"postprocess.min_component_fraction must be a number in [0, 1], got {recorded!r}",
        )
    return fraction
