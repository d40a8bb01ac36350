"""medvision.precision: one decision of device and autocast precision for trainer, evaluate and Predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medvision import precision
from medvision.data.case import Case
from medvision.data.store import prepare_store
from medvision.inference import Predictor
from medvision.train.config import PRESETS, TrainConfig
from medvision.train.evaluation import evaluate_checkpoint
from medvision.train.trainer import Trainer
from tests.tiny_checkpoint import save_tiny_checkpoint

CPU = torch.device("cpu")


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU does (True) or does not (False) run bf16 natively, whatever this machine is."""

    def pretend(native: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)

    return pretend


@pytest.mark.parametrize(
    ("mode", "native", "expected"),
    [
        ("auto", True, torch.bfloat16),
        ("auto", False, None),  # emulated bf16 is ~9x slower than fp32 on AVX2: plain fp32
        ("off", True, None),
        ("bf16", False, torch.bfloat16),  # an explicit request is honoured (with a warning)
        ("bf16", True, torch.bfloat16),
        ("fp16", True, None),  # fp16 autocast is a GPU thing: fp32 on a CPU
    ],
)
def test_cpu_autocast_policy(cpu_bf16, mode: str, native: bool, expected: torch.dtype | None) -> None:
    cpu_bf16(native)
    assert precision.autocast_dtype(mode, CPU) is expected


def test_emulated_bf16_request_warns(cpu_bf16, caplog: pytest.LogCaptureFixture) -> None:
    cpu_bf16(False)
    with caplog.at_level("WARNING", logger="medvision.precision"):
        precision.autocast_dtype("bf16", CPU)
    assert "emulated" in caplog.text


def test_bad_modes_and_devices_are_value_errors() -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        precision.autocast_dtype("half", CPU)
    with pytest.raises(ValueError, match="device must be"):
        precision.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            precision.resolve_device("cuda")
        assert precision.resolve_device("auto") == CPU


def test_native_bf16_detection_agrees_with_torch_capability() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    native = precision.cpu_has_native_bf16.__wrapped__()
    if capability in ("DEFAULT", "AVX2"):  # no AVX-512 at all: bf16 cannot be native
        assert native is False
    kind = precision.cpu_kind()
    assert capability.lower() in kind and ("native bf16" in kind) == native


@pytest.mark.parametrize(("cap", "may_be_native"), [("AVX2", False), ("avx512_core", False), ("ALL", True)])
def test_onednn_isa_cap_below_bf16_means_fp32(
    monkeypatch: pytest.MonkeyPatch, cap: str, may_be_native: bool
) -> None:
    # ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 (measured 150x slower than its native bf16 on an
    # AVX-512 EPYC), so "auto" must not pick it, and the CPU's description says the cap is on.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    native = precision.cpu_has_native_bf16.__wrapped__()
    if not may_be_native:
        assert native is False
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        assert native == precision.cpu_has_native_bf16.__wrapped__()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    precision.cpu_has_native_bf16.cache_clear()
    try:
        assert f"oneDNN limited to {cap.upper()}" in precision.cpu_kind()
        if not may_be_native:
            assert precision.autocast_dtype("auto", CPU) is None
    finally:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        precision.cpu_has_native_bf16.cache_clear()


def test_presets_default_to_auto_precision() -> None:
    # The CPU demo preset and the GPU recipe let the machine decide; only "seed" pins the original fp16.
    assert PRESETS["demo"].amp == "auto" and PRESETS["brats"].amp == "auto"
    assert PRESETS["seed"].amp == "fp16"


def _blob_case(case_id: str, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    shape = (6, 32, 32)
    image = np.zeros((4, *shape), np.float32)
    image[:, :, 4:28, 4:28] = 100 + rng.standard_normal((4, 6, 24, 24))
    label = np.zeros(shape, np.uint8)
    label[2:4, 12:18, 12:18] = 2
    image[:, label > 0] += 50
    return Case(case_id, image, np.eye(4), (1.0, 1.0, 1.0), label)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = [_blob_case(f"Blob_{i}", i) for i in range(3)]
    return prepare_store(cases, tmp_path_factory.mktemp("store") / "s.h5", workers=1, progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_trainer_evaluate_and_predictor_ask_the_same_place(
    cpu_bf16, native: bool, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu_bf16(native)
    expected = torch.bfloat16 if native else None
    config = TrainConfig(
        base_filters=2,
        depth=2,
        patch_size=(32, 32),
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        workers=0,
        device="cpu",
    )
    splits = {"train": ["Blob_0"], "val": ["Blob_1"], "test": ["Blob_2"]}
    assert Trainer(config, tiny_store, tmp_path / "run", splits=splits).amp_dtype is expected

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    predictor = Predictor(checkpoint, device="cpu", backend="torch")
    assert predictor.amp_dtype is expected

    seen: list[torch.dtype | None] = []
    from medvision.inference import forward

    real_predict = forward.SegmentationEngine.predict

    def spy(engine, *args, **kwargs):
        seen.append(engine.backend.amp_dtype)
        return real_predict(engine, *args, **kwargs)

    monkeypatch.setattr(forward.SegmentationEngine, "predict", spy)
    evaluate_checkpoint(checkpoint, tiny_store, split="all", device="cpu", backend="torch", with_hd95=False)
    assert seen and all(dtype is expected for dtype in seen)
