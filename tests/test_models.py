"""Tests for medvision.models: exact parameter counts, shapes, attention maps, validation, AMP, MC dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medvision.models import AttentionUNet, build_model, mc_dropout_mode

TINY = {"in_channels": 4, "out_channels": 3, "base_filters": 4, "depth": 2, "dropout": 0.2, "attention": True}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gate_params(skip: int) -> int:
    """W_g and W_x (1x1 conv with bias + BN, skip -> skip/2 each) and psi (1x1 conv + BN to 1 channel)."""
    inter = skip // 2
    return 2 * (skip * inter + inter + 2 * inter) + (inter + 1 + 2)


def test_original_network_has_exactly_7852061_parameters() -> None:
    model = AttentionUNet(
        in_channels=4, out_channels=1, base_filters=32, depth=4, dropout=0.2, attention=True
    )
    assert n_params(model) == 7_852_061


def test_parameter_count_variants() -> None:
    # Three outputs add 2 * (32 weights + 1 bias) in the 1x1 head; no gates removes exactly the gate params.
    assert n_params(AttentionUNet()) == 7_852_061 + 2 * 33
    plain = AttentionUNet(in_channels=4, out_channels=1, attention=False)
    assert n_params(plain) == 7_852_061 - sum(gate_params(s) for s in (32, 64, 128, 256))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_and_attention_shapes(depth: int, out_channels: int) -> None:
    model = AttentionUNet(4, out_channels, base_filters=4, depth=depth).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
        plain = model(x)
    assert logits.shape == (2, out_channels, 32, 32)
    assert len(maps) == depth
    # Deepest first: maps[i] has side 32 / 2**(depth - 1 - i); the last one is full resolution.
    for i, alpha in enumerate(maps):
        side = 32 // 2 ** (depth - 1 - i)
        assert alpha.shape == (2, 1, side, side)
        assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    assert torch.equal(plain, logits)


def test_without_attention_returns_no_maps() -> None:
    model = AttentionUNet(**{**TINY, "attention": False}).eval()
    logits, maps = model(torch.randn(1, 4, 32, 32), return_attention=True)
    assert logits.shape == (1, 3, 32, 32) and maps == []
    assert not any("gate" in name for name, _ in model.named_parameters())


def test_config_round_trip_through_build_model() -> None:
    model = AttentionUNet(**TINY)
    assert model.config == TINY
    rebuilt = build_model(dict(model.config))
    assert rebuilt.config == model.config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    assert build_model({}).config == AttentionUNet().config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"out_channels": 0},
        {"in_channels": 2.0},
        {"in_channels": True},
        {"base_filters": 1},
        {"depth": 0},
        {"depth": 9},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"dropout": "0.2"},
        {"attention": 1},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AttentionUNet(**{**TINY, **kwargs})


def test_build_model_rejects_unknown_keys_and_non_dicts() -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_model({**TINY, "width": 3})
    with pytest.raises(ValueError):
        build_model([("depth", 2)])  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(1, 4, 30, 32), (1, 4, 32, 34), (1, 3, 32, 32), (4, 32, 32)])
def test_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        AttentionUNet(**TINY)(torch.randn(*shape))


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = AttentionUNet(**TINY).eval()
    x = torch.randn(2, 4, 32, 32)
    expected = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu_is_finite_and_close() -> None:
    torch.manual_seed(0)
    model = AttentionUNet(**TINY).eval()
    x = torch.randn(2, 4, 32, 32)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, maps = model(x, return_attention=True)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all() and all(torch.isfinite(m.float()).all() for m in maps)
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_train_step_gives_finite_gradients() -> None:
    model = AttentionUNet(**TINY).train()
    loss = model(torch.randn(2, 4, 32, 32)).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_eval_is_deterministic() -> None:
    model = AttentionUNet(**TINY).eval()
    x = torch.randn(1, 4, 32, 32)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("start_training", [False, True])
def test_mc_dropout_mode_samples_dropout_only_and_restores(start_training: bool) -> None:
    torch.manual_seed(0)
    model = AttentionUNet(**{**TINY, "dropout": 0.5})
    model.train(start_training)
    x = torch.randn(1, 4, 32, 32)
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with mc_dropout_mode(model) as same:
        assert same is model
        for module in model.modules():
            if isinstance(module, nn.Dropout2d):
                assert module.training
            elif isinstance(module, nn.BatchNorm2d):
                assert not module.training
        with torch.no_grad():
            a, b = model(x), model(x)
        assert not torch.equal(a, b)  # dropout is sampling
    # BatchNorm used its running statistics and did not update them.
    for key, value in bn_before.items():
        assert torch.equal(model.state_dict()[key], value)
    assert all(m.training == start_training for m in model.modules())


def test_mc_dropout_mode_restores_after_exception() -> None:
    model = AttentionUNet(**TINY).eval()
    with pytest.raises(RuntimeError), mc_dropout_mode(model):
        raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())
