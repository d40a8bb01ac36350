"""How many background jobs (training runs, dataset prepares) the app runs at once, for all users together.

Every browser session of every server process on one workspace shares one registry folder
(``<MEDVISION_HOME>/jobs``): each job the app starts leaves ``<kind>-<pid>.json`` there, holding the
process's pid and kernel start time. A new launch takes an exclusive lock on the folder, counts the
records whose process still lives (and deletes the rest), and is refused when its kind is at its limit,
so neither many clicks nor many sessions can start more than the machine was sized for.

Limits come from the environment, read once by the app's entry point:

- ``MEDVISION_MAX_TRAINING_JOBS`` (default 1): training runs at once (a resumed run counts).
- ``MEDVISION_MAX_PREPARE_JOBS`` (default 1): folders being prepared into a store at once.

A training run on the CPU already uses every core, and a prepare two worker processes; one of each is
what a workstation bears without one job starving the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from medvision.app_support import processes
from medvision.errors import MedVisionError

__all__ = [
    "JOB_KINDS",
    "JobLimitError",
    "JobLimits",
    "JobRecord",
    "admission",
    "limits_from_env",
    "live_jobs",
]

log = logging.getLogger(__name__)

JOB_KINDS: tuple[str, ...] = ("training", "prepare")
ENV_VARS: dict[str, str] = {
    "training": "MEDVISION_MAX_TRAINING_JOBS",
    "prepare": "MEDVISION_MAX_PREPARE_JOBS",
}
_LOCK = ".lock"


class JobLimitError(MedVisionError):
    """A launch was refused: too many jobs of its kind, or it would not fit in the machine's memory."""


@dataclass(frozen=True)
class JobLimits:
    """At most ``training`` runs and ``prepare`` prepares at once, counted in ``registry``."""

    registry: Path
    training: int = 1
    prepare: int = 1
    check_memory: bool = True  # refuse training runs whose memory estimate exceeds what is available

    def __post_init__(self) -> None:
        for kind in JOB_KINDS:
            value = getattr(self, kind)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{ENV_VARS[kind]} must be a whole number >= 1, got {value!r}")

    def limit(self, kind: str) -> int:
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        return int(getattr(self, kind))


@dataclass(frozen=True)
class JobRecord:
    kind: str
    pid: int
    start: int | None
    folder: str  # the run or prepare folder the job works in (for the refusal message)


def limits_from_env(env: Mapping[str, str], home: Path) -> JobLimits:
    """The limits set by ``MEDVISION_MAX_*_JOBS`` in ``env`` for the workspace at ``home``; ValueError
    naming the variable when one is not a whole number >= 1."""
    counts: dict[str, int] = {}
    for kind, name in ENV_VARS.items():
        text = (env.get(name) or "").strip()
        if not text:
            continue
        try:
            counts[kind] = int(text)
        except ValueError:
            raise ValueError(f"{name} must be a whole number >= 1, got {text!r}") from None
    return JobLimits(registry=Path(home) / "jobs", **counts)


def _read(path: Path) -> JobRecord | None:
    try:
        data = json.loads(path.read_text())
        return JobRecord(str(data["kind"]), int(data["pid"]), data.get("start"), str(data.get("folder", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_jobs(registry: Path, kind: str | None = None) -> list[JobRecord]:
    """The jobs recorded in ``registry`` whose process still lives (records of ended ones are removed)."""
    registry = Path(registry)
    if not registry.is_dir():
        return []
    jobs = []
    for path in sorted(registry.glob("*.json")):
        record = _read(path)
        if record is None or not processes.is_alive(record.pid, record.start):
            path.unlink(missing_ok=True)
            continue
        if kind is None or record.kind == kind:
            jobs.append(record)
    return jobs


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    registry.mkdir(parents=True, exist_ok=True)
    fd = os.open(registry / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # other launches wait the few milliseconds a launch takes
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refusal(kind: str, jobs: list[JobRecord], limit: int) -> str:
    what = "training runs" if kind == "training" else "dataset prepares"
    running = ", ".join(f"{Path(j.folder).name or '?'} (process {j.pid})" for j in jobs)
    return (
        f"{len(jobs)} of at most {limit} {what} already running: {running}. Wait for one to finish or stop "
        f"it (the limit is set by {ENV_VARS[kind]})."
    )


@contextlib.contextmanager
def admission(
    limits: JobLimits, kind: str, folder: Path, *, has_ended: Callable[[Path], bool] | None = None
) -> Iterator[Callable[[int], None]]:
    """Hold the registry while one job of ``kind`` is launched; JobLimitError when its kind is full.

    Yields ``record(pid)``, to be called once the process exists: the count and the new record are one
    step under the lock, so two sessions clicking at the same moment cannot both get the last place.
    ``has_ended(folder)`` tells a job that has written its final state and is only exiting: it takes no
    place (the page already shows it finished, so a launch in that second must not be refused).
    """
    registry = Path(limits.registry)
    limit = limits.limit(kind)
    with _locked(registry):
        jobs = live_jobs(registry, kind)
        if has_ended is not None:
            jobs = [job for job in jobs if not (job.folder and has_ended(Path(job.folder)))]
        if len(jobs) >= limit:
            raise JobLimitError(_refusal(kind, jobs, limit))

        def record(pid: int) -> None:
            entry = {"kind": kind, "pid": int(pid), "start": processes.start_time(pid), "folder": str(folder)}
            path = registry / f"{kind}-{int(pid)}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            os.replace(tmp, path)
            log.info("job %s %d admitted (%d of %d)", kind, pid, len(jobs) + 1, limit)

        yield record
