"""2-D Attention U-Net (Oktay et al. 2018) configured entirely by constructor arguments.

With the defaults of the original project (``in_channels=4, out_channels=1, base_filters=32, depth=4,
dropout=0.2, attention=True``) the network has exactly 7,852,061 parameters. That count pins down the
block arrangement: the 3x3 convolutions carry no bias (each is followed by BatchNorm, which makes a bias
redundant), while the transposed convolutions, the 1x1 convolutions of the attention gates and the output
head do; every gate is fed by the upsampled decoder feature (same channels as its skip) and has
``skip_channels // 2`` intermediate channels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

CONFIG_KEYS: tuple[str, ...] = (
    "in_channels",
    "out_channels",
    "base_filters",
    "depth",
    "dropout",
    "attention",
)
# The extra config key of an ensemble of AttentionUNets (medvision.models.ensemble): how many members.
ENSEMBLE_KEY = "members"
# An ensemble's specialists for one modality subset, and the larger subsets sent to them.
ROUTES_KEYS = ("routes", "route_supersets")


class ConvBlock(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU -> Dropout2d) twice."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
        super().__init__(*layers)


class AttentionGate(nn.Module):
    """Additive attention gate: scales the skip feature ``x`` by a coefficient map computed from ``x`` and
    the gating signal ``g`` (same spatial size). Returns the gated skip and the (B, 1, H, W) coefficients."""

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.psi(self.relu(self.w_g(g) + self.w_x(x)))
        return x * alpha, alpha


class UpBlock(nn.Module):
    """Transposed-conv upsampling, optional attention gate on the skip, concatenation, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.gate = AttentionGate(skip_channels, skip_channels, skip_channels // 2) if attention else None
        self.conv = ConvBlock(2 * skip_channels, skip_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        up = self.up(x)
        alpha = None
        if self.gate is not None:
            skip, alpha = self.gate(up, skip)
        return self.conv(torch.cat([skip, up], dim=1)), alpha


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass; True as a channel count is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


class AttentionUNet(nn.Module):
    """2-D Attention U-Net returning logits (B, out_channels, H, W).

    Encoder level ``i`` (0-based) has ``base_filters * 2**i`` channels for ``i < depth``; the bottleneck has
    ``base_filters * 2**depth``. H and W of the input must be divisible by ``2**depth``.

    ``forward(x, return_attention=True)`` returns ``(logits, maps)`` where ``maps`` holds one attention
    coefficient map (B, 1, h, w) per decoder level in decoder order, i.e. deepest first: ``maps[i]`` has
    spatial size ``(H, W) / 2**(depth - 1 - i)`` and ``maps[-1]`` is full resolution. With
    ``attention=False`` the list is empty.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        base_filters: int = 32,
        depth: int = 4,
        dropout: float = 0.2,
        attention: bool = True,
    ) -> None:
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        # Gates use skip_channels // 2 intermediate channels, so the shallowest skip needs at least 2.
        _check_int("base_filters", base_filters, 2 if attention else 1)
        _check_int("depth", depth, 1, 8)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if not isinstance(attention, bool):
            raise ValueError(f"attention must be a bool, got {attention!r}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_filters": base_filters,
            "depth": depth,
            "dropout": float(dropout),
            "attention": attention,
        }
        self.depth = depth

        widths = [base_filters * 2**i for i in range(depth)]
        self.encoders = nn.ModuleList()
        c_in = in_channels
        for width in widths:
            self.encoders.append(ConvBlock(c_in, width, dropout))
            c_in = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-1], 2 * widths[-1], dropout)
        self.decoders = nn.ModuleList(
            UpBlock(2 * width, width, dropout, attention) for width in reversed(widths)
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"expected input (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"H and W must be divisible by {factor} (2**depth), got {tuple(x.shape[-2:])}")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        maps: list[torch.Tensor] = []
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            x, alpha = decoder(x, skip)
            if alpha is not None:
                maps.append(alpha)
        logits = self.head(x)
        return (logits, maps) if return_attention else logits


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a network from a ``model.config``-style dict; unknown keys raise ValueError.

    A config with ``"members"`` is a :class:`~medvision.models.ensemble.ModelEnsemble` of that many
    AttentionUNets (``"routes"``: its specialists for one modality subset); without it, one AttentionUNet.
    """
    if not isinstance(config, dict):
        raise ValueError(f"model config must be a dict, got {type(config).__name__}")
    ensemble_keys = {ENSEMBLE_KEY, *ROUTES_KEYS} if ENSEMBLE_KEY in config else set()
    unknown = sorted(set(config) - set(CONFIG_KEYS) - ensemble_keys)
    if unknown:
        raise ValueError(f"unknown model config keys: {unknown}")
    if ENSEMBLE_KEY in config:
        from medvision.models.ensemble import ModelEnsemble  # the ensemble module imports this one

        return ModelEnsemble(**config)
    return AttentionUNet(**config)


@contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager for Monte-Carlo dropout: only dropout layers sample, BatchNorm stays in eval.

    The train/eval flag of every module is restored on exit, even after an exception.
    """
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    try:
        yield model
    finally:
        for module, training in previous:
            module.training = training
