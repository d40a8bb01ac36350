"""Multi-process training: torchrun with 2 CPU processes on gloo trains a tiny model to completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed

from medvision.checkpoint import load_checkpoint
from medvision.data.case import Case
from medvision.data.store import prepare_store
from medvision.train import rundir

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def blob_case(case_id: str, seed: int, shape=(6, 32, 32)) -> Case:
    """Square 'brain' with a cube tumour (ED around NCR around ET)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    image[:, :, 4:28, 4:28] = 50 + rng.standard_normal((4, shape[0], 24, 24))
    label = np.zeros(shape, np.uint8)
    y, x = rng.integers(10, 18, size=2)
    label[1:5, y : y + 8, x : x + 8] = 2
    label[2:4, y + 2 : y + 6, x + 2 : x + 6] = 1
    label[2:4, y + 3 : y + 5, x + 3 : x + 5] = 4
    image[:, label > 0] += 40
    return Case(case_id, image, np.eye(4), (1.0, 1.0, 1.0), label)


def test_torchrun_two_cpu_processes(tmp_path):
    store = prepare_store(
        [blob_case(f"Blob_{i}", i) for i in range(4)], tmp_path / "store.h5", workers=1, progress=False
    )
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medvision",
        "train",
        "--data",
        str(store),
        "--run-dir",
        str(run),
        "--preset",
        "demo",
        "--device",
        "cpu",
        "--amp",
        "off",
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
        "2",
        "--steps-per-epoch",
        "2",
        "--log-every",
        "1",
    ]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("training finished") == 1  # rank 0 reports, once

    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["world_size"] == 2 and status["step"] == 4
    steps = rundir.read_metrics(run, "step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # written once (rank 0), not per process
    assert all(r["slices_per_s"] > 0 for r in steps)
    epochs = rundir.read_metrics(run, "epoch")
    assert [r["epoch"] for r in epochs] == [1, 2]
    model, meta = load_checkpoint(rundir.checkpoint_path(run, "last"))
    assert meta["step"] == 4 and meta["train_config"]["batch_size"] == 2
    assert not any(key.startswith("module.") for key in model.state_dict())
    assert json.loads((run / rundir.CONFIG_FILE).read_text())["world_size"] == 2
    state = torch.load(run / rundir.STATE_FILE, weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # both ranks' RNG streams for --resume
