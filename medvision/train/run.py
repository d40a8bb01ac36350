"""One training run in a run directory: lock it, prepare data, train, and always leave a truthful status.

``run_training`` is what ``python -m medvision train`` (and the app's background process) calls. It works
the same under torchrun: every rank trains, rank 0 alone locks the directory and writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvision.atomic import write_text_atomic
from medvision.data.splits import load_splits, make_splits, save_splits
from medvision.data.store import SliceStore, is_store, prepare_store
from medvision.errors import MedVisionError
from medvision.train import distributed as dist_utils
from medvision.train import rundir
from medvision.train.callbacks import MetricsLogger, SampleWriter, StatusUpdater
from medvision.train.config import TrainConfig
from medvision.train.trainer import Trainer

logger = logging.getLogger(__name__)

# Fields a resumed run may change: they decide speed or length, not what is learnt per step.
RESUME_OVERRIDABLE = (
    "epochs", "device", "workers", "threads", "compile", "in_memory", "memory_budget_gb", "log_every",
)
STORE_NAME = "store.h5"


class StopRequested(MedVisionError):
    """SIGTERM arrived before the training loop started."""


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of ``run_dir`` with the allowed ``overrides`` (None values mean 'not given')."""
    saved = rundir.read_json(Path(run_dir) / rundir.CONFIG_FILE)
    if not isinstance(saved, dict) or "train" not in saved:
        raise MedVisionError(f"{run_dir}: no {rundir.CONFIG_FILE} to resume from (start a new run instead)")
    config = TrainConfig.from_dict(saved["train"])
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    ignored = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE and getattr(config, k) != v)
    if ignored:
        logger.warning("resume keeps the saved settings; ignoring %s", ", ".join(ignored))
    return dataclasses.replace(config, **{k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})


def saved_data(run_dir: str | Path) -> tuple[str | None, str | None]:
    """(store path, original source) recorded in a run's config.json."""
    saved = rundir.read_json(Path(run_dir) / rundir.CONFIG_FILE) or {}
    data = saved.get("data", {}) if isinstance(saved, dict) else {}
    return data.get("path") or data.get("source"), data.get("source")


def _has_progress(run_dir: Path) -> bool:
    return (run_dir / rundir.STATE_FILE).exists() or rundir.checkpoint_path(run_dir, "last").exists()


def _start_fresh(run_dir: Path) -> None:
    """Clear what an earlier attempt that never checkpointed left (metrics, samples)."""
    (run_dir / rundir.METRICS_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / rundir.SAMPLES_DIR, ignore_errors=True)


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed writer left behind (with the run's lock held, no live process owns them)."""
    for folder in (run_dir, run_dir / rundir.CHECKPOINT_DIR, run_dir / rundir.SAMPLES_DIR):
        for path in folder.glob(".*.tmp*"):  # .last.json.x1y2.tmp, .status.json.x1y2.tmp.json, ...
            path.unlink(missing_ok=True)


def _drop_lost_metrics(run_dir: Path, step: int) -> None:
    """Forget the metrics of steps after the saved state: the resumed run does those steps again."""
    records = rundir.read_metrics(run_dir)
    kept = [r for r in records if (r.get("step") or 0) <= step]
    if len(kept) < len(records):
        write_text_atomic(run_dir / rundir.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        logger.info("dropped %d metrics records of steps after %d", len(records) - len(kept), step)


def _log_traceback_to_file(log_handler: tuple[logging.Handler, int] | None) -> None:
    """The current exception's traceback, into train.log only (the console gets the one-line message)."""
    if log_handler is not None:
        trace = traceback.format_exc()
        log_handler[0].handle(logging.LogRecord(__name__, logging.ERROR, __file__, 0, "%s", (trace,), None))


def _attach_log_file(run_dir: Path) -> tuple[logging.Handler, int]:
    package = logging.getLogger("medvision")
    handler = logging.FileHandler(run_dir / rundir.LOG_FILE)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    previous = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    return handler, previous


def _prepare_data(data: str | Path, run_dir: Path, workers: int) -> Path:
    data = Path(data)
    if is_store(data):
        return data
    target = run_dir / STORE_NAME
    if is_store(target):
        with SliceStore(target) as store:
            if store.source == str(data.resolve()):
                logger.info("reusing the store %s prepared earlier from %s", target, data)
                return target
    logger.info("preparing %s into %s", data, target)
    return prepare_store(data, target, workers=workers, progress=False)


def run_training(
    config: TrainConfig,
    run_dir: str | Path,
    data: str | Path | None,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    prepare_workers: int = 2,
) -> str:
    """Train ``config`` on ``data`` (a store, or any source: prepared into <run_dir>/store.h5 first).

    Returns the final state ("finished" or "stopped"). Raises RunBusyError if another live process
    uses ``run_dir``; any failure is recorded in status.json ("failed" + message) and train.log
    (traceback) and re-raised.
    """
    run_dir = Path(run_dir)
    ctx = dist_utils.setup(config.device)
    lock: rundir.RunLock | None = None
    owned = False
    log_handler: tuple[logging.Handler, int] | None = None
    status: StatusUpdater | None = None
    trainer: Trainer | None = None
    base: dict[str, Any] = {
        "pid": os.getpid(),
        "launcher_pid": os.getppid() if ctx.distributed else None,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "started": time.time(),
        "preset": config.preset,
    }
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def early_stop(signum: int, frame: Any) -> None:
        raise StopRequested("stopped by SIGTERM before training started")

    try:
        signal.signal(signal.SIGTERM, early_stop)
    except ValueError:  # not the main thread: no signal handling
        previous_sigterm = None
    try:
        problem = None
        store_path = None
        source = str(data) if data is not None else None
        if ctx.is_main:
            try:
                lock = rundir.RunLock(run_dir).acquire()
                _remove_stale_temporaries(run_dir)
                if resume and data is None:
                    data, source = saved_data(run_dir)
                if data is None:
                    raise MedVisionError("no training data given (--data)")
                if not resume and _has_progress(run_dir):
                    raise MedVisionError(
                        f"{run_dir} already holds a training run; pass --resume to continue it "
                        "or choose a new run directory"
                    )
                if not resume:
                    _start_fresh(run_dir)
                log_handler = _attach_log_file(run_dir)
                info = {"train": config.to_dict(), "data": {"source": source},
                        "init_from": str(init_from) if init_from else None, "world_size": ctx.world_size,
                        "created": time.time()}
                rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, info)
                status = StatusUpdater(run_dir, base)
                rundir.write_status(run_dir, "running", **base, epoch=0, step=0, total_steps=None)
                owned = True  # from here on, failures are this run's and go into its status
                store_path = _prepare_data(data, run_dir, prepare_workers)
                with SliceStore(store_path) as store:
                    info["data"].update(path=str(store_path), fingerprint=store.fingerprint)
                rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, info)
            except BaseException as error:
                problem = str(error) or type(error).__name__
                raise
            finally:
                if ctx.distributed:
                    dist_utils.broadcast_object(problem, ctx)
        else:
            problem = dist_utils.broadcast_object(None, ctx)
            if problem is not None:
                raise MedVisionError(problem)
        store_path = Path(dist_utils.broadcast_object(str(store_path) if store_path else None, ctx))

        with SliceStore(store_path) as store:
            data_info = {"source": source, "path": str(store_path),
                         "fingerprint": store.fingerprint}
            case_ids = list(store.case_ids)
        splits_file = run_dir / rundir.SPLITS_FILE
        if resume and splits_file.exists():
            splits = load_splits(splits_file)
        else:
            splits = make_splits(case_ids, config.split_fractions, config.split_seed)
            if ctx.is_main:
                save_splits(splits_file, splits)
        resume_state = resume and (run_dir / rundir.STATE_FILE).exists()
        if resume and not resume_state:
            logger.info("nothing saved to resume in %s: starting from the beginning", run_dir)
        all_callbacks = [status, MetricsLogger(run_dir, config.log_every), SampleWriter(run_dir), *callbacks]
        trainer = Trainer(
            config, store_path, run_dir, splits=splits, data_info=data_info, ctx=ctx,
            callbacks=[c for c in all_callbacks if c is not None], resume=resume_state, init_from=init_from,
        )
        if ctx.is_main and resume_state:
            _drop_lost_metrics(run_dir, trainer.progress.step)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)  # fit() installs the graceful handler
        state = trainer.fit()
        if ctx.is_main and status is not None:
            status.write(trainer, state, early_stopped=trainer.progress.early_stopped, ended=time.time())
            p = trainer.progress
            logger.info("training %s at epoch %d, step %d", state, p.epoch, p.step)
        return state
    except (StopRequested, KeyboardInterrupt) as error:
        if ctx.is_main and owned:
            _final_status(run_dir, "stopped", base, trainer, str(error) or "interrupted")
        if isinstance(error, StopRequested):
            return "stopped"
        raise
    except BaseException as error:
        if ctx.is_main and owned:
            message = str(error) or type(error).__name__
            logger.error("training failed: %s", message)
            _log_traceback_to_file(log_handler)
            _final_status(run_dir, "failed", base, trainer, message)
        raise
    finally:
        if previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous_sigterm)
        if log_handler is not None:
            handler, level = log_handler
            logging.getLogger("medvision").removeHandler(handler)
            logging.getLogger("medvision").setLevel(level)
            handler.close()
        if lock is not None:
            lock.release()
        dist_utils.cleanup()


def _final_status(
    run_dir: Path, state: str, base: dict[str, Any], trainer: Trainer | None, error: str
) -> None:
    fields: dict[str, Any] = {**base, "error": error}
    if trainer is not None:
        p = trainer.progress
        fields.update(epoch=p.epoch, step=p.step, total_steps=trainer.total_steps, best_val_mean_dice=p.best)
    try:
        rundir.write_status(run_dir, state, **fields)
    except OSError:
        logger.exception("could not write %s", rundir.STATUS_FILE)
