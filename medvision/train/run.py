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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.atomic import write_text_atomic
from medvision.data.splits import load_splits, make_splits, save_splits
from medvision.data.store import SliceStore, is_store, prepare_store
from medvision.errors import InputDataError, MedVisionError
from medvision.train import distributed as dist_utils
from medvision.train import rundir
from medvision.train.callbacks import MetricsLogger, SampleWriter, StatusUpdater
from medvision.train.config import TrainConfig
from medvision.train.distributed import DistContext
from medvision.train.trainer import Trainer

logger = logging.getLogger(__name__)

# Fields a resumed run may change: they decide speed or length, not what is learnt per step.
RESUME_OVERRIDABLE = (
    "epochs",
    "device",
    "workers",
    "threads",
    "compile",
    "in_memory",
    "memory_budget_gb",
    "log_every",
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


@dataclass
class _Session:
    """What one run_training call knows about its run: shared by the setup and the context managers."""

    run_dir: Path
    ctx: DistContext
    base: dict[str, Any]  # fields every status.json of this run carries
    owned: bool = False  # from the first status write on, failures are this run's and go into its status
    log_handler: logging.Handler | None = None
    status: StatusUpdater | None = None
    trainer: Trainer | None = None


@dataclass(frozen=True)
class _Setup:
    """What every rank needs to build its Trainer."""

    store_path: Path
    data_info: dict[str, Any]
    splits: dict[str, list[str]]
    resume_state: bool


@contextlib.contextmanager
def _sigterm_raises_before_training() -> Iterator[Callable[[], None]]:
    """Until the loop starts, SIGTERM aborts the setup (StopRequested); yields the function that hands
    SIGTERM back (``fit()`` installs its own graceful handler). Restored on exit in any case."""

    def early_stop(signum: int, frame: Any) -> None:
        raise StopRequested("stopped by SIGTERM before training started")

    try:
        previous = signal.signal(signal.SIGTERM, early_stop)
    except ValueError:  # not the main thread: no signal handling
        yield lambda: None
        return

    def restore() -> None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, previous)

    try:
        yield restore
    finally:
        restore()


@contextlib.contextmanager
def _locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (RunBusyError if a live process has it); clear dead writers' files."""
    lock = rundir.RunLock(run_dir).acquire()
    try:
        _remove_stale_temporaries(run_dir)
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _log_file(session: _Session) -> Iterator[None]:
    """medvision's INFO log also goes to <run_dir>/train.log while the run lasts."""
    package = logging.getLogger("medvision")
    handler = logging.FileHandler(session.run_dir / rundir.LOG_FILE)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    previous = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    session.log_handler = handler
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)
        handler.close()
        session.log_handler = None


class _TruthfulStatus(contextlib.AbstractContextManager):
    """On the way out of a run this owns, record a stop or a failure in status.json (and the failure's
    traceback in train.log); the exception goes on (run_training turns a StopRequested into "stopped")."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        session = self.session
        if error is None or not (session.ctx.is_main and session.owned):
            return False
        if isinstance(error, (StopRequested, KeyboardInterrupt)):
            _final_status(session, "stopped", str(error) or "interrupted")
            return False
        message = str(error) or type(error).__name__
        logger.error("training failed: %s", message)
        if session.log_handler is not None:  # the traceback into train.log only; the console gets one line
            trace = "".join(traceback.format_exception(kind, error, tb))
            record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "%s", (trace,), None)
            session.log_handler.handle(record)
        _final_status(session, "failed", message)
        return False


def _claim_run_dir(
    session: _Session,
    stack: contextlib.ExitStack,
    config: TrainConfig,
    data: str | Path | None,
    resume: bool,
    init_from: str | Path | None,
    prepare_workers: int,
) -> tuple[Path, str | None]:
    """Rank 0: lock the run directory, check it may be (re)used, start its log, config and status, and
    prepare the data. Returns (store path, the data source as given)."""
    run_dir = session.run_dir
    stack.enter_context(_locked_run_dir(run_dir))
    source = str(data) if data is not None else None
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
    stack.enter_context(_log_file(session))
    stack.enter_context(_TruthfulStatus(session))
    info = {
        "train": config.to_dict(),
        "data": {"source": source},
        "init_from": str(init_from) if init_from else None,
        "world_size": session.ctx.world_size,
        "created": time.time(),
    }
    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, info)
    session.status = StatusUpdater(run_dir, session.base)
    rundir.write_status(run_dir, "running", **session.base, epoch=0, step=0, total_steps=None)
    session.owned = True
    store_path = _prepare_data(data, run_dir, prepare_workers)
    with SliceStore(store_path) as store:
        info["data"].update(path=str(store_path), fingerprint=store.fingerprint, view=store.view)
    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, info)
    return store_path, source


def _setup(
    session: _Session,
    stack: contextlib.ExitStack,
    config: TrainConfig,
    data: str | Path | None,
    resume: bool,
    init_from: str | Path | None,
    prepare_workers: int,
) -> _Setup:
    """Claim the run directory on rank 0 (its problem, if any, is raised on every rank), then agree on
    the store, the data record and the splits."""
    ctx, run_dir = session.ctx, session.run_dir
    store_path: Path | None = None
    source = str(data) if data is not None else None
    if ctx.is_main:
        problem = None
        try:
            store_path, source = _claim_run_dir(
                session, stack, config, data, resume, init_from, prepare_workers
            )
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
        data_info = {
            "source": source,
            "path": str(store_path),
            "fingerprint": store.fingerprint,
            "view": store.view,
        }
        case_ids = list(store.case_ids)
    splits_file = run_dir / rundir.SPLITS_FILE
    if resume and splits_file.exists():
        splits = load_splits(splits_file)
    elif config.split_file:
        splits = _given_splits(Path(config.split_file), case_ids)
        if ctx.is_main:
            save_splits(splits_file, splits)
    else:
        splits = make_splits(case_ids, config.split_fractions, config.split_seed)
        if ctx.is_main:
            save_splits(splits_file, splits)
    resume_state = resume and (run_dir / rundir.STATE_FILE).exists()
    if resume and not resume_state:
        logger.info("nothing saved to resume in %s: starting from the beginning", run_dir)
    return _Setup(store_path, data_info, splits, resume_state)


def _given_splits(path: Path, case_ids: Sequence[str]) -> dict[str, list[str]]:
    """The splits of ``path``, every id checked against the store's cases."""
    splits = load_splits(path)
    known = set(case_ids)
    unknown = sorted({c for ids in splits.values() for c in ids} - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InputDataError(path, f"names cases the store does not hold: {shown}")
    return {name: list(splits.get(name, [])) for name in ("train", "val", "test")}


def _base_status(config: TrainConfig, ctx: DistContext) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "launcher_pid": os.getppid() if ctx.distributed else None,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "started": time.time(),
        "preset": config.preset,
    }


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

    Args:
        config: the run's settings.
        run_dir: the run directory (config, metrics, checkpoints, status, log).
        data: a prepared store or any dataset source; None on resume: the one the run recorded.
        resume: continue the run saved in ``run_dir`` exactly where it stopped.
        init_from: a checkpoint whose weights start a new run (fine-tuning).
        callbacks: extra trainer callbacks (rank 0 only).
        prepare_workers: processes preparing a source into a store.
    Returns:
        The final state: "finished" or "stopped".
    Raises:
        RunBusyError: another live process uses ``run_dir``.
        MedVisionError: bad data or a run directory that may not be reused; any failure is also recorded
            in status.json ("failed" + message) and train.log (traceback) and re-raised.
    """
    ctx = dist_utils.setup(config.device)
    session = _Session(Path(run_dir), ctx, _base_status(config, ctx))
    try:
        return _run(session, config, data, resume, init_from, callbacks, prepare_workers)
    except StopRequested:
        return "stopped"


def _run(
    session: _Session,
    config: TrainConfig,
    data: str | Path | None,
    resume: bool,
    init_from: str | Path | None,
    callbacks: Sequence[Any],
    prepare_workers: int,
) -> str:
    """run_training's body: every resource it takes is a context on one ExitStack, released in reverse
    order (status written, then log detached, lock released, SIGTERM restored, DDP torn down)."""
    ctx = session.ctx
    with contextlib.ExitStack() as stack:
        stack.callback(dist_utils.cleanup)
        hand_back_sigterm = stack.enter_context(_sigterm_raises_before_training())
        setup = _setup(session, stack, config, data, resume, init_from, prepare_workers)
        extra = [MetricsLogger(session.run_dir, config.log_every), SampleWriter(session.run_dir), *callbacks]
        session.trainer = trainer = Trainer(
            config,
            setup.store_path,
            session.run_dir,
            splits=setup.splits,
            data_info=setup.data_info,
            ctx=ctx,
            callbacks=[c for c in (session.status, *extra) if c is not None],
            resume=setup.resume_state,
            init_from=init_from,
        )
        if ctx.is_main and setup.resume_state:
            _drop_lost_metrics(session.run_dir, trainer.progress.step)
        hand_back_sigterm()
        state = trainer.fit()
        if ctx.is_main and session.status is not None:
            session.status.write(
                trainer, state, early_stopped=trainer.progress.early_stopped, ended=time.time()
            )
            logger.info(
                "training %s at epoch %d, step %d", state, trainer.progress.epoch, trainer.progress.step
            )
        return state


def _final_status(session: _Session, state: str, error: str) -> None:
    fields: dict[str, Any] = {**session.base, "error": error}
    trainer = session.trainer
    if trainer is not None:
        p = trainer.progress
        fields.update(epoch=p.epoch, step=p.step, total_steps=trainer.total_steps, best_val_mean_dice=p.best)
    try:
        rundir.write_status(session.run_dir, state, **fields)
    except OSError:
        logger.exception("could not write %s", rundir.STATUS_FILE)
