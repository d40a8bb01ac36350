"""Start, stop and resume training runs as background processes that outlive the page that started them.

A run is ``python -m medvision train ...`` started with ``start_new_session=True``: it is not in the
Streamlit server's process group, so reloading or closing the browser tab (or a Streamlit rerun) never
touches it. The page follows it only through the run folder (status.json, metrics.jsonl). Stop sends
SIGTERM, which the trainer turns into "finish the step, save a checkpoint, state stopped"; resume
relaunches the same command with ``--resume``.

The page shows a run's state as :func:`run_state` works it out, which adds to the trainer's own states
what only the launcher knows: a process that has not written its status yet is "starting", and one the
user asked to stop (``stop_request.json``, written by :func:`stop_training`) is "stopping" and then
"stopped", even when SIGTERM reached it before the trainer could say so itself.

Each launch leaves ``launch.json`` (pid and kernel start time) in its folder, so every session and every
server process (or the same one after Streamlit reloaded this module) knows the process is there from
its first moment, before the trainer takes the folder's lock. Launches given :class:`JobLimits` are
counted against them across sessions (see job_limits.py), and training launches are refused when their
memory estimate exceeds what the machine has free (memory_estimate.py).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from medvision.app_support import processes
from medvision.app_support.job_limits import JobLimits, admission
from medvision.app_support.workspace import REPO_ROOT
from medvision.errors import RunBusyError
from medvision.train import rundir
from medvision.train.config import TrainConfig
from medvision.train.rundir import RunSummary, is_run_busy, list_runs, read_json, read_status, summarise_run

log = logging.getLogger(__name__)

LAUNCH_LOG = "launcher.log"
LAUNCH_RECORD = "launch.json"
STOP_FILE = "stop_request.json"
SCRATCH_DIR = "tmp"  # the child process's TMPDIR, inside its run folder
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Processes started by this server, so a run that dies before writing its status still reports why,
# and a second click in the moment before the trainer takes its lock is refused too.
_children: dict[str, subprocess.Popen] = {}
_children_lock = threading.Lock()


@dataclass(frozen=True)
class Launch:
    run_dir: Path
    pid: int
    command: tuple[str, ...]


def new_run_name(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_name(name: str) -> str:
    """A run folder name (letters, digits, ``._-``; no paths); ValueError otherwise."""
    name = (name or "").strip()
    if not _RUN_NAME.match(name):
        raise ValueError(
            f"run name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def train_command(
    store: Path, run_dir: Path, config: TrainConfig, *, resume: bool = False, python: str = sys.executable
) -> list[str]:
    """The CLI command that trains ``config`` on ``store`` into ``run_dir`` (or resumes it)."""
    if resume:
        return [python, "-m", "medvision", "train", "--run-dir", str(run_dir), "--resume"]
    command = [
        python,
        "-m",
        "medvision",
        "train",
        "--data",
        str(store),
        "--run-dir",
        str(run_dir),
        "--preset",
        config.preset if config.preset != "custom" else "demo",
    ]
    for field, value in _overrides(config).items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            command.append(flag if value else "--no-" + field.replace("_", "-"))
        else:
            command += [flag, str(value)]
    return command


# The fields the Train page form sets; everything else comes from the preset.
FORM_FIELDS: tuple[str, ...] = (
    "target",
    "epochs",
    "batch_size",
    "lr",
    "amp",
    "base_filters",
    "device",
    "steps_per_epoch",
    "val_max_slices",
)


def _overrides(config: TrainConfig) -> dict[str, object]:
    return {f: getattr(config, f) for f in FORM_FIELDS if getattr(config, f) is not None}


def _recorded_pid(run_dir: Path) -> int | None:
    """The pid in ``launch.json`` while that very process lives (whichever server process started it)."""
    record = read_json(Path(run_dir) / LAUNCH_RECORD)
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    pid, start = record["pid"], record.get("start")
    alive = processes.is_alive(pid, start if isinstance(start, int) else None)
    return pid if alive else None


def is_busy(run_dir: Path) -> bool:
    """A live process uses ``run_dir``: the trainer holds its lock, or the process launched into it (by
    any session or server process) is still starting up."""
    with _children_lock:
        child = _children.get(str(run_dir))
    if child is not None and child.poll() is None:
        return True
    return is_run_busy(run_dir) or _recorded_pid(run_dir) is not None


def launch(
    command: list[str],
    run_dir: Path,
    *,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    kind: str = "training",
    limits: JobLimits | None = None,
) -> Launch:
    """Start ``command`` in its own session, output appended to ``run_dir/launcher.log``.

    Refuses (RunBusyError) when a live process already uses ``run_dir``, and (JobLimitError) when
    ``limits`` allow no more jobs of ``kind`` at the moment.
    """
    if limits is None:
        return _launch(command, run_dir, cwd=cwd, env=env)
    with admission(limits, kind, Path(run_dir), has_ended=_has_ended) as record:
        launched = _launch(command, run_dir, cwd=cwd, env=env)
        record(launched.pid)
    return launched


def _has_ended(run_dir: Path) -> bool:
    """The run's own process has written how it ended (it may still be exiting)."""
    return run_state(run_dir) in rundir.ENDED_STATES


def _launch(command: list[str], run_dir: Path, *, cwd: Path, env: dict[str, str] | None) -> Launch:
    run_dir = Path(run_dir)
    if is_busy(run_dir):
        with _children_lock:
            child = _children.get(str(run_dir))
        pid = (read_status(run_dir) or {}).get("pid") or (child.pid if child is not None else "?")
        raise RunBusyError(
            f"run folder {run_dir.name} is busy: training process {pid} is still using it. "
            "Stop it first or choose another run name."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    # A stop asked of an earlier process in this folder is not a stop of the one starting now.
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    child_env = dict(os.environ if env is None else env)
    # The package is imported from the repository even when the app was started from elsewhere.
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd), child_env.get("PYTHONPATH", "")) if p)
    # Temporary files of the child (zip extraction while preparing, compiler caches) stay in the workspace,
    # beside the job that made them, not in the machine's shared /tmp.
    scratch = run_dir / SCRATCH_DIR
    scratch.mkdir(exist_ok=True)
    child_env["TMPDIR"] = str(scratch)
    with open(run_dir / LAUNCH_LOG, "ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=child_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    with _children_lock:
        _children[str(run_dir)] = process
    rundir.write_json_atomic(
        run_dir / LAUNCH_RECORD,
        {"pid": process.pid, "start": processes.start_time(process.pid), "time": time.time()},
    )
    # Reap the child when it ends so it does not linger as a zombie that looks alive to os.kill(pid, 0).
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
    log.info("started pid %d in %s", process.pid, run_dir)
    return Launch(run_dir=run_dir, pid=process.pid, command=tuple(command))


def start_training(
    store: Path,
    runs_root: Path,
    name: str,
    config: TrainConfig,
    *,
    env: dict[str, str] | None = None,
    limits: JobLimits | None = None,
) -> Launch:
    """Launch a new run ``runs_root/name``; refuses a busy folder and one that already holds a run, and
    with ``limits`` a run too many or one whose memory estimate exceeds the free memory."""
    run_dir = Path(runs_root) / check_run_name(name)
    if is_busy(run_dir):
        return launch([], run_dir)  # raises RunBusyError with the message users see
    if (run_dir / "config.json").exists() or (run_dir / "status.json").exists():
        raise RunBusyError(f"run folder {run_dir.name} already holds a run; resume it or choose another name")
    if limits is not None and limits.check_memory:
        from medvision.app_support.memory_estimate import check_fits

        check_fits(config)
    return launch(train_command(store, run_dir, config), run_dir, env=env, kind="training", limits=limits)


def resume_training(
    run_dir: Path, *, env: dict[str, str] | None = None, limits: JobLimits | None = None
) -> Launch:
    """Relaunch a run with ``--resume``; with ``limits``, counted and memory-checked like a new run."""
    if limits is not None and limits.check_memory:
        saved = read_json(Path(run_dir) / rundir.CONFIG_FILE)
        train = saved.get("train") if isinstance(saved, dict) else None
        if isinstance(train, dict):
            from medvision.app_support.memory_estimate import check_fits

            try:
                config = TrainConfig.from_dict(train)
            except (TypeError, ValueError):
                config = None  # the trainer itself reports a config it cannot read
            if config is not None:
                check_fits(config)
    command = train_command(Path(), run_dir, TrainConfig(), resume=True)
    return launch(command, run_dir, env=env, kind="training", limits=limits)


def stop_training(run_dir: Path) -> bool:
    """Ask the run's process to stop (SIGTERM: it checkpoints and exits). False when nothing was running.

    The request is recorded first, so a process that SIGTERM ends before it wrote any status (still
    importing, say) reads as stopped, not as a launch that failed.
    """
    run_dir = Path(run_dir)
    pid = None
    with _children_lock:
        child = _children.get(str(run_dir))
    if child is not None and child.poll() is None:
        pid = child.pid
    elif _recorded_pid(run_dir) is not None:
        pid = _recorded_pid(run_dir)  # started by another server process, or before a module reload
    elif is_run_busy(run_dir):
        pid = (read_status(run_dir) or {}).get("pid")
    if not pid:
        return False
    marker = run_dir / STOP_FILE
    rundir.write_json_atomic(marker, {"time": time.time(), "pid": int(pid)})
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        marker.unlink(missing_ok=True)  # it had ended already: whatever it left is its own story
        return False
    return True


def stop_requested(run_dir: Path) -> bool:
    """The user asked the process in ``run_dir`` to stop (since it was launched)."""
    return (Path(run_dir) / STOP_FILE).is_file()


def exit_code(run_dir: Path) -> int | None:
    """Exit status of a run this server started and that has ended (None if unknown or still running)."""
    with _children_lock:
        child = _children.get(str(run_dir))
    return None if child is None else child.poll()


def launch_log_tail(run_dir: Path, lines: int = 20) -> str:
    """Last lines the process printed (for runs that failed before writing their own status)."""
    path = Path(run_dir) / LAUNCH_LOG
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sample_images(run_dir: Path) -> list[Path]:
    """The per-epoch sample prediction images of a run, oldest first."""
    folder = Path(run_dir) / "samples"
    return sorted(folder.glob("epoch_*.png")) if folder.is_dir() else []


def train_log_tail(run_dir: Path, lines: int = 30) -> str:
    """The end of the run's own log (its traceback when it failed), else of the launcher's output."""
    for name in ("train.log", LAUNCH_LOG):
        path = Path(run_dir) / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()
            if text:
                return "\n".join(text[-lines:])
    return ""


def has_checkpoint(run_dir: Path) -> bool:
    """The run saved training state that ``--resume`` continues from."""
    return (Path(run_dir) / rundir.STATE_FILE).is_file()


def _child_pid(run_dir: Path) -> int | None:
    """The live process launched into ``run_dir``: this server's child, else the one in launch.json."""
    with _children_lock:
        child = _children.get(str(run_dir))
    if child is not None and child.poll() is None:
        return child.pid
    return _recorded_pid(run_dir)


def run_state(run_dir: Path) -> str:
    """What the page calls the run: the trainer's state, refined by what the launcher knows.

    starting: a process lives but has not begun training (no status yet, or it still prepares data).
    running: training, with its step count known. stopping: asked to stop, still saving and exiting.
    finished | stopped | failed | interrupted: as the trainer left it; "interrupted" reads "stopped"
    when the user had asked for the stop. did not start: the process ended without writing any status
    and nobody stopped it (its output says why).
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.get("state") if status else None
    stop = stop_requested(run_dir)
    if is_busy(run_dir):
        child = _child_pid(run_dir)
        own = status is not None and (
            child is None or child in (status.get("pid"), status.get("launcher_pid"))
        )
        if own and state in rundir.ENDED_STATES:
            return state  # the process has said how it ended and is only exiting
        if stop:
            return "stopping"
        # A status left by an earlier process (a resumed run) says nothing about this one yet.
        if own and state == "running" and status.get("total_steps"):
            return "running"
        return "starting"
    if state is None:
        return "stopped" if stop else "did not start"
    if state == "interrupted" and stop:
        return "stopped"
    return state


def can_resume(run_dir: Path) -> bool:
    """A stopped run with a checkpoint, or an interrupted or failed run that saved its state or settings,
    can continue where it stopped (a failed run without a checkpoint starts again from its settings)."""
    run_dir = Path(run_dir)
    if is_busy(run_dir):  # includes a process that has written its final state and is still exiting
        return False
    state = run_state(run_dir)
    if state == "stopped":
        return has_checkpoint(run_dir) and (run_dir / rundir.CONFIG_FILE).is_file()
    saved = has_checkpoint(run_dir) or (run_dir / rundir.CONFIG_FILE).is_file()
    return state in ("interrupted", "failed") and saved


@dataclass(frozen=True)
class AppRun:
    """One run as the Train page lists it."""

    path: Path
    name: str
    state: str  # see run_state
    label: str  # e.g. "running · epoch 1/16 · step 5/1600"
    busy: bool  # a process still uses the folder (also one that has written its final state and is exiting)
    preset: str | None
    epochs: int | None
    step: int | None
    total_steps: int | None
    best_dice: float | None  # mean validation Dice of the best checkpoint
    best_val: dict | None  # that checkpoint's per-region validation scores
    updated: float | None
    error: str | None


def run_label(state: str, status: dict | None, epochs: int | None) -> str:
    """``state`` plus where the run is: "running · epoch 1/16 · step 5/1600", "starting", ...

    The epoch of a live run is the one it is in (completed + 1); that of an ended run, the one its last
    step belongs to. Without a known step count there is nothing to add but "before training started".
    """
    if state in ("starting", "did not start"):
        return state
    status = status or {}
    step, total = int(status.get("step") or 0), status.get("total_steps")
    if not total:
        return state if state in ("running", "stopping") else f"{state} · before training started"
    parts = [state]
    if epochs:
        if state in ("running", "stopping"):
            epoch = int(status.get("epoch") or 0) + 1
        else:
            epoch = math.ceil(step / max(int(total) // epochs, 1))
        parts.append(f"epoch {min(max(epoch, 1), epochs)}/{epochs}")
    parts.append(f"step {step}/{total}")
    return " · ".join(parts)


def describe_run(run_dir: Path, summary: RunSummary | None = None) -> AppRun:
    """The page's view of one run; ``summary`` saves re-reading the run folder when the caller has it."""
    run_dir = Path(run_dir)
    summary = summary or summarise_run(run_dir)
    state = run_state(run_dir)
    status = read_status(run_dir)
    config = read_json(run_dir / rundir.CONFIG_FILE)
    train = config.get("train", {}) if isinstance(config, dict) else {}
    epochs = train.get("epochs") if isinstance(train.get("epochs"), int) else None
    best = read_json(rundir.checkpoint_path(run_dir, "best").with_suffix(".json"))
    best_val = best.get("val") if isinstance(best, dict) and isinstance(best.get("val"), dict) else None
    updated = summary.updated
    if updated is None and (run_dir / LAUNCH_LOG).is_file():
        updated = (run_dir / LAUNCH_LOG).stat().st_mtime
    return AppRun(
        path=run_dir,
        name=run_dir.name,
        state=state,
        label=run_label(state, status, epochs),
        busy=is_busy(run_dir),
        preset=summary.preset,
        epochs=epochs,
        step=summary.step,
        total_steps=summary.total_steps,
        best_dice=summary.best_dice,
        best_val=best_val,
        updated=updated,
        # The trainer notes why a stop came before training began; only a failure is an error.
        error=summary.error if state == "failed" else None,
    )


def app_runs(root: Path) -> list[AppRun]:
    """Runs under ``root``, newest first, including launches that have not written (or never wrote) a
    status."""
    root = Path(root)
    if not root.is_dir():
        return []
    known = {r.path.name: r for r in list_runs(root)}
    runs = [
        describe_run(d, known.get(d.name))
        for d in root.iterdir()
        if d.is_dir() and (d.name in known or (d / LAUNCH_LOG).is_file())
    ]
    return sorted(runs, key=lambda r: r.updated or 0.0, reverse=True)


# ------------------------------------------------------------------------------------------------
# Preparing a server folder into a store (can take many minutes for a whole dataset)


def prepare_dir(store: Path) -> Path:
    """Folder holding the launcher log of the background prepare of ``store``."""
    return Path(store).with_name(Path(store).name + ".prepare")


def start_prepare(
    source: Path,
    store: Path,
    *,
    workers: int = 2,
    python: str = sys.executable,
    limits: JobLimits | None = None,
) -> Launch:
    """Prepare ``source`` into ``store`` in a background process (``python -m medvision prepare``).

    A separate process, not a pool inside the Streamlit server: worker processes started from the
    server would re-run the app script, and a 369-case dataset must not block the page for minutes.
    """
    command = [
        python,
        "-m",
        "medvision",
        "prepare",
        str(source),
        "--out",
        str(store),
        "--workers",
        str(workers),
        "--no-progress",
    ]
    return launch(command, prepare_dir(store), kind="prepare", limits=limits)
