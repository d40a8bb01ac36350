"""Segmentation losses on logits (B, T, H, W) with {0, 1} targets of the same shape.

Every loss casts to float32 and runs with autocast disabled, so values are the same (and finite) whether the
forward pass ran in bf16/fp16 or fp32. One pure function, :func:`soft_dice_score`, is the Dice core shared by
:class:`DiceLoss` and :class:`CombinedLoss` (the layout of segmentation_models.pytorch losses/_functional.py).

Reductions (``reduction`` argument where offered):
- ``"mean"`` (default): mean over every term: (sample, channel) pairs for Dice, pixels for BCE and focal.
- ``"sum"``: sum of the same terms.
- ``"none"``: the unreduced terms, (B, T) for Dice and (B, T, H, W) for BCE and focal.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def soft_dice_score(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, dims: tuple[int, ...] = (2, 3)
) -> torch.Tensor:
    """Soft Dice ``(2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)`` reduced over ``dims``.

    With the default ``dims`` and (B, T, H, W) inputs this is one score per sample and channel, shape (B, T).
    ``smooth`` keeps the score defined (and equal to 1) when both prediction and target are empty.
    """
    intersection = (probs * target).sum(dim=dims)
    cardinality = probs.sum(dim=dims) + target.sum(dim=dims)
    return (2.0 * intersection + smooth) / (cardinality + smooth)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_number(
    name: str, value: Any, *, minimum: float, inclusive: bool = True, maximum: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < minimum or (not inclusive and value == minimum) or (maximum is not None and value > maximum):
        low = "[" if inclusive else "("
        high = f"{maximum}]" if maximum is not None else "inf)"
        raise ValueError(f"{name} must be in {low}{minimum}, {high}, got {value}")


def _prepare(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and cast both to float32 (the autocast-safe dtype for every reduction below)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, H, W), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} differs from logits shape {tuple(logits.shape)}"
        )
    return logits.float(), target.float()


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Unreduced BCE on float32 logits; ``pos_weight`` multiplies only the positive-target term."""
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")


def sigmoid_focal(
    logits: torch.Tensor, target: torch.Tensor, alpha: float | None, gamma: float
) -> torch.Tensor:
    """Unreduced sigmoid focal loss (Lin et al. 2017), as torchvision.ops.sigmoid_focal_loss.

    ``alpha`` weights positives (``1 - alpha`` weights negatives); ``None`` disables the weighting.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


class DiceLoss(nn.Module):
    """Multi-label soft Dice loss ``1 - dice`` per sample and channel, reduced by ``reduction``."""

    def __init__(self, smooth: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_number("smooth", smooth, minimum=0.0)
        _check_reduction(reduction)
        self.smooth = float(smooth)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits.device):
            logits, target = _prepare(logits, target)
            loss = 1.0 - soft_dice_score(torch.sigmoid(logits), target, self.smooth)
            return _reduce(loss, self.reduction)


class BCEWithPosWeightLoss(nn.Module):
    """Binary cross-entropy on logits with ``pos_weight`` applied to positive targets only."""

    def __init__(self, pos_weight: float = 1.3, reduction: str = "mean") -> None:
        super().__init__()
        _check_number("pos_weight", pos_weight, minimum=0.0, inclusive=False)
        _check_reduction(reduction)
        self.pos_weight = float(pos_weight)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits.device):
            logits, target = _prepare(logits, target)
            return _reduce(binary_cross_entropy(logits, target, self.pos_weight), self.reduction)


class FocalLoss(nn.Module):
    """Sigmoid focal loss; ``alpha`` in [0, 1] weights positives (None: no weighting), ``gamma`` >= 0."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if alpha is not None:
            _check_number("alpha", alpha, minimum=0.0, maximum=1.0)
        _check_number("gamma", gamma, minimum=0.0)
        _check_reduction(reduction)
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits.device):
            logits, target = _prepare(logits, target)
            return _reduce(sigmoid_focal(logits, target, self.alpha, self.gamma), self.reduction)


class CombinedLoss(nn.Module):
    """``dice_weight * dice + bce_weight * bce + focal_weight * focal`` (the original project's loss).

    - dice: mean over (sample, channel) of ``w * (1 - soft_dice)``, where ``w = small_tumour_weight`` if the
      target channel of that sample has between 1 and ``small_tumour_pixels - 1`` positive pixels, else 1.
      The weights are not renormalised, so when every term is small the Dice term is exactly
      ``small_tumour_weight`` times the unweighted one.
    - bce: mean BCE with ``pos_weight`` on positives; focal: mean sigmoid focal loss (``alpha``, ``gamma``).
    ``forward`` returns the scalar total; ``components`` also returns the three terms for logging.
    """

    def __init__(
        self,
        dice_weight: float = 0.5,
        bce_weight: float = 0.3,
        focal_weight: float = 0.2,
        pos_weight: float = 1.3,
        small_tumour_pixels: int = 500,
        small_tumour_weight: float = 1.5,
        smooth: float = 1.0,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("dice_weight", dice_weight),
            ("bce_weight", bce_weight),
            ("focal_weight", focal_weight),
        ):
            _check_number(name, value, minimum=0.0)
        if dice_weight + bce_weight + focal_weight <= 0:
            raise ValueError("at least one of dice_weight, bce_weight, focal_weight must be > 0")
        pixels = small_tumour_pixels
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
            raise ValueError(f"small_tumour_pixels must be an int >= 0, got {small_tumour_pixels!r}")
        _check_number("small_tumour_weight", small_tumour_weight, minimum=0.0, inclusive=False)
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.focal_weight = float(focal_weight)
        self.small_tumour_pixels = small_tumour_pixels
        self.small_tumour_weight = float(small_tumour_weight)
        _check_number("smooth", smooth, minimum=0.0)
        self.smooth = float(smooth)
        # The sub-losses validate their own options (pos_weight, alpha, gamma).
        self.bce = BCEWithPosWeightLoss(pos_weight)
        self.focal = FocalLoss(alpha, gamma)

    def dice_weights(self, target: torch.Tensor) -> torch.Tensor:
        """(B, T) weights: ``small_tumour_weight`` where 0 < positive pixels < small_tumour_pixels, else 1."""
        positives = target.float().sum(dim=(2, 3))
        small = (positives > 0) & (positives < self.small_tumour_pixels)
        return torch.where(small, self.small_tumour_weight, 1.0).to(torch.float32)

    def components(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalar tensors ``dice`` (weighted Dice term), ``bce``, ``focal`` and ``total`` (with grad)."""
        with _no_autocast(logits.device):
            logits, target = _prepare(logits, target)
            dice = 1.0 - soft_dice_score(torch.sigmoid(logits), target, self.smooth)
            dice = (self.dice_weights(target) * dice).mean()
            bce = self.bce(logits, target)
            focal = self.focal(logits, target)
            total = self.dice_weight * dice + self.bce_weight * bce + self.focal_weight * focal
        return {"dice": dice, "bce": bce, "focal": focal, "total": total}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.components(logits, target)["total"]
