"""Log writers kept outside the training loop: metrics.jsonl, status.json progress, sample images.

A callback is any object with some of ``on_fit_start(trainer)``, ``on_epoch_start(trainer)``,
``on_step_end(trainer, info)``, ``on_epoch_end(trainer, record)``, ``on_fit_end(trainer, state)``.
The trainer calls them on rank 0 only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from medvision.train import rundir
from medvision.train.samples import save_samples

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Appends {"kind": "step"} records after the first step of a session and every ``every`` steps, and
    {"kind": "epoch"} records per epoch.

    Step records: epoch, step, total_steps, loss (mean over the window), lr, slices_per_s (training
    throughput of the window, all ranks), eta_s (remaining steps at this session's overall pace, which
    includes validation and checkpoint time), time. Epoch records add the validation results.
    """

    def __init__(self, run_dir: str | Path, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.run_dir = Path(run_dir)
        self.every = every
        self._reset_window()
        self._session_start = time.perf_counter()
        self._session_steps = 0

    def _reset_window(self) -> None:
        self._window_start = time.perf_counter()
        self._loss_sum: torch.Tensor | float = 0.0
        self._window_steps = 0
        self._window_slices = 0

    def _eta(self, trainer: Any) -> float | None:
        if self._session_steps == 0:
            return None
        pace = (time.perf_counter() - self._session_start) / self._session_steps
        return pace * max(trainer.total_steps - trainer.progress.step, 0)

    def on_fit_start(self, trainer: Any) -> None:
        self._session_start = time.perf_counter()
        self._session_steps = 0
        self._reset_window()

    def on_epoch_start(self, trainer: Any) -> None:
        self._reset_window()  # keep validation time out of the throughput

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        # Losses stay on the device until a record is written: no GPU sync per step.
        self._loss_sum = self._loss_sum + info["loss"].double()
        self._window_steps += 1
        self._window_slices += int(info["slices"])
        self._session_steps += 1
        # The first step of a session is written at once, so a user watching the run sees a loss seconds
        # after the launch instead of after `every` steps (on a 2-core CPU, 5 demo steps took 5-10 s).
        if trainer.progress.step % self.every == 0 or self._session_steps == 1:
            self._flush(trainer, info["lr"])

    def _flush(self, trainer: Any, lr: float) -> None:
        if self._window_steps == 0:
            return
        loss = float(self._loss_sum) / self._window_steps  # float() syncs once per window
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        rundir.append_metrics(
            self.run_dir,
            {
                "kind": "step",
                "epoch": trainer.progress.epoch + 1,
                "step": trainer.progress.step,
                "total_steps": trainer.total_steps,
                "loss": loss,
                "lr": lr,
                "slices_per_s": self._window_slices / elapsed,
                "eta_s": self._eta(trainer),
                "time": time.time(),
            },
        )
        self._reset_window()

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        rundir.append_metrics(
            self.run_dir, {"kind": "epoch", **record, "eta_s": self._eta(trainer), "time": time.time()}
        )


class StatusUpdater:
    """Refreshes status.json ("running", epoch, step, total_steps) at most every ``interval_s`` seconds."""

    def __init__(self, run_dir: str | Path, base: dict[str, Any], interval_s: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.base = base
        self.interval_s = interval_s
        self._last = 0.0

    def write(self, trainer: Any, state: str = "running", **fields: Any) -> None:
        p = trainer.progress
        rundir.write_status(
            self.run_dir,
            state,
            **self.base,
            epoch=p.epoch,
            step=p.step,
            total_steps=trainer.total_steps,
            best_val_mean_dice=p.best,
            **fields,
        )
        self._last = time.monotonic()

    def on_fit_start(self, trainer: Any) -> None:
        self.write(trainer)

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.write(trainer)

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.write(trainer)


class SampleWriter:
    """samples/epoch_XXX.png: the trainer's fixed validation slices, truth | prediction, per epoch."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / rundir.SAMPLES_DIR

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        flair, truth, pred = trainer.sample_predictions()
        if len(flair) == 0:
            return
        try:
            save_samples(self.dir / f"epoch_{record['epoch']:03d}.png", flair, truth, pred)
        except OSError as error:  # a full disk must not kill a training run over a picture
            logger.warning("could not write sample image: %s", error)
