"""The run directory: what a training run leaves on disk, and how others (CLI, app) read it.

Layout of ``<run_dir>/``::

    config.json            the TrainConfig plus data path/fingerprint (written once at start)
    status.json            {"state": running|finished|stopped|failed, "pid", "error", "updated", ...}
    metrics.jsonl          one JSON object per line: {"kind": "step"|"epoch", ...}
    splits.json            the patient split used
    checkpoints/last.safetensors + last.json, best.safetensors + best.json
    train_state.pt         weights + optimizer/scaler/scheduler/RNG for --resume (torch.load weights_only)
    samples/epoch_XXX.png  sample validation predictions
    train.log              log lines (and the traceback tail of a failure)
    .lock                  advisory fcntl lock held by the live training process

A second training process on the same directory is refused with RunBusyError. A status that says
"running" while its process is gone is reported as "interrupted" by :func:`read_status`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision import atomic
from medvision.errors import RunBusyError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
SPLITS_FILE = "splits.json"
STATE_FILE = "train_state.pt"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
STATES = ("running", "finished", "stopped", "failed")
# How a run ends; the process may still be exiting after it has written one of these.
ENDED_STATES = tuple(state for state in STATES if state != "running")


def checkpoint_path(run_dir: str | Path, name: str = "last") -> Path:
    """``<run_dir>/checkpoints/<name>.safetensors`` (its meta is the sibling ``.json``)."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.safetensors"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file + os.replace so readers never see half a file."""
    atomic.write_json_atomic(path, data, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    # numpy scalars and paths show up in metrics/meta; everything else is a bug worth seeing.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """Copy of ``value`` with NaN/inf floats as None (strict JSON: readable by any JSON parser)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: str | Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# Status -------------------------------------------------------------------------------------------
def write_status(run_dir: str | Path, state: str, **fields: Any) -> dict[str, Any]:
    """Replace status.json with ``state`` and ``fields`` (pid and time added)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    status: dict[str, Any] = {"state": state, "pid": os.getpid(), "error": None}
    status.update(fields)
    status["updated"] = time.time()
    status = json_safe(status)
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)
    return status


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """status.json as a dict (None if absent). A 'running' run whose process is gone reads 'interrupted'."""
    status = read_json(Path(run_dir) / STATUS_FILE)
    if not isinstance(status, dict):
        return None
    if status.get("state") == "running" and not is_run_busy(run_dir):
        status["state"] = "interrupted"
    return status


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# Locking ------------------------------------------------------------------------------------------
def _lock_held(run_dir: Path) -> bool | None:
    """True/False whether another open file holds the lock; None when there is no lock file."""
    lock = run_dir / LOCK_FILE
    if not lock.exists():
        return None
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe lock if we got it
    return False


def is_run_busy(run_dir: str | Path) -> bool:
    """Whether a live training process uses ``run_dir``: its lock is held, or (no lock file) its pid lives."""
    run_dir = Path(run_dir)
    held = _lock_held(run_dir)
    if held is not None:
        return held
    status = read_json(run_dir / STATUS_FILE)
    return isinstance(status, dict) and status.get("state") == "running" and pid_alive(status.get("pid"))


class RunLock:
    """Exclusive advisory lock on a run directory for the lifetime of a training process."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        # A few tries: readers probing is_run_busy() hold the lock for microseconds.
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt < 4:
                    time.sleep(0.05)
        else:
            os.close(fd)
            status = read_json(self.run_dir / STATUS_FILE) or {}
            pid = status.get("pid", "unknown")
            raise RunBusyError(
                f"{self.run_dir} is being used by training process PID {pid}; "
                "stop it first or choose another run directory"
            ) from None
        # Owner pid in the file is only informative; the kernel lock is what counts.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# Metrics ------------------------------------------------------------------------------------------
def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a single write() of a short line keeps concurrent readers safe."""
    line = json.dumps(json_safe(record), default=_json_default) + "\n"
    with open(Path(run_dir) / METRICS_FILE, "a") as handle:
        handle.write(line)


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """All records of metrics.jsonl (optionally only one kind); a half-written last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


# Listing ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary:
    """One run directory at a glance, for the app's run picker and `list_runs`."""

    path: Path
    name: str
    state: str  # running | finished | stopped | failed | interrupted | unknown
    preset: str | None
    epoch: int | None
    step: int | None
    total_steps: int | None
    best_dice: float | None
    updated: float | None
    error: str | None


def summarise_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    status = read_status(run_dir) or {}
    config = read_json(run_dir / CONFIG_FILE) or {}
    train_cfg = config.get("train", {}) if isinstance(config, dict) else {}
    best = read_json(checkpoint_path(run_dir, "best").with_suffix(".json")) or {}
    return RunSummary(
        path=run_dir,
        name=run_dir.name,
        state=status.get("state", "unknown"),
        preset=train_cfg.get("preset"),
        epoch=status.get("epoch"),
        step=status.get("step"),
        total_steps=status.get("total_steps"),
        best_dice=best.get("val_mean_dice"),
        updated=status.get("updated"),
        error=status.get("error"),
    )


def list_runs(root: str | Path) -> list[RunSummary]:
    """Run directories directly under ``root`` (those with a config.json or status.json), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        summarise_run(d)
        for d in root.iterdir()
        if d.is_dir() and ((d / CONFIG_FILE).exists() or (d / STATUS_FILE).exists())
    ]
    return sorted(runs, key=lambda r: r.updated or 0.0, reverse=True)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def epochs_summary(meta: dict[str, Any]) -> str:
    """How many epochs a checkpoint's run trained and which one it holds, in words a user can take as
    read: a best checkpoint says "best 7 of 16" (its weights are epoch 7's of a 16-epoch run), a last one
    "16 (best 7)". The run's length is the planned ``train_config.epochs`` (a best checkpoint is written
    before the run ends); "–" when the metadata says nothing."""
    epoch = _count(meta.get("epoch"))
    config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    planned = _count(config.get("epochs"))
    best = _count(meta.get("best_epoch"))
    if epoch is None:
        return "–"
    if meta.get("kind") == "best":
        return f"best {epoch} of {planned}" if planned else f"best {epoch}"
    if best and best != epoch:
        return f"{epoch} (best {best})"
    return str(epoch)
