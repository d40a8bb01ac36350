"""Tests for medvision.checkpoint: round trip, wrappers, refusals of broken files, atomic replacement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import medvision.checkpoint as ckpt
from medvision.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    strip_wrapper_prefixes,
)
from medvision.errors import CheckpointError
from medvision.models import AttentionUNet

TINY = {"in_channels": 4, "out_channels": 3, "base_filters": 4, "depth": 2, "dropout": 0.2, "attention": True}


def trained_tiny(seed: int = 0, **overrides) -> AttentionUNet:
    """A tiny model whose weights and BatchNorm statistics differ from a fresh one."""
    torch.manual_seed(seed)
    model = AttentionUNet(**{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    return model


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, AttentionUNet]:
    model = trained_tiny()
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model, {"epoch": 3, "val": {"WT": {"dice": 0.8}}})
    return path, model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip(saved: tuple[Path, AttentionUNet]) -> None:
    path, model = saved
    assert path.is_file() and path.with_suffix(".json").is_file()
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, AttentionUNet) and not loaded.training
    assert loaded.config == model.config
    assert_same_weights(loaded, model)
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert meta["format"] == "medvision-checkpoint" and meta["version"] == 1
    assert meta["model"] == TINY and meta["epoch"] == 3 and meta["val"]["WT"]["dice"] == 0.8
    assert meta["weights_file"] == "best.safetensors" and len(meta["weights_sha256"]) == 64
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's private 0600


@pytest.mark.parametrize("form", ["best", "best.safetensors", "best.json"])
def test_path_with_or_without_extension(saved: tuple[Path, AttentionUNet], form: str) -> None:
    path, model = saved
    loaded, meta = load_checkpoint(path.parent / form, device="cpu")
    assert_same_weights(loaded, model)
    assert read_checkpoint_meta(path.parent / form) == meta
    assert checkpoint_paths(path.parent / form) == (path, path.with_suffix(".json"))


def test_save_without_extension_writes_both_files(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "sub" / "last", trained_tiny(), {})
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["last.json", "last.safetensors"]


def test_files_are_safetensors_and_json_not_pickle(saved: tuple[Path, AttentionUNet]) -> None:
    path, _ = saved
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "medvision-checkpoint"
    assert not data.startswith(b"\x80")  # pickle protocol marker
    json.loads(path.with_suffix(".json").read_text())


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
def test_wrapped_models_are_unwrapped(tmp_path: Path) -> None:
    model = trained_tiny()
    # DataParallel adds the same `module.` prefix as DDP; torch.compile adds `_orig_mod.` (compiled lazily).
    for wrapped in (nn.DataParallel(model), torch.compile(model), nn.DataParallel(torch.compile(model))):
        save_checkpoint(tmp_path / "w", wrapped, {})
        loaded, _ = load_checkpoint(tmp_path / "w")
        assert_same_weights(loaded, model)


def test_strip_wrapper_prefixes() -> None:
    state = {"module._orig_mod.head.weight": 1, "_orig_mod.module.head.bias": 2, "head.x": 3}
    assert strip_wrapper_prefixes(state) == {"head.weight": 1, "head.bias": 2, "head.x": 3}


def test_prefixed_weights_on_disk_still_load(saved: tuple[Path, AttentionUNet]) -> None:
    path, model = saved
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    save_file(state, str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["weights_sha256"] = ckpt.hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert_same_weights(load_checkpoint(path)[0], model)


def test_meta_validation_on_save(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "m", trained_tiny(), {"format": "x"})
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(tmp_path / "m", nn.Linear(2, 2), {})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", trained_tiny(), {"bad": object()})
    assert list(tmp_path.iterdir()) == []  # nothing written by any refused save


# ---- refusals ----


def rewrite_meta(path: Path, **changes) -> None:
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta.update(changes)
    meta_path.write_text(json.dumps(meta))


def test_missing_files(tmp_path: Path, saved: tuple[Path, AttentionUNet]) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    path, _ = saved
    path.unlink()
    with pytest.raises(CheckpointError, match="weights file not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="metadata file not found"):
        read_checkpoint_meta(path)


def test_truncated_weights_detected_by_checksum(saved: tuple[Path, AttentionUNet]) -> None:
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_with_matching_checksum(saved: tuple[Path, AttentionUNet], damage: str) -> None:
    # Even if the metadata was (re)written for the damaged bytes, the safetensors parser refuses them.
    path, _ = saved
    data = path.read_bytes()
    broken = {"truncate": data[: len(data) - 100], "garbage": b"\x00\xff" * 64, "empty": b""}[damage]
    path.write_bytes(broken)
    rewrite_meta(path, weights_sha256=ckpt.hashlib.sha256(broken).hexdigest())
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "JSON"),
        ("[1, 2, 3]", "not a MedVision checkpoint"),
        ('{"format": "other", "version": 1}', "not a MedVision checkpoint"),
        ('{"format": "medvision-checkpoint", "version": 2}', "unsupported checkpoint version"),
        ('{"format": "medvision-checkpoint", "version": 1}', "lacks the model config"),
    ],
)
def test_foreign_or_corrupt_meta(saved: tuple[Path, AttentionUNet], content: str, match: str) -> None:
    path, _ = saved
    path.with_suffix(".json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_weights_from_another_save_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", trained_tiny(0), {})
    save_checkpoint(tmp_path / "b", trained_tiny(1), {})
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="do not match their metadata"):
        load_checkpoint(tmp_path / "a")


@pytest.mark.parametrize(
    ("config_change", "match"),
    [
        ({"base_filters": 8}, "do not fit the model"),
        ({"depth": 3}, "do not fit the model"),
        ({"depth": 0}, "invalid model config"),
        ({"layers": 5}, "invalid model config"),
    ],
)
def test_wrong_shapes_or_config(saved: tuple[Path, AttentionUNet], config_change: dict, match: str) -> None:
    path, _ = saved
    rewrite_meta(path, model={**TINY, **config_change})
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


# ---- atomic replacement ----


def test_failed_write_never_replaces_good_checkpoint(
    saved: tuple[Path, AttentionUNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model = saved

    def disk_full(fd: int) -> None:  # the temp file holds partial data when the write fails
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, trained_tiny(seed=5), {"epoch": 99})
    monkeypatch.undo()
    loaded, meta = load_checkpoint(path)
    assert meta["epoch"] == 3
    assert_same_weights(loaded, model)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.json", "best.safetensors"]


def test_crash_between_weights_and_meta_loads_the_previous_checkpoint(
    saved: tuple[Path, AttentionUNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model = saved
    real_write = ckpt._atomic_write

    def fail_on_meta(target: Path, data: bytes) -> None:
        if target.suffix == ".json":
            raise KeyboardInterrupt  # the process dies after the weights moved into place
        real_write(target, data)

    monkeypatch.setattr(ckpt, "_atomic_write", fail_on_meta)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, trained_tiny(seed=6), {"epoch": 4})
    monkeypatch.undo()
    loaded, meta = load_checkpoint(path)  # new weights, old metadata: the kept .prev weights match it
    assert meta["epoch"] == 3
    assert_same_weights(loaded, model)
    path.with_name(path.name + ".prev").unlink()  # without them the mismatch is refused
    with pytest.raises(CheckpointError, match="do not match their metadata"):
        load_checkpoint(path)
