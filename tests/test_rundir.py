"""Run directory: status (incl. interrupted runs), locking against a second process, metrics log, listing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from medvision.errors import RunBusyError
from medvision.train import rundir

# A child process that takes the run directory's lock, says so, and holds it until stdin closes.
HOLD_LOCK = """
import sys
from medvision.train import rundir
lock = rundir.RunLock(sys.argv[1]).acquire()
rundir.write_status(sys.argv[1], "running", step=3)
print("locked", flush=True)
sys.stdin.read()
"""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_round_trip_and_strict_json(tmp_path):
    rundir.write_status(tmp_path, "finished", epoch=2, step=10, total_steps=10, best=math.nan)
    status = rundir.read_status(tmp_path)
    assert status["state"] == "finished"
    assert status["step"] == 10 and status["best"] is None  # NaN written as null (strict JSON)
    json.loads((tmp_path / rundir.STATUS_FILE).read_text(), parse_constant=lambda c: pytest.fail(c))
    with pytest.raises(ValueError):
        rundir.write_status(tmp_path, "sleeping")


def test_running_status_with_dead_pid_reads_interrupted(tmp_path):
    rundir.write_status(tmp_path, "running", pid=_dead_pid())
    assert rundir.read_status(tmp_path)["state"] == "interrupted"
    assert not rundir.is_run_busy(tmp_path)


def test_running_status_with_released_lock_reads_interrupted(tmp_path):
    with rundir.RunLock(tmp_path):
        rundir.write_status(tmp_path, "running")
        assert rundir.read_status(tmp_path)["state"] == "running"
    # Same (alive) pid, but nobody holds the lock any more: the run is over.
    assert rundir.read_status(tmp_path)["state"] == "interrupted"


def test_lock_refuses_second_user_in_process(tmp_path):
    with rundir.RunLock(tmp_path):
        rundir.write_status(tmp_path, "running")
        assert rundir.is_run_busy(tmp_path)
        with pytest.raises(RunBusyError, match="is being used by training process PID"):
            rundir.RunLock(tmp_path).acquire()
    assert not rundir.is_run_busy(tmp_path)
    rundir.RunLock(tmp_path).acquire().release()  # free again


def test_lock_held_by_other_process(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        assert rundir.is_run_busy(tmp_path)
        assert rundir.read_status(tmp_path)["state"] == "running"
        with pytest.raises(RunBusyError, match=f"PID {child.pid}"):
            rundir.RunLock(tmp_path).acquire()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # The kernel drops the lock with the process; the stale "running" status reads interrupted.
    assert not rundir.is_run_busy(tmp_path)
    assert rundir.read_status(tmp_path)["state"] == "interrupted"


def test_metrics_append_read_and_partial_line(tmp_path):
    rundir.append_metrics(tmp_path, {"kind": "step", "step": 1, "loss": 0.5})
    rundir.append_metrics(tmp_path, {"kind": "epoch", "step": 2, "val": {"WT": {"dice": math.nan}}})
    with open(tmp_path / rundir.METRICS_FILE, "a") as handle:
        handle.write('{"kind": "step", "st')  # a writer caught mid-line
    records = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["val"]["WT"]["dice"] is None
    assert [r["kind"] for r in rundir.read_metrics(tmp_path, kind="epoch")] == ["epoch"]
    assert rundir.read_metrics(tmp_path / "missing") == []


def test_list_runs(tmp_path):
    for name, state in (("a", "finished"), ("b", "failed")):
        run = tmp_path / name
        rundir.write_json_atomic(run / rundir.CONFIG_FILE, {"train": {"preset": "demo"}})
        error = "boom" if state == "failed" else None
        rundir.write_status(run, state, epoch=1, step=5, total_steps=5, error=error)
        time.sleep(0.01)
    (tmp_path / "not_a_run").mkdir()
    runs = rundir.list_runs(tmp_path)
    assert [r.name for r in runs] == ["b", "a"]  # newest first
    assert runs[0].state == "failed" and runs[0].error == "boom"
    assert runs[1].preset == "demo" and runs[1].step == 5
    assert rundir.list_runs(tmp_path / "nope") == []
