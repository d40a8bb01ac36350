"""Tests for medvision.losses: hand-computed values on 2x2 tensors, ideal/worst cases, weighting, AMP."""

from __future__ import annotations

import math

import pytest
import torch

from medvision.losses import BCEWithPosWeightLoss, CombinedLoss, DiceLoss, FocalLoss, soft_dice_score

LN3 = math.log(3.0)
# sigmoid of these logits is exactly [[0.5, 0.75], [0.25, 0.5]].
LOGITS_2X2 = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]])
PROBS_2X2 = [0.5, 0.75, 0.25, 0.5]
TARGET_2X2 = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
TARGETS_FLAT = [1.0, 1.0, 0.0, 0.0]
ALL_LOSSES = [DiceLoss(), BCEWithPosWeightLoss(), FocalLoss(), CombinedLoss()]


def bce_by_hand(pos_weight: float) -> float:
    terms = [
        -pos_weight * math.log(p) if t else -math.log(1 - p)
        for p, t in zip(PROBS_2X2, TARGETS_FLAT, strict=True)
    ]
    return sum(terms) / 4


def focal_by_hand(alpha: float, gamma: float) -> float:
    terms = [
        alpha * (1 - p) ** gamma * -math.log(p) if t else (1 - alpha) * p**gamma * -math.log(1 - p)
        for p, t in zip(PROBS_2X2, TARGETS_FLAT, strict=True)
    ]
    return sum(terms) / 4


def dice_by_hand(smooth: float) -> float:
    intersection = sum(p * t for p, t in zip(PROBS_2X2, TARGETS_FLAT, strict=True))  # 0.5 + 0.75
    return 1 - (2 * intersection + smooth) / (sum(PROBS_2X2) + sum(TARGETS_FLAT) + smooth)


def perfect_logits(target: torch.Tensor, magnitude: float = 50.0) -> torch.Tensor:
    return (target * 2 - 1) * magnitude


def random_target(seed: int = 0, shape: tuple[int, ...] = (2, 3, 32, 32)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) > 0.5).float()


# ---- hand-computed values ----


@pytest.mark.parametrize("smooth", [0.0, 1.0, 2.5])
def test_dice_loss_hand_computed(smooth: float) -> None:
    loss = DiceLoss(smooth=smooth)(LOGITS_2X2, TARGET_2X2)
    assert loss.item() == pytest.approx(dice_by_hand(smooth), abs=1e-6)
    if smooth == 1.0:
        assert loss.item() == pytest.approx(0.3, abs=1e-6)  # 1 - (2 * 1.25 + 1) / (2 + 2 + 1)


@pytest.mark.parametrize("pos_weight", [1.0, 1.3, 3.0])
def test_bce_hand_computed(pos_weight: float) -> None:
    loss = BCEWithPosWeightLoss(pos_weight)(LOGITS_2X2, TARGET_2X2)
    assert loss.item() == pytest.approx(bce_by_hand(pos_weight), abs=1e-6)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.9, 1.0)])
def test_focal_hand_computed(alpha: float, gamma: float) -> None:
    loss = FocalLoss(alpha, gamma)(LOGITS_2X2, TARGET_2X2)
    assert loss.item() == pytest.approx(focal_by_hand(alpha, gamma), abs=1e-6)


def test_focal_without_alpha_is_unweighted() -> None:
    loss = FocalLoss(alpha=None, gamma=0.0)(LOGITS_2X2, TARGET_2X2)
    assert loss.item() == pytest.approx(bce_by_hand(1.0), abs=1e-6)


def test_combined_hand_computed_with_small_tumour_weight() -> None:
    # The 2x2 target has 2 positive pixels: a small tumour (0 < 2 < 500), so its Dice term counts 1.5 times.
    parts = CombinedLoss().components(LOGITS_2X2, TARGET_2X2)
    dice, bce, focal = 1.5 * dice_by_hand(1.0), bce_by_hand(1.3), focal_by_hand(0.25, 2.0)
    assert parts["dice"].item() == pytest.approx(dice, abs=1e-6)
    assert parts["bce"].item() == pytest.approx(bce, abs=1e-6)
    assert parts["focal"].item() == pytest.approx(focal, abs=1e-6)
    total = 0.5 * dice + 0.3 * bce + 0.2 * focal
    assert parts["total"].item() == pytest.approx(total, abs=1e-6)
    assert CombinedLoss()(LOGITS_2X2, TARGET_2X2).item() == pytest.approx(total, abs=1e-6)


# ---- ideal and worst cases ----


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=lambda f: type(f).__name__)
def test_ideal_case_is_zero(loss_fn: torch.nn.Module) -> None:
    target = random_target()
    target[0, 2] = 0  # an empty channel predicted empty is perfect too
    assert loss_fn(perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)


def test_worst_case_dice_is_one() -> None:
    target = torch.zeros(1, 1, 32, 32)
    target[..., :16, :] = 1
    loss = DiceLoss(smooth=1.0)(perfect_logits(1 - target), target)
    n = 32 * 32  # no overlap: dice = smooth / (n/2 + n/2 + smooth)
    assert loss.item() == pytest.approx(n / (n + 1), abs=1e-6)
    assert loss.item() == pytest.approx(1.0, abs=1e-3)
    assert DiceLoss(smooth=0.0)(perfect_logits(1 - target), target).item() == pytest.approx(1.0, abs=1e-6)


def test_worst_case_bce_and_focal_are_large_but_finite() -> None:
    target = random_target()
    logits = perfect_logits(1 - target)
    bce, focal = BCEWithPosWeightLoss(1.0)(logits, target), FocalLoss()(logits, target)
    # Every pixel is wrong by |logit| = 50: BCE ~ 50; focal ~ 50 * alpha_t (0.25 positives, 0.75 negatives).
    assert bce.item() == pytest.approx(50.0, rel=1e-4)
    positive_fraction = target.mean().item()
    expected_focal = 50.0 * (0.25 * positive_fraction + 0.75 * (1 - positive_fraction))
    assert focal.item() == pytest.approx(expected_focal, rel=1e-4)


# ---- weighting ----


def test_pos_weight_affects_only_positives() -> None:
    logits = torch.randn(2, 3, 8, 8)
    negatives = torch.zeros_like(logits)
    positives = torch.ones_like(logits)
    base, weighted = BCEWithPosWeightLoss(1.0), BCEWithPosWeightLoss(1.3)
    assert weighted(logits, negatives).item() == pytest.approx(base(logits, negatives).item(), rel=1e-6)
    assert weighted(logits, positives).item() == pytest.approx(1.3 * base(logits, positives).item(), rel=1e-6)


@pytest.mark.parametrize("weight", [1.5, 3.0])
def test_small_tumour_weight_scales_dice_exactly(weight: float) -> None:
    logits = torch.randn(2, 1, 32, 32)
    small = torch.zeros(2, 1, 32, 32)
    small[0, 0, :5, :5] = 1  # 25 positives
    small[1, 0, 10:20, 10:20] = 1  # 100 positives
    unweighted = CombinedLoss(small_tumour_weight=1.0, small_tumour_pixels=500).components(logits, small)
    weighted = CombinedLoss(small_tumour_weight=weight, small_tumour_pixels=500).components(logits, small)
    assert weighted["dice"].item() == pytest.approx(weight * unweighted["dice"].item(), rel=1e-6)
    assert weighted["bce"].item() == pytest.approx(unweighted["bce"].item(), rel=1e-6)
    delta = weighted["total"].item() - unweighted["total"].item()
    assert delta == pytest.approx(0.5 * (weight - 1) * unweighted["dice"].item(), rel=1e-5)


def test_small_tumour_weight_applies_per_sample_and_channel() -> None:
    logits = torch.randn(2, 2, 32, 32)
    target = torch.zeros(2, 2, 32, 32)
    target[0, 0, :5, :5] = 1  # 25 px: small
    target[0, 1, :, :20] = 1  # 640 px: large
    target[1, 0, :10, :10] = 1  # 100 px: small with threshold 500, not with threshold 100
    # target[1, 1] empty: never weighted
    per_term = DiceLoss(reduction="none")(logits, target)
    combined = CombinedLoss(small_tumour_pixels=500, small_tumour_weight=2.0).components(logits, target)
    weights = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    assert combined["dice"].item() == pytest.approx((weights * per_term).mean().item(), rel=1e-6)
    strict = CombinedLoss(small_tumour_pixels=100, small_tumour_weight=2.0).components(logits, target)
    weights = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    assert strict["dice"].item() == pytest.approx((weights * per_term).mean().item(), rel=1e-6)


# ---- reductions, functional core, dtype safety ----


def test_reductions() -> None:
    logits, target = torch.randn(2, 3, 8, 8), random_target(1, (2, 3, 8, 8))
    dice_terms = DiceLoss(reduction="none")(logits, target)
    assert dice_terms.shape == (2, 3)
    dice_sum = DiceLoss(reduction="sum")(logits, target)
    assert dice_sum.item() == pytest.approx(dice_terms.sum().item(), rel=1e-6)
    assert DiceLoss()(logits, target).item() == pytest.approx(dice_terms.mean().item(), rel=1e-6)
    for cls in (BCEWithPosWeightLoss, FocalLoss):
        terms = cls(reduction="none")(logits, target)
        assert terms.shape == logits.shape
        assert cls(reduction="sum")(logits, target).item() == pytest.approx(terms.sum().item(), rel=1e-5)


def test_soft_dice_score_is_shared_core() -> None:
    probs = torch.tensor(PROBS_2X2).reshape(1, 1, 2, 2)
    score = soft_dice_score(probs, TARGET_2X2, smooth=1.0)
    assert score.shape == (1, 1)
    assert score.item() == pytest.approx(0.7, abs=1e-6)
    assert soft_dice_score(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 1.0


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=lambda f: type(f).__name__)
def test_finite_and_float32_under_bf16_autocast(loss_fn: torch.nn.Module) -> None:
    conv = torch.nn.Conv2d(4, 3, 1)
    x = torch.randn(2, 4, 16, 16) * 100  # large logits stress bf16
    target = random_target(2, (2, 3, 16, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Same value as computing from the bf16 logits in float32 outside autocast.
    assert loss.item() == pytest.approx(loss_fn(logits.float(), target).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_accepts_integer_and_bool_targets() -> None:
    logits = torch.randn(1, 2, 4, 4)
    target = random_target(3, (1, 2, 4, 4))
    expected = CombinedLoss()(logits, target).item()
    assert CombinedLoss()(logits, target.bool()).item() == pytest.approx(expected)
    assert CombinedLoss()(logits, target.to(torch.uint8)).item() == pytest.approx(expected)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        DiceLoss()(torch.randn(1, 3, 4, 4), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError):
        CombinedLoss()(torch.randn(3, 4, 4), torch.ones(3, 4, 4))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (DiceLoss, {"smooth": -1.0}),
        (DiceLoss, {"reduction": "avg"}),
        (BCEWithPosWeightLoss, {"pos_weight": 0.0}),
        (BCEWithPosWeightLoss, {"pos_weight": -1.3}),
        (BCEWithPosWeightLoss, {"pos_weight": float("nan")}),
        (FocalLoss, {"alpha": 1.5}),
        (FocalLoss, {"alpha": -0.1}),
        (FocalLoss, {"gamma": -1.0}),
        (CombinedLoss, {"dice_weight": -0.5}),
        (CombinedLoss, {"dice_weight": 0.0, "bce_weight": 0.0, "focal_weight": 0.0}),
        (CombinedLoss, {"small_tumour_pixels": -1}),
        (CombinedLoss, {"small_tumour_pixels": 2.5}),
        (CombinedLoss, {"small_tumour_weight": 0.0}),
        (CombinedLoss, {"pos_weight": 0.0}),
        (CombinedLoss, {"gamma": "2"}),
    ],
)
def test_invalid_options_raise_value_error(cls: type, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)
