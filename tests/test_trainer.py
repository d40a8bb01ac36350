"""Trainer: a tiny run end to end, exact resume, SIGTERM, busy and failed runs, fine-tuning, evaluate CLI.

Everything runs on CPU with a tiny model (base_filters 4, depth 2) on 32x32 patches of a 4-case store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medvision.checkpoint import load_checkpoint
from medvision.data.case import Case
from medvision.data.store import prepare_store
from medvision.errors import CheckpointError, MedVisionError, RunBusyError
from medvision.train import rundir
from medvision.train.config import PRESETS, TrainConfig
from medvision.train.run import run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = TrainConfig(
    base_filters=4,
    depth=2,
    dropout=0.1,
    patch_size=(32, 32),
    batch_size=4,
    epochs=2,
    steps_per_epoch=2,
    log_every=1,
    workers=0,
    amp="off",
    device="cpu",
    augment="light",
    tumour_fraction=0.5,
    seed=3,
    warmup_steps=1,
    sample_slices=2,
)
STEP_KEYS = {"kind", "epoch", "step", "total_steps", "loss", "lr", "slices_per_s", "eta_s"}
EPOCH_KEYS = STEP_KEYS - {"loss", "slices_per_s"} | {"train_loss", "val", "val_loss", "val_mean_dice"}


def tiny_case(case_id: str, seed: int, shape=(8, 36, 40)) -> Case:
    """A hand-built 'brain' (ellipsoid of noisy tissue) with a nested tumour: ET core, NCR, ED rim."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    brain = ((y - h / 2) / (h * 0.42)) ** 2 + ((x - w / 2) / (w * 0.42)) ** 2 <= 1.0
    cy, cx, r = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3), rng.uniform(4, 7)
    dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2 + (2 * (z - d / 2)) ** 2)
    label = np.zeros(shape, np.uint8)
    label[(dist < r) & brain] = 2
    label[(dist < 0.6 * r) & brain] = 1
    label[(dist < 0.3 * r) & brain] = 4
    image = np.zeros((4, *shape), np.float32)
    for c in range(4):
        image[c] = np.where(brain, 100 + 10 * rng.standard_normal(shape) + 60 * (label > 0) * (c + 1), 0)
    return Case(case_id, image, np.eye(4), (1.0, 1.0, 1.0), label)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP spin-waiting on a busy 2-core machine makes a
    4-step run take 15 s instead of 0.5 s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    cases = [tiny_case(f"Tiny_{i:03d}", i) for i in range(4)]
    return prepare_store(cases, tmp_path_factory.mktemp("store") / "store.h5", workers=1, progress=False)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(rundir.checkpoint_path(run_dir, "last"))
    return model.state_dict()


class StopAt:
    """Callback asking the trainer to stop once it has done `step` steps (like a SIGTERM would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, info) -> None:
        if trainer.progress.step == self.step:
            trainer.request_stop()


# Config ------------------------------------------------------------------------------------------
def test_presets_and_overrides():
    seed = PRESETS["seed"]
    assert (seed.batch_size, seed.lr, seed.weight_decay, seed.scheduler) == (4, 1e-4, 1e-5, "plateau")
    assert (seed.target, seed.base_filters, seed.depth, seed.dropout) == ("necrotic", 32, 4, 0.2)
    assert (seed.amp, seed.channels_last, seed.early_stop_patience) == ("fp16", False, 20)
    assert seed.patch_size == (240, 240) and seed.tumour_fraction is None
    assert (seed.split_fractions, seed.split_seed, seed.out_channels) == ((0.7, 0.15, 0.15), 88, 1)
    brats = PRESETS["brats"]
    assert brats.compile and brats.channels_last and brats.batch_size == 64 and brats.target == "regions"
    cfg = TrainConfig.from_preset("demo", lr=0.01, epochs=None)
    assert cfg.lr == 0.01 and cfg.epochs == PRESETS["demo"].epochs and cfg.preset == "demo"
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(patch_size=(100, 128), depth=4)
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target="everything")
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.from_preset("fast")


# A run end to end --------------------------------------------------------------------------------
def test_tiny_run_finishes_with_logs_checkpoints_and_samples(store, tmp_path):
    run = tmp_path / "run"
    assert run_training(TINY, run, store) == "finished"
    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["step"] == 4 and status["total_steps"] == 4
    assert status["error"] is None and status["pid"] == os.getpid()

    steps, epochs = rundir.read_metrics(run, "step"), rundir.read_metrics(run, "epoch")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in steps:
        assert set(record) >= STEP_KEYS and record["slices_per_s"] > 0 and np.isfinite(record["loss"])
    for record in epochs:
        assert set(record) >= EPOCH_KEYS
        assert set(record["val"]) == {"WT", "TC", "ET"}
        assert {"dice", "dice_slice", "precision", "recall"} <= set(record["val"]["WT"])
    assert epochs[-1]["eta_s"] == 0

    model, meta = load_checkpoint(rundir.checkpoint_path(run, "last"))
    assert meta["epoch"] == 2 and meta["step"] == 4 and meta["target"] == "regions"
    assert meta["normalisation"] == "zscore-brain-crop" and meta["neighbours"] == 0
    assert meta["modalities"] == ["flair", "t1", "t1ce", "t2"] and meta["patch_size"] == [32, 32]
    assert meta["data"]["fingerprint"] and set(meta["split"]["train"]) | set(meta["split"]["val"])
    assert meta["data"]["view"] == "axial"  # the store's slice view, which evaluation must cut along
    assert set(meta["val"]) == {"WT", "TC", "ET"}
    assert model(torch.zeros(1, 4, 32, 32)).shape == (1, 3, 32, 32)
    best_model, best_meta = load_checkpoint(rundir.checkpoint_path(run, "best"))
    assert best_meta["val_mean_dice"] == pytest.approx(max(r["val_mean_dice"] for r in epochs))

    state = torch.load(run / rundir.STATE_FILE, weights_only=True)
    assert state["progress"]["step"] == 4 and "optimizer" in state and "rng" in state
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert json.loads((run / rundir.CONFIG_FILE).read_text())["train"]["base_filters"] == 4
    assert "epoch 2/2" in (run / rundir.LOG_FILE).read_text()
    assert not rundir.is_run_busy(run)


def test_resume_is_exact(store, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_training(TINY, straight, store) == "finished"
    # Stop mid-epoch 2 (after step 3), then resume the rest.
    assert run_training(TINY, resumed, store, callbacks=[StopAt(3)]) == "stopped"
    assert rundir.read_status(resumed)["state"] == "stopped"
    assert torch.load(resumed / rundir.STATE_FILE, weights_only=True)["progress"]["step"] == 3
    assert run_training(TINY, resumed, store, resume=True) == "finished"

    assert rundir.read_status(resumed)["step"] == rundir.read_status(straight)["step"] == 4
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [[r["loss"] for r in rundir.read_metrics(run, "step")] for run in (straight, resumed)]
    assert losses[0] == pytest.approx(losses[1])


def test_resume_can_extend_epochs_and_refuses_silent_restart(store, tmp_path):
    run = tmp_path / "run"
    run_training(TINY, run, store)
    with pytest.raises(MedVisionError, match="--resume"):
        run_training(TINY, run, store)
    assert rundir.read_status(run)["state"] == "finished"  # the refused launch left the run alone
    longer = dataclasses.replace(TINY, epochs=3)
    assert run_training(longer, run, None, resume=True) == "finished"
    assert rundir.read_status(run)["step"] == 6


def test_busy_run_dir_is_refused(store, tmp_path):
    run = tmp_path / "run"
    with rundir.RunLock(run):
        rundir.write_status(run, "running")
        with pytest.raises(RunBusyError, match="being used by training process PID"):
            run_training(TINY, run, store)
        assert rundir.read_status(run)["state"] == "running"


def test_corrupt_store_marks_run_failed(store, tmp_path):
    broken = tmp_path / "broken.h5"
    shutil.copy(store, broken)
    with h5py.File(broken, "r+") as f:
        for case in f["cases"].values():  # a bit flip's worth of damage in every case
            case["image"][0, 0, 0, 0] = np.nan
    run = tmp_path / "run"
    with pytest.raises(MedVisionError, match="non-finite"):
        run_training(TINY, run, broken)
    status = rundir.read_status(run)
    assert status["state"] == "failed" and "non-finite" in status["error"]
    assert "Traceback" in (run / rundir.LOG_FILE).read_text()
    assert not rundir.is_run_busy(run)


def test_streamed_loader_path_matches_in_memory(store, tmp_path):
    memory, streamed = tmp_path / "memory", tmp_path / "streamed"
    run_training(TINY, memory, store)
    run_training(dataclasses.replace(TINY, in_memory="never"), streamed, store)
    a, b = weights(memory), weights(streamed)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_init_from_checkpoint(store, tmp_path):
    source = tmp_path / "source"
    run_training(TINY, source, store)
    ckpt = rundir.checkpoint_path(source, "last")
    one_step = dataclasses.replace(TINY, epochs=1, steps_per_epoch=1, lr=1e-9, warmup_steps=0, augment="none")
    tuned = tmp_path / "tuned"
    run_training(one_step, tuned, store, init_from=ckpt)
    before, after = weights(source), weights(tuned)
    conv = "encoders.0.0.weight"
    assert torch.allclose(before[conv], after[conv], atol=1e-6)  # started from the checkpoint
    assert load_checkpoint(rundir.checkpoint_path(tuned, "last"))[1]["init_from"] == str(ckpt)
    with pytest.raises(CheckpointError, match="do not fit"):
        run_training(dataclasses.replace(TINY, base_filters=8), tmp_path / "bad", store, init_from=ckpt)
    assert rundir.read_status(tmp_path / "bad")["state"] == "failed"


# Through the CLI ---------------------------------------------------------------------------------
def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medvision", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_sigterm_stops_after_step_with_checkpoint(store, tmp_path):
    run = tmp_path / "run"
    proc = _cli(
        "train",
        "--data",
        str(store),
        "--run-dir",
        str(run),
        "--preset",
        "demo",
        "--base-filters",
        "4",
        "--depth",
        "2",
        "--patch-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "100000",
        "--amp",
        "off",
        "--device",
        "cpu",
        "--log-every",
        "1",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = rundir.read_json(run / rundir.STATUS_FILE) or {}
            if (status.get("step") or 0) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("training did not start within 60 s")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    status = rundir.read_status(run)
    assert status["state"] == "stopped"
    model, meta = load_checkpoint(rundir.checkpoint_path(run, "last"))
    saved = torch.load(run / rundir.STATE_FILE, weights_only=True)["progress"]["step"]
    assert meta["step"] == saved == status["step"] >= 2


def test_evaluate_cli_prints_table_and_saves_json(store, tmp_path):
    run = tmp_path / "run"
    run_training(TINY, run, store)
    out = tmp_path / "metrics.json"
    proc = _cli(
        "evaluate",
        "--checkpoint",
        str(rundir.checkpoint_path(run, "best")),
        "--data",
        str(store),
        "--split",
        "all",
        "--out",
        str(out),
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "Region" in output and "HD95mm" in output and "PoolDice" in output
    for region in ("WT", "TC", "ET"):
        assert f"\n{region} " in output
    result = json.loads(out.read_text())
    assert result["cases"] == 4 and result["split"] == "all"
    assert set(result["regions"]) == {"WT", "TC", "ET"}
    assert {"dice", "iou", "precision", "recall", "specificity", "hd95", "dice_small", "pooled_dice"} <= set(
        result["regions"]["WT"]
    )
    assert [c["case_id"] for c in result["per_case"]] == [f"Tiny_{i:03d}" for i in range(4)]


def test_evaluate_cli_rejects_foreign_checkpoint(store, tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not weights")
    fake.with_suffix(".json").write_text("{}")
    proc = _cli("evaluate", "--checkpoint", str(fake), "--data", str(store))
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not a MedVision checkpoint" in output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fast_path_with_amp_and_resume(store, tmp_path):
    gpu = dataclasses.replace(TINY, device="cuda", amp="auto", channels_last=True, in_memory="always")
    run = tmp_path / "run"
    assert run_training(gpu, run, store, callbacks=[StopAt(3)]) == "stopped"
    assert run_training(gpu, run, store, resume=True) == "finished"
    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["step"] == 4 and status["device"].startswith("cuda")
    meta = load_checkpoint(rundir.checkpoint_path(run, "last"))[1]
    assert meta["step"] == 4 and np.isfinite(meta["val_mean_dice"])


def test_first_step_is_logged_at_once(store, tmp_path):
    """A user watching a run sees a loss after the first step, not only after log_every steps."""
    run = tmp_path / "run"
    assert run_training(dataclasses.replace(TINY, log_every=3), run, store) == "finished"
    assert [r["step"] for r in rundir.read_metrics(run, "step")] == [1, 3]
