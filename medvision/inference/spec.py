"""What a checkpoint says about its input and output: target, regions, neighbour slices, padding multiple.

Read from the checkpoint's metadata (or a nested training config), checked against the model's own
channel counts, so a checkpoint whose metadata and weights disagree fails with a message naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from medvision.data.case import MODALITIES
from medvision.data.regions import TARGET_TABLE
from medvision.errors import CheckpointError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """The input/output contract of one model (see the module docstring)."""

    target: str
    regions: tuple[str, ...]
    neighbours: int  # slices each side stacked as extra input channels (2.5-D)
    multiple: int  # 2**depth: the network input's H and W must be multiples of this
    patch_size: tuple[int, int] | None  # the training patch (H, W), when the checkpoint records it


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


def _neighbours(meta: dict[str, Any], in_channels: int) -> int:
    n_modalities = len(MODALITIES)
    neighbours = meta_value(meta, "neighbours")
    if neighbours is None:
        # 4 * (1 + 2n) input channels -> n neighbour slices each side.
        neighbours = max((in_channels // n_modalities - 1) // 2, 0)
    neighbours = int(neighbours)
    if n_modalities * (1 + 2 * neighbours) != in_channels:
        raise CheckpointError(
            meta.get("weights_file", "checkpoint"),
            f"model takes {in_channels} input channels, neighbours={neighbours} gives "
            f"{n_modalities * (1 + 2 * neighbours)}",
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
    return ModelSpec(
        target=target,
        regions=TARGET_TABLE[target].regions,
        neighbours=_neighbours(meta, int(config.get("in_channels", 4))),
        multiple=2 ** int(config.get("depth", getattr(model, "depth", 4))),
        patch_size=(int(patch[0]), int(patch[1])) if patch else None,
    )
