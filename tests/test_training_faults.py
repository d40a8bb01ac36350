"""Faults in training: kill -9 at chosen and at random moments, SIGTERM while saving or preparing, corrupt
or foreign checkpoints handed to the CLI, and a disk that fills up while a checkpoint is being written.

Every training run here is the real command line (``medvision.cli.main(["train", ...])``) in a process of
its own, killed with a real SIGKILL. Starting Python and importing torch, monai and torch._dynamo takes
about 7 s on the 2-core test machine, so the runs are forked from one helper process that has imported
all of that once (this file run as a script: ``python tests/test_training_faults.py serve ...``). A
forked child is a fresh process: it owns its run-directory lock, its signal handlers and its files, and
dies like any other process. One run is a genuine ``python -m medvision train`` process, killed at a
random moment.

Moments. The child wraps ``os.replace`` and the writes of temporary files in medvision.checkpoint and
medvision.atomic (status, config, training state, samples) and ``Trainer.train_step``, and names every
moment: ``mid-write:last.safetensors@8#1`` is "half of the
temporary file of last.safetensors written, after optimizer step 8, first time in this process";
``before-replace:`` (temporary file complete, not yet moved into place), ``after-replace:`` and
``step@N`` likewise. A reference run records the whole sequence; a fault names one moment, at which the
child sends itself SIGKILL (or SIGTERM, or fills the disk). Moments by wall-clock time (random delays, or
"as soon as a temporary file appears") are sent from the test process.

The disk-full runs use a 4 MiB tmpfs mounted inside a private mount namespace of the helper process (never
on the host; the test reads it through /proc/<helper>/root); they are skipped where that is not allowed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVE = "serve"
SEED = 20261127
EPOCHS, STEPS_PER_EPOCH = 3, 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
SMALL_DISK_BYTES = 4 * 2**20
TRAIN_ARGS = [
    "--preset",
    "demo",
    "--base-filters",
    "4",
    "--depth",
    "2",
    "--epochs",
    str(EPOCHS),
    "--steps-per-epoch",
    str(STEPS_PER_EPOCH),
    "--batch-size",
    "2",
    "--patch-size",
    "32",
    "32",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--amp",
    "off",
    "--no-channels-last",
    "--val-max-slices",
    "8",
    "--log-every",
    "1",
    "--seed",
    "7",
]
CHECKPOINT_FILES = ("last.safetensors", "last.json", "best.safetensors", "best.json", "train_state.pt")
CHECKPOINT_TMP = tuple(f".{name}." for name in CHECKPOINT_FILES)


# ====================================================================================== helper process
# Runs as `python tests/test_training_faults.py serve SMALL_DISK SIZE`; imports nothing heavy at module
# level so that it can enter a mount namespace while it still has a single thread.


def _target_name(path: str | os.PathLike) -> str:
    """Final file name of a path or of its temporary file: ``.last.json.x1y2.tmp`` (medvision.checkpoint)
    or ``.status.json.x1y2.tmp.json`` (medvision.atomic) -> ``last.json`` / ``status.json``."""
    name = os.path.basename(os.fspath(path))
    if name.startswith(".") and ".tmp" in name:
        name = name[1 : name.rindex(".tmp")].rsplit(".", 1)[0]
    return name


def _mount_private_tmpfs(path: str, size: int) -> tuple[bool, str]:
    """Mount a tmpfs of ``size`` bytes at ``path`` in a new mount namespace of this process only."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, clone_newuser = 0x00020000, 0x10000000
    ms_rec, ms_private = 0x4000, 1 << 18
    if libc.unshare(clone_newns) != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(clone_newuser | clone_newns) != 0:
            return False, f"unshare: {os.strerror(ctypes.get_errno())}"
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
            Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        except OSError as error:
            return False, f"user namespace maps: {error}"
    # Nothing mounted here may reach the host's namespace.
    if libc.mount(b"none", b"/", None, ms_rec | ms_private, None) != 0:
        return False, f"make / private: {os.strerror(ctypes.get_errno())}"
    os.makedirs(path, exist_ok=True)
    if libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, f"size={size},mode=755".encode()) != 0:
        return False, f"mount tmpfs: {os.strerror(ctypes.get_errno())}"
    return True, "mounted"


class _Faults:
    """Names the moments of one child process and acts at the chosen one."""

    def __init__(self, spec: dict[str, Any] | None, trace: str | None) -> None:
        spec = spec or {}
        self.target = spec.get("at")
        self.action = spec.get("action", "kill")
        self.fill_dir = spec.get("fill_dir")
        self.keep_free = int(spec.get("keep_free", 0))
        self.trace = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115 - lives as long as the child
        self.step = 0
        self.counts: Counter[str] = Counter()

    def event(self, what: str) -> None:
        key = f"{what}@{self.step}"
        self.counts[key] += 1
        name = f"{key}#{self.counts[key]}"
        if self.trace is not None:
            self.trace.write(name + "\n")
        if name == self.target:
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.action == "term":
                os.kill(os.getpid(), signal.SIGTERM)
            elif self.action == "fill":
                _fill(self.fill_dir, self.keep_free)

    # Wrappers ------------------------------------------------------------------------------------
    def os_proxy(self) -> Any:
        faults = self

        class OsProxy:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            def replace(self, src: Any, dst: Any) -> None:
                faults.event(f"before-replace:{_target_name(dst)}")
                os.replace(src, dst)
                faults.event(f"after-replace:{_target_name(dst)}")

            def fdopen(self, fd: int, *args: Any, **kwargs: Any) -> Any:
                name = _target_name(os.readlink(f"/proc/self/fd/{fd}"))
                return faults.half_write(os.fdopen(fd, *args, **kwargs), name)

        return OsProxy()

    def half_write(self, handle: Any, name: str) -> Any:
        faults = self

        class HalfWrite:
            first = True

            def write(self, data: Any) -> int:
                if not self.first:
                    return handle.write(data)
                self.first = False
                half = len(data) // 2
                written = handle.write(data[:half])
                handle.flush()
                faults.event(f"mid-write:{name}")
                return written + handle.write(data[half:])

            def __getattr__(self, attr: str) -> Any:
                return getattr(handle, attr)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> Any:
                return handle.__exit__(*exc)

        return HalfWrite()

    def install(self) -> None:
        import medvision.atomic
        import medvision.checkpoint
        import medvision.train.rundir
        import medvision.train.samples
        import medvision.train.trainer as trainer_module

        faults = self
        # Checkpoints: medvision.checkpoint writes through os.fdopen + os.replace. Everything else (status,
        # config, training state, samples, splits) goes through medvision.atomic.atomic_path.
        for module in (medvision.checkpoint, medvision.atomic):
            module.os = self.os_proxy()
        real_atomic_path = medvision.atomic.atomic_path

        @contextlib.contextmanager
        def atomic_path(path: Any) -> Any:
            with real_atomic_path(path) as tmp:
                yield tmp
                # The block wrote the whole temporary file; killed "mid-write", half of it is there.
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
                faults.event(f"mid-write:{_target_name(path)}")
                tmp.write_bytes(data)

        for module in list(sys.modules.values()):
            if getattr(module, "atomic_path", None) is real_atomic_path:
                module.atomic_path = atomic_path
        trainer_cls = trainer_module.Trainer
        real_step, real_load = trainer_cls.train_step, trainer_cls.load_state

        def train_step(self: Any, batch: Any) -> Any:
            out = real_step(self, batch)
            faults.step = self.progress.step
            faults.event("step")
            return out

        def load_state(self: Any) -> None:
            real_load(self)
            faults.step = self.progress.step

        trainer_cls.train_step, trainer_cls.load_state = train_step, load_state


def _fill(folder: str, keep_free: int) -> None:
    """Fill the file system of ``folder`` until ``keep_free`` bytes are left."""
    stats = os.statvfs(folder)
    size = stats.f_bavail * stats.f_frsize - keep_free
    if size > 0:
        fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)


def _child(request: dict[str, Any]) -> int:
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    code: Any = 1
    try:
        _Faults(request.get("fault"), request.get("trace")).install()
        from medvision.cli import main

        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return int(code or 0)


def _serve(small_disk: str, size: int) -> None:
    mounted, why = False, "not asked"
    if small_disk != "-":
        mounted, why = _mount_private_tmpfs(small_disk, size)
    import torch._dynamo  # noqa: F401 - AdamW imports it (2-3 s): pay once, here

    import medvision.cli  # noqa: F401
    import medvision.commands.evaluate  # noqa: F401
    import medvision.commands.predict  # noqa: F401
    import medvision.commands.train  # noqa: F401
    import medvision.data.readers  # noqa: F401
    import medvision.inference  # noqa: F401
    import medvision.train.evaluation  # noqa: F401
    import medvision.train.run  # noqa: F401

    print(json.dumps({"ready": os.getpid(), "mounted": mounted, "why": why}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        print(json.dumps({"started": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == SERVE:
    _serve(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)


# ============================================================================================ tests
import pytest  # noqa: E402
import torch  # noqa: E402

from medvision.checkpoint import load_checkpoint  # noqa: E402
from medvision.errors import CheckpointError  # noqa: E402
from medvision.train import rundir  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(240)


@dataclass
class Child:
    pid: int
    out: Path
    err: Path
    code: int | None = None

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


class Forker:
    """Client of the helper process: fork a CLI run, kill it, wait for its exit status."""

    def __init__(self, proc: subprocess.Popen, logs: Path) -> None:
        self.proc = proc
        self.logs = logs
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.count = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._next(90)
        assert "ready" in self.hello, self.hello
        self.pid = self.hello["ready"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put({"eof": True})

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"helper process silent for {timeout} s")
        assert "eof" not in message, f"helper process died: {self.proc.stderr.read()}"
        return message

    def start(self, argv: list[str], fault: dict[str, Any] | None = None, trace: Path | None = None) -> Child:
        self.count += 1
        out, err = self.logs / f"{self.count:03d}.out", self.logs / f"{self.count:03d}.err"
        request = {
            "argv": argv,
            "fault": fault,
            "trace": str(trace) if trace else None,
            "out": str(out),
            "err": str(err),
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return Child(self._next(30)["started"], out, err)

    def wait(self, child: Child, timeout: float = 120) -> int:
        message = self._next(timeout)
        assert message["exited"] == child.pid, message
        child.code = message["code"]
        return child.code

    def run(self, argv: list[str], fault: dict[str, Any] | None = None, trace: Path | None = None) -> Child:
        child = self.start(argv, fault, trace)
        self.wait(child)
        return child

    def inside(self, path: Path) -> Path:
        """``path`` as the helper's mount namespace sees it (for files on the small disk)."""
        return Path(f"/proc/{self.pid}/root{path}")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def forker(work):
    logs = work / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, __file__, SERVE, str(work / "small_disk"), str(SMALL_DISK_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        yield Forker(proc, logs)
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def store(work) -> Path:
    from medvision.data.store import prepare_store
    from medvision.data.synthetic import make_phantom

    cases = [make_phantom(f"Synth_{i:03d}", i, size=(16, 48, 48)) for i in range(4)]
    return prepare_store(cases, work / "store.h5", workers=1, progress=False)


def train_argv(run: Path, store: Path | None = None, *extra: str, resume: bool = False) -> list[str]:
    argv = ["train", "--run-dir", str(run), *TRAIN_ARGS, *extra]
    if store is not None:
        argv += ["--data", str(store)]
    if resume:
        argv.append("--resume")
    return argv


@dataclass
class Reference:
    run: Path
    events: list[str]
    seconds: float
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


@pytest.fixture(scope="module")
def reference(forker, store, work) -> Reference:
    """One uninterrupted run with every moment recorded."""
    run, trace = work / "reference", work / "reference.trace"
    started = time.monotonic()
    child = forker.run(train_argv(run, store), trace=trace)
    seconds = time.monotonic() - started
    assert child.code == 0, child.stderr
    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["step"] == status["total_steps"] == TOTAL_STEPS
    model, _ = load_checkpoint(rundir.checkpoint_path(run, "last"))
    return Reference(run, trace.read_text().split(), seconds, model.state_dict())


def last_meta_step(run: Path, name: str = "last") -> int | None:
    path = rundir.checkpoint_path(run, name)
    if not path.with_suffix(".json").exists():
        return None
    return load_checkpoint(path)[1]["step"]


def check_after_kill(run: Path, moment: str, outcomes: list[dict[str, Any]]) -> None:
    """What a killed run must leave: a status that does not claim to run, a free lock, loadable files."""
    status = rundir.read_status(run)
    record: dict[str, Any] = {"moment": moment, "state": status and status["state"]}
    assert status is not None and status["state"] == "interrupted", (moment, status)
    assert not rundir.is_run_busy(run), moment
    for name in ("last", "best"):
        meta = rundir.checkpoint_path(run, name).with_suffix(".json")
        if not meta.exists():
            record[name] = None
            continue
        # Also between moving new weights into place and moving their metadata after them (finding F11):
        # the weights the old metadata describes are kept as .prev until both files moved.
        record[name] = load_checkpoint(meta)[1]["step"]
    state_file = run / rundir.STATE_FILE
    if state_file.exists():
        saved = torch.load(state_file, map_location="cpu", weights_only=True)["progress"]
        assert saved["step"] % STEPS_PER_EPOCH == 0 and saved["step"] == saved["epoch"] * STEPS_PER_EPOCH
        record["state_step"] = saved["step"]
    outcomes.append(record)


def check_finished_like_reference(run: Path, ref: Reference) -> None:
    status = rundir.read_status(run)
    assert status["state"] == "finished" and status["error"] is None, status
    assert status["step"] == status["total_steps"] == TOTAL_STEPS
    model, meta = load_checkpoint(rundir.checkpoint_path(run, "last"))
    assert meta["step"] == TOTAL_STEPS and meta["epoch"] == EPOCHS
    epochs = rundir.read_metrics(run, "epoch")
    assert epochs[-1]["step"] == TOTAL_STEPS and epochs[-1]["epoch"] == EPOCHS
    state = model.state_dict()
    different = [k for k in ref.weights if not torch.equal(ref.weights[k], state[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


def leftovers(run: Path) -> list[str]:
    """Temporary files (dot files other than the lock) in the run directory and its checkpoints."""
    found = []
    for folder in (run, run / rundir.CHECKPOINT_DIR, run / rundir.SAMPLES_DIR):
        if folder.is_dir():
            found += [
                p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != rundir.LOCK_FILE
            ]
    return sorted(found)


# ------------------------------------------------------------------------------------------- kill -9
OUTCOMES: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_outcomes(reference):
    """MEDVISION_FAULTS_REPORT=path writes every kill and its outcome there (used for RELIABILITY.md)."""
    yield
    target = os.environ.get("MEDVISION_FAULTS_REPORT")
    if target:
        Path(target).write_text(
            json.dumps(
                {"reference_events": reference.events, "reference_seconds": reference.seconds, **OUTCOMES},
                indent=1,
            )
        )


def test_reference_run_names_every_moment(reference):
    events = reference.events
    assert events.count("step@1#1") == 1 and f"step@{TOTAL_STEPS}#1" in events
    for name in ("last.safetensors", "last.json", "train_state.pt", "best.safetensors", "status.json"):
        for kind in ("mid-write", "before-replace", "after-replace"):
            assert any(e.startswith(f"{kind}:{name}@") for e in events), (kind, name)
    # Checkpoint order within one save: weights, then their metadata, then the resumable state.
    save = [
        e
        for e in events
        if e.endswith(f"@{2 * STEPS_PER_EPOCH}#1")
        and _file_of(e) in ("last.safetensors", "last.json", "train_state.pt")
    ]
    assert [e.split("@")[0] for e in save] == [
        f"{kind}:{name}"
        for name in ("last.safetensors", "last.json", "train_state.pt")
        for kind in ("mid-write", "before-replace", "after-replace")
    ]


def _file_of(event: str) -> str | None:
    return event.split(":", 1)[1].split("@")[0] if ":" in event else None


def kill_moments(events: list[str]) -> list[str]:
    """Every moment of writing the files of the 2nd save (checkpoints, resumable state, status), plus 6
    seeded random moments among the steps and the writes that every run passing that step makes."""
    second = f"@{2 * STEPS_PER_EPOCH}#"
    at_save = [e for e in events if second in e and _file_of(e) in (*CHECKPOINT_FILES, rundir.STATUS_FILE)]
    # Status writes also happen every 2 s (so a resumed run may not repeat them) and config.json is only
    # written by a fresh run: neither is a moment a resumed run is sure to pass.
    repeatable = [
        e for e in events if e not in at_save and _file_of(e) not in (rundir.STATUS_FILE, rundir.CONFIG_FILE)
    ]
    chosen = set(at_save) | set(random.Random(SEED).sample(repeatable, 6))
    return [e for e in events if e in chosen]  # in the order they happen


def test_kill_9_at_many_moments_then_resume_finishes_like_an_uninterrupted_run(
    forker, store, reference, work
):
    run = work / "killed"
    outcomes: list[dict[str, Any]] = OUTCOMES.setdefault("kill", [])
    rng = random.Random(SEED + 1)
    first = True

    def argv() -> list[str]:
        return train_argv(run, store) if first else train_argv(run, resume=True)

    def restart_if_finished(child: Child, moment: str) -> bool:
        """A run that ends before its moment (not reached in this process) is set aside; start afresh."""
        nonlocal first
        if child.code != 0:
            return False
        outcomes.append({"moment": moment, "state": "finished before the moment"})
        shutil.rmtree(run)
        first = True
        return True

    # 1. At named moments (the child kills itself there).
    for moment in kill_moments(reference.events):
        child = forker.run(argv(), fault={"at": moment, "action": "kill"})
        first = False
        if restart_if_finished(child, moment):
            continue
        assert child.code == -signal.SIGKILL, (moment, child.code, child.stderr[-2000:])
        check_after_kill(run, moment, outcomes)

    # 2. By the clock, from outside: as soon as a temporary file shows up, and after random delays.
    for how in ("tmp", "tmp", "clock", "clock", "clock"):
        stale = set(leftovers(run))  # left by the kill before (removed once this run holds the lock)
        child = forker.start(argv())
        first = False
        delay = rng.uniform(0.05, reference.seconds) if how == "clock" else 30.0
        deadline, seen = time.monotonic() + delay, None
        while time.monotonic() < deadline and seen is None:
            if how == "tmp":  # a checkpoint or training state being written
                seen = next((n for n in set(leftovers(run)) - stale if n.startswith(CHECKPOINT_TMP)), None)
            time.sleep(0.0005 if how == "tmp" else 0.002)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        forker.wait(child)
        moment = f"tmp seen: {seen}" if how == "tmp" else f"clock: +{delay:.2f} s"
        if not restart_if_finished(child, moment):
            assert child.code == -signal.SIGKILL, (moment, child.code, child.stderr[-2000:])
            check_after_kill(run, moment, outcomes)

    # 3. Resume to the end.
    child = forker.run(argv())
    assert child.code == 0, child.stderr[-3000:]
    check_finished_like_reference(run, reference)
    killed = [o for o in outcomes if o["state"] == "interrupted"]
    assert len(killed) >= len(outcomes) - 3, outcomes  # nearly every kill landed inside a run


def test_kill_9_of_a_real_python_m_medvision_process_at_a_random_moment(forker, store, reference, work):
    """One genuine `python -m medvision train` process (no fork helper), killed a random time after its
    first step; a resumed run finishes it."""
    run = work / "real"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medvision", *train_argv(run, store)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    delay = random.Random(SEED + 2).uniform(0.0, 0.5)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if ((rundir.read_json(run / rundir.STATUS_FILE) or {}).get("step") or 0) >= 1:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    outcomes = OUTCOMES.setdefault("real", [])
    if proc.returncode == 0:  # the whole run fit into the delay: nothing to recover
        outcomes.append({"moment": f"real +{delay:.2f}s", "state": "finished before the kill"})
        return
    assert proc.returncode == -signal.SIGKILL
    check_after_kill(run, f"real +{delay:.2f}s", outcomes)
    child = forker.run(train_argv(run, resume=True))
    assert child.code == 0, child.stderr[-3000:]
    check_finished_like_reference(run, reference)


# One run killed between the two moves of a checkpoint save, then resumed (findings F11-F13, fixed).
WINDOW_MOMENT = f"before-replace:last.json@{2 * STEPS_PER_EPOCH}#1"


@pytest.fixture(scope="module")
def killed_in_window(forker, store, work) -> dict[str, Any]:
    run = work / "window"
    child = forker.run(train_argv(run, store), fault={"at": WINDOW_MOMENT, "action": "kill"})
    assert child.code == -signal.SIGKILL, child.stderr
    try:
        load_checkpoint(rundir.checkpoint_path(run, "last"))
        loads = "yes"
    except CheckpointError as error:
        loads = error.problem
    left_after_kill = leftovers(run)
    child = forker.run(train_argv(run, resume=True))
    assert child.code == 0, child.stderr
    result = {
        "run": run,
        "loads": loads,
        "left_after_kill": left_after_kill,
        "left": leftovers(run),
        "steps": [r["step"] for r in rundir.read_metrics(run, "step")],
    }
    OUTCOMES["window"] = [{k: v for k, v in result.items() if k != "run"}]
    return result


def test_kill_between_weights_and_metadata_leaves_a_loadable_last_checkpoint(killed_in_window):
    assert killed_in_window["loads"] == "yes"  # F11: the step-4 pair, through the kept .prev weights


def test_resume_removes_temporary_files_a_kill_left_behind(killed_in_window):  # F12
    assert killed_in_window["left_after_kill"], "the kill should have left the metadata's temporary file"
    assert killed_in_window["left"] == []


def test_resumed_metrics_log_has_each_step_once(killed_in_window):  # F13
    steps = killed_in_window["steps"]
    assert steps == list(range(1, TOTAL_STEPS + 1))


def test_resume_after_a_kill_in_the_window_still_finishes(killed_in_window, reference):
    check_finished_like_reference(killed_in_window["run"], reference)


# ------------------------------------------------------------------------------------------- SIGTERM
@pytest.mark.parametrize(
    ("moment", "saved_step"),
    [
        # While the 1st checkpoint's weights are being moved into place: the save completes, then it stops.
        (f"after-replace:last.safetensors@{STEPS_PER_EPOCH}#1", STEPS_PER_EPOCH),
        # While the run is being set up (store checked, config rewritten), before the first step.
        ("after-replace:config.json@0#2", None),
    ],
    ids=["during-checkpoint-write", "before-training"],
)
def test_sigterm_while_saving_or_preparing_stops_cleanly(forker, store, reference, work, moment, saved_step):
    run = work / f"term-{saved_step}"
    child = forker.run(train_argv(run, store), fault={"at": moment, "action": "term"})
    assert child.code == 0, child.stderr
    assert child.out.read_text().strip() == f"training stopped: {run}", child.out.read_text()
    status = rundir.read_status(run)
    assert status["state"] == "stopped" and not rundir.is_run_busy(run)
    assert "Traceback" not in child.stderr
    assert last_meta_step(run) == saved_step
    if saved_step is not None:
        assert status["step"] == saved_step
        assert torch.load(run / rundir.STATE_FILE, weights_only=True)["progress"]["step"] == saved_step
    child = forker.run(train_argv(run, resume=True))
    assert child.code == 0, child.stderr
    check_finished_like_reference(run, reference)


# ------------------------------------------------------------------------ corrupt or foreign checkpoints
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _foreign_checkpoint(stem: Path) -> Path:
    """Weights and metadata of some other tool: a JSON without our format, bytes that are not safetensors."""
    stem.with_suffix(".json").write_text(json.dumps({"framework": "keras", "weights": stem.name}))
    stem.with_suffix(".safetensors").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    return stem.with_suffix(".safetensors")


@pytest.fixture(scope="module")
def bad_files(reference, work) -> dict[str, Path]:
    from medvision.data.synthetic import write_cohort

    root = work / "bad"
    root.mkdir()
    truncated = root / "truncated.safetensors"
    shutil.copy(rundir.checkpoint_path(reference.run, "last"), truncated)
    shutil.copy(
        rundir.checkpoint_path(reference.run, "last").with_suffix(".json"), truncated.with_suffix(".json")
    )
    _truncate(truncated)
    runs = {}
    for kind in ("state_truncated", "state_foreign", "state_other_model", "config_corrupt"):
        runs[kind] = root / kind
        shutil.copytree(reference.run, runs[kind])
    _truncate(runs["state_truncated"] / rundir.STATE_FILE)
    (runs["state_foreign"] / rundir.STATE_FILE).write_bytes(
        rundir.checkpoint_path(reference.run, "last").read_bytes()
    )  # a safetensors file in its place
    # A valid training state of a different model (base_filters 8): resuming must not mix the two.
    other = dict(torch.load(reference.run / rundir.STATE_FILE, weights_only=True))
    other["model"] = {k: torch.cat([v, v]) if v.ndim else v for k, v in other["model"].items()}
    torch.save(other, runs["state_other_model"] / rundir.STATE_FILE)
    (runs["config_corrupt"] / rundir.CONFIG_FILE).write_text('{"train": {"epochs": ')
    case = write_cohort(root / "cases", 1, seed=1, size=(16, 48, 48), workers=1)[0]
    return {
        "truncated": truncated,
        "foreign": _foreign_checkpoint(root / "foreign"),
        "case": case,
        "out": root / "pred.nii.gz",
        **runs,
    }


_RESUME = ["train", "--resume", "--run-dir"]
_INIT = ["train", "--data", "{store}", *TRAIN_ARGS, "--init-from"]
_EVALUATE = ["evaluate", "--data", "{store}", "--device", "cpu", "--checkpoint"]
_PREDICT = ["predict", "{case}", "-o", "{out}", "--device", "cpu", "--checkpoint"]
# name: (command line, text the error line must hold, open finding). F14 (a traceback on the console after
# "error:" for every failure inside run_training) is fixed.
CLI_CASES = {
    "resume-truncated-state": ([*_RESUME, "{state_truncated}"], "{state_truncated}/train_state.pt", None),
    "resume-foreign-state": ([*_RESUME, "{state_foreign}"], "{state_foreign}/train_state.pt", None),
    "resume-state-of-another-model": (
        [*_RESUME, "{state_other_model}"],
        "{state_other_model}/train_state.pt",
        None,
    ),
    "resume-corrupt-config": ([*_RESUME, "{config_corrupt}"], "{config_corrupt}", None),
    "init-from-truncated": ([*_INIT, "{truncated}", "--run-dir", "{work}/init-t"], "{truncated}", None),
    "init-from-foreign": ([*_INIT, "{foreign}", "--run-dir", "{work}/init-f"], "foreign.json", None),
    "evaluate-truncated": ([*_EVALUATE, "{truncated}"], "{truncated}", None),
    "evaluate-foreign": ([*_EVALUATE, "{foreign}"], "foreign.json", None),
    "predict-truncated": ([*_PREDICT, "{truncated}"], "{truncated}", None),
    "predict-foreign": ([*_PREDICT, "{foreign}"], "foreign.json", None),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[m] if m else []) for n, (_, _, m) in CLI_CASES.items()]
)
def test_corrupt_or_foreign_checkpoint_gives_one_line_error(forker, store, work, bad_files, name):
    argv, names, _ = CLI_CASES[name]
    values = {**{k: str(v) for k, v in bad_files.items()}, "work": str(work), "store": str(store)}
    child = forker.run([a.format(**values) for a in argv])
    errors = [line for line in child.stderr.splitlines() if line.startswith("error:")]
    assert child.code == 2, (child.code, child.stderr[-3000:])
    assert len(errors) == 1 and names.format(**values) in errors[0], child.stderr[-3000:]
    assert len(errors[0]) < 1000, f"{len(errors[0])} characters: {errors[0][:300]}..."
    assert "Traceback" not in child.stderr and '  File "' not in child.stderr, child.stderr[-3000:]
    assert not bad_files["out"].exists()


# --------------------------------------------------------------------------------------- disk full
def test_disk_full_while_saving_in_process_keeps_the_previous_checkpoint(store, reference, work, monkeypatch):
    """In this process: from the 2nd epoch on, flushing any checkpoint file fails with ENOSPC."""
    import dataclasses

    import medvision.checkpoint as ckpt
    from medvision.cli import build_parser
    from medvision.commands.train import config_from_args
    from medvision.train.run import run_training

    class Full:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def fsync(self, fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FillAfterEpoch1:
        def on_epoch_start(self, trainer: Any) -> None:
            if trainer.progress.epoch == 1:  # epoch 1 is trained, recorded and saved
                monkeypatch.setattr(ckpt, "os", Full())

    run = work / "full-in-process"
    config = config_from_args(build_parser().parse_args(train_argv(run, store)))
    threads = torch.get_num_threads()
    try:
        with pytest.raises(OSError, match="No space left on device"):
            run_training(config, run, store, callbacks=[FillAfterEpoch1()])
        status = rundir.read_status(run)
        assert status["state"] == "failed" and "No space left on device" in status["error"]
        assert status["step"] == 2 * STEPS_PER_EPOCH and not rundir.is_run_busy(run)
        assert last_meta_step(run) == STEPS_PER_EPOCH  # the epoch-1 checkpoint, intact
        assert torch.load(run / rundir.STATE_FILE, weights_only=True)["progress"]["step"] == STEPS_PER_EPOCH
        assert leftovers(run) == []
        monkeypatch.undo()
        assert run_training(dataclasses.replace(config), run, None, resume=True) == "finished"
    finally:
        torch.set_num_threads(threads)
    check_finished_like_reference(run, reference)


@pytest.fixture(scope="module")
def small_disk(forker, work) -> Path:
    if not forker.hello["mounted"]:
        pytest.skip(f"no private tmpfs for the disk-full runs ({forker.hello['why']})")
    return work / "small_disk"


@pytest.mark.parametrize(
    ("moment", "keep_free"),
    [
        # Right after the 1st save, the disk is left with 16 kB: status and metrics still fit, the next
        # checkpoint (41 kB of weights) does not.
        (f"after-replace:train_state.pt@{STEPS_PER_EPOCH}#1", 16 * 1024),
        # Mid-epoch 2 the disk is left with nothing at all: the next metrics line cannot be written.
        (f"step@{STEPS_PER_EPOCH + 2}#1", 0),
    ],
    ids=["nearly-full", "completely-full"],
)
def test_disk_full_on_a_real_file_system(forker, store, reference, small_disk, moment, keep_free):
    run = small_disk / f"run-{keep_free}"
    seen = forker.inside(run)
    fault = {"at": moment, "action": "fill", "fill_dir": str(small_disk), "keep_free": keep_free}
    child = forker.run(train_argv(run, store), fault=fault)
    OUTCOMES.setdefault("disk", []).append(
        {
            "moment": moment,
            "keep_free": keep_free,
            "code": child.code,
            "stderr_tail": child.stderr.strip().splitlines()[-1:],
        }
    )
    assert child.code != 0 and "No space left on device" in child.stderr, child.stderr[-3000:]
    status = rundir.read_status(seen)
    assert not rundir.is_run_busy(seen)
    if keep_free:
        assert status["state"] == "failed" and "No space left on device" in status["error"], status
        assert status["step"] == 2 * STEPS_PER_EPOCH
    else:  # not even the status can be written: it still says running, and reads as interrupted
        assert status["state"] == "interrupted", status
    assert last_meta_step(seen) == STEPS_PER_EPOCH
    assert torch.load(seen / rundir.STATE_FILE, weights_only=True)["progress"]["step"] == STEPS_PER_EPOCH
    assert [n for n in leftovers(seen) if n.endswith(".tmp")] == []
    (forker.inside(small_disk) / "filler").unlink()  # space freed: the run continues from its last state
    child = forker.run(train_argv(run, resume=True))
    assert child.code == 0, child.stderr[-3000:]
    check_finished_like_reference(seen, reference)
    lines = (seen / rundir.METRICS_FILE).read_text().splitlines()
    OUTCOMES["disk"][-1].update(
        status=status["state"],
        error=status.get("error"),
        metrics_lines=len(lines),
        unreadable_lines=[line for line in lines if not _is_json(line)],
        steps_after_resume=[r["step"] for r in rundir.read_metrics(seen, "step")],
    )


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_disk_full_gives_one_line_error():
    disk = OUTCOMES.get("disk")
    if not disk:
        pytest.skip("the disk-full runs did not run")
    for outcome in disk:
        assert outcome["code"] == 2 and outcome["stderr_tail"][0].startswith("error:"), outcome
