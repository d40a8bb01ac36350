"""A tiny untrained regions model saved as a checkpoint, for app tests that run before (or without) the
shipped demo model: fast to load and predict with, same files and metadata as a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvision.checkpoint import save_checkpoint
from medvision.models import build_model


def save_tiny_checkpoint(path: Path, **meta: Any) -> Path:
    """Save AttentionUNet(4 -> 3 regions, base 4, depth 4) with seed 0 at ``path``; ``meta`` is added."""
    torch.manual_seed(0)
    config = {"in_channels": 4, "out_channels": 3, "base_filters": 4, "depth": 4, "dropout": 0.1}
    model = build_model({**config, "attention": True})
    save_checkpoint(path, model, {"target": "regions", "patch_size": [64, 64], **meta})
    return path
