"""Attacks on the app and what stops them: one test per finding of the security review.

1. File and folder names with Markdown (links, images, icons) shown to every user as plain text.
2. Report CSV cells that a spreadsheet would run as a formula, written as text.
3. Concurrent launches capped across sessions, and a form-legal run too big for the machine refused.
4. A websocket with a foreign Host header (DNS rebinding) refused by the real server, localhost served.
5. A failed run shown as one line without server paths, and Stop available right after Resume.

The AppTest flows use test_app's workspace (a tiny synthetic cohort in a temporary MEDVISION_HOME);
launches start a stand-in process that sleeps like a trainer still importing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_app
from streamlit.testing.v1 import AppTest
from test_app import _open, _values
from tiny_checkpoint import save_tiny_checkpoint

from medvision.app_support import launcher, memory_estimate, viewer
from medvision.app_support.job_limits import JobLimitError, JobLimits, live_jobs
from medvision.app_support.plain_text import code, plain
from medvision.train import rundir
from medvision.train.config import TrainConfig
from medvision.volumetry import volumetry_csv

REPO = Path(__file__).resolve().parents[1]
home = test_app.home
app = test_app.app

# What a user with write access to a shared data folder names a file (no "/" in a file name).
ATTACK = "**B** [relogin](https:x.example) ![b](https:x.example?i.png) :material/home: :red[x] $x$ www.x.org"
NAME = ATTACK.replace(":material/home: ", "")  # a file name holds no "/"


def _live_markdown(source: str) -> list[str]:
    """Markdown constructs in ``source`` that would render (code spans, which render nothing, removed)."""
    text = re.sub(r"(`+).*?\1", "", source)
    checks = {
        "link": r"(?<!\\)\[[^\]]*(?<!\\)\]\(",
        "image": r"(?<!\\)!(?<!\\)\[",
        "icon": r":material/",
        "colour": r"(?<!\\):red(?<!\\)\[",
        "latex": r"(?<!\\)\$x(?<!\\)\$",
        "bold": r"(?<!\\)\*\*B(?<!\\)\*\*",
        "autolink": r"(?i)https?://|www\.",
    }
    return [name for name, pattern in checks.items() if re.search(pattern, text)]


def _all_text(at: AppTest) -> list[str]:
    """Every Markdown source the page sent (sidebar included): text, alerts, headings, metrics, expanders."""
    texts: list[str] = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title"):
        texts += _values(getattr(at, kind))
    for metric in at.metric:
        texts += [metric.label, str(metric.value)]
    texts += [expander.label for expander in at.expander]
    return texts


def _unescaped(text: str) -> str:
    """What a Markdown element shows for ``text`` (backslash escapes undone)."""
    return re.sub(r"\\(.)", r"\1", text)


def _runs(at: AppTest) -> Path:
    return at.session_state["mv_settings"].workspace.runs


# ------------------------------------------------------------------------------------ 1. markdown


def test_plain_text_leaves_no_live_markdown():
    assert _live_markdown(ATTACK) == ["link", "image", "icon", "colour", "latex", "bold", "autolink"]
    assert _live_markdown(plain(ATTACK)) == []
    assert _live_markdown(plain("see http://x.example/a and a@b.example")) == []
    # Ids read as they are: intraword "_", "-", "." and parentheses need no escape.
    assert plain("BraTS2021_00006 (copy).nii.gz") == "BraTS2021_00006 (copy).nii.gz"
    assert code("a`b") == "``a`b``" and _live_markdown(f"x {code(ATTACK)} y") == []


def test_markdown_in_a_model_file_and_its_metadata_renders_as_text(app):
    models = app.session_state["mv_settings"].workspace.models
    save_tiny_checkpoint(
        models / f"{NAME}.safetensors",
        preset=ATTACK,
        val={ATTACK: {"dice": 0.5}},
        test={"WT": {"dice": 0.4}},
    )
    app.run()
    [label] = [o for o in app.selectbox(key="model_label").options if "relogin" in o]
    app.selectbox(key="model_label").set_value(label).run()
    _open(app, "pages/models.py")
    assert not app.error, _values(app.error)
    shown = [t for t in _all_text(app) if "relogin" in t or "home" in t.replace("\\", "")]
    assert shown, "the page does not show the model's name"
    assert {t: _live_markdown(t) for t in shown if _live_markdown(t)} == {}


def test_markdown_in_a_server_folder_name_renders_as_text(app, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / NAME).mkdir(parents=True)
    monkeypatch.setenv("MEDVISION_DATA_ROOTS", str(shared))
    app.radio(key="source_kind").set_value("Folder or store on the server").run()
    app.text_input(key="server_path").set_value(str(shared / NAME)).run()
    assert not app.exception
    try:
        texts = [t for t in _all_text(app) if "relogin" in t]
        assert texts, (_values(app.sidebar.error), _values(app.sidebar.info))
        assert {t: _live_markdown(t) for t in texts if _live_markdown(t)} == {}
    finally:
        for job in live_jobs(app.session_state["mv_job_limits"].registry):
            os.kill(job.pid, 15)


# ----------------------------------------------------------------------------------- 2. CSV cells


def test_report_csv_cells_never_start_a_formula():
    formula = '=HYPERLINK("http://x.example","open")'
    text = viewer.report_csv(
        formula, "@SUM(A1)", {"WT_cm3": -1.5, "TC_cm3": 2.0, "note": "-2+3", "tab": "\tx"}
    )
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["case_id"] == "'" + formula and row["model"] == "'@SUM(A1)"
    assert row["note"] == "'-2+3" and row["tab"] == "'\tx"
    assert row["WT_cm3"] == "-1.500" and row["TC_cm3"] == "2.000"  # numbers stay numbers
    [cli_row] = list(
        csv.DictReader(io.StringIO(volumetry_csv({"WT_cm3": -0.25}, case_id="+cmd|' /C calc'!A0")))
    )
    assert cli_row == {"case_id": "'+cmd|' /C calc'!A0", "WT_cm3": "-0.250"}


# ------------------------------------------------------------------------------- 3. launch limits


def _sleeper(tmp_path: Path) -> str:
    """A stand-in for the Python interpreter that ignores its arguments and sleeps like a long prepare."""
    script = tmp_path / "fake_python"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    return str(script)


def test_prepares_are_capped_across_sessions_and_server_processes(tmp_path):
    limits = JobLimits(registry=tmp_path / "jobs", prepare=1)
    python = _sleeper(tmp_path)
    first = launcher.start_prepare(tmp_path / "a", tmp_path / "a.h5", python=python, limits=limits)
    try:
        launcher._children.clear()  # another server process (or a module reload) knows nothing of it
        with pytest.raises(
            JobLimitError, match=r"1 of at most 1 dataset prepares already running: a\.h5\.prepare"
        ):
            launcher.start_prepare(tmp_path / "b", tmp_path / "b.h5", python=python, limits=limits)
        assert not launcher.prepare_dir(tmp_path / "b.h5").exists()
    finally:
        os.kill(first.pid, 15)
    deadline = time.time() + 10
    while live_jobs(limits.registry) and time.time() < deadline:
        time.sleep(0.1)
    # Once it has ended its place is free again.
    again = launcher.start_prepare(tmp_path / "b", tmp_path / "b.h5", python=python, limits=limits)
    os.kill(again.pid, 15)


def _fake_trainer(state: str, run_dir: Path) -> list[str]:
    """A process that writes the trainer's status with ``state`` and its own pid, then lingers 30 s (a
    trainer that has said how it ended and is still releasing its memory, or one still running)."""
    code = (
        "import json, os, sys, time; from pathlib import Path; "
        "status = {'state': sys.argv[2], 'pid': os.getpid()}; "
        "Path(sys.argv[1], 'status.json').write_text(json.dumps(status)); time.sleep(30)"
    )
    return [sys.executable, "-c", code, str(run_dir), state]


def _wait_for_status(run_dir: Path, timeout_s: float = 20) -> None:
    deadline = time.time() + timeout_s
    while rundir.read_status(run_dir) is None:  # absent, or not yet completely written
        assert time.time() < deadline, f"{run_dir} wrote no status"
        time.sleep(0.05)


@pytest.mark.parametrize(("state", "admitted"), [("finished", True), ("running", False)])
def test_a_run_that_has_said_it_ended_takes_no_place_while_it_exits(tmp_path, state, admitted):
    limits = JobLimits(registry=tmp_path / "jobs", training=1)
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = launcher.launch(_fake_trainer(state, first_dir), first_dir, kind="training", limits=limits)
    pids = [first.pid]
    try:
        _wait_for_status(first_dir)
        assert live_jobs(limits.registry, "training"), "the first process should still live"
        launcher._children.clear()  # the next launch may come from another server process
        second = tmp_path / "second"
        if admitted:
            pids.append(launcher.launch([sys.executable, "-c", "pass"], second, limits=limits).pid)
        else:
            with pytest.raises(JobLimitError, match=r"1 of at most 1 training runs already running: first"):
                launcher.launch([sys.executable, "-c", "pass"], second, limits=limits)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)


def test_a_second_training_run_is_refused_while_one_runs(app, slow_start):
    _open(app, "pages/train.py")
    app.text_input(key="train_run_name").set_value("cap-first")
    app.button(key="train_launch").click().run()
    assert any("Started run cap-first" in s for s in _values(app.success)), _values(app.error)
    slow_start.append(_runs(app) / "cap-first")
    launcher._children.clear()  # the next click may come from another session's server process
    app.text_input(key="train_run_name").set_value("cap-second")
    app.button(key="train_launch").click().run()
    errors = [_unescaped(e) for e in _values(app.error)]
    assert any("1 of at most 1 training runs already running: cap-first" in e for e in errors), errors
    assert "MEDVISION_MAX_TRAINING_JOBS" in " ".join(errors)
    assert not (_runs(app) / "cap-second").exists()


def test_a_run_too_big_for_the_memory_is_refused_with_its_estimate(app, monkeypatch):
    monkeypatch.setattr(
        memory_estimate, "available_memory", lambda device: (8 * 2**30, "memory (MemAvailable)")
    )
    _open(app, "pages/train.py")
    app.text_input(key="train_run_name").set_value("too-big")
    app.number_input(key="train_batch_size").set_value(1024)
    app.number_input(key="train_base_filters").set_value(128)
    app.button(key="train_launch").click().run()
    [error] = [e for e in _values(app.error) if "too" in e or "GiB" in e]
    assert "batch size 1024 x base filters 128" in error and "GiB" in error and "8.0 GiB" in error, error
    assert not (_runs(app) / "too-big").exists()
    # The estimate itself: 50 fp32 activations per batch*filter*pixel, plus weights and AdamW state.
    config = TrainConfig.from_preset("demo", batch_size=1024, base_filters=128)
    estimate = memory_estimate.estimate_training_memory(config)
    assert estimate.activations == 50 * 4 * 1024 * 128 * 96 * 96 and estimate.total > 200 * 2**30
    assert memory_estimate.check_fits(TrainConfig.from_preset("demo")).total < 2**30


# ------------------------------------------------------------------------------ 4. Host header


def _handshake(port: int, host: str) -> str:
    """The status line the server answers a browser-like websocket upgrade with ``Host: host``."""
    request = (
        "GET /_stcore/stream HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nOrigin: http://{host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


@pytest.mark.timeout(90)
def test_a_foreign_host_header_cannot_open_the_app_websocket(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "MEDVISION_HOME": str(tmp_path / "mv"),
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "server.log"
    # The repository's .streamlit/config.toml (read from the working directory) is what is tested.
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port)]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                line = _handshake(port, "localhost")
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        assert " 101 " in line, line
        assert " 101 " in _handshake(port, "127.0.0.1")
        refused = _handshake(port, "rebind.attacker.example")
        assert " 101 " not in refused and " 403 " in refused, refused
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


# --------------------------------------------------------------------------- 5. run failures, Stop


def test_a_failed_run_shows_one_line_without_server_paths(app):
    ws = app.session_state["mv_settings"].workspace
    run = ws.runs / "broken-paths"
    missing = ws.data / "cases" / "x_flair.nii.gz"
    rundir.write_status(run, "failed", error=f"{missing}: not a gzip file")
    (run / "train.log").write_text(
        "Traceback (most recent call last):\n"
        f'  File "{REPO}/.venv/lib/python3.11/site-packages/nibabel/loadsave.py", line 100, in load\n'
        "    raise ImageFileError(message)\n"
        f"medvision.errors.InputDataError: {missing}: not a gzip file\n"
    )
    _open(app, "pages/train.py")
    app.selectbox(key="train_selected_run").set_value("broken-paths").run()
    assert not app.exception
    [error] = [_unescaped(e) for e in _values(app.error) if e.startswith("Run failed")]
    assert "data/cases/x_flair.nii.gz" in error and str(ws.home) not in error, error
    assert "Log of the run" in [e.label for e in app.expander]
    [log] = [c for c in _values(app.code) if "InputDataError" in c]
    assert "site-packages" not in log and str(ws.home) not in log and str(REPO) not in log, log
    assert 'File "loadsave.py", line 100' in log


def test_stop_is_available_as_soon_as_a_resumed_process_exists(app, slow_start):
    run = _runs(app) / "resume-me"
    config = TrainConfig.from_preset("demo", epochs=2).to_dict()
    rundir.write_json_atomic(run / rundir.CONFIG_FILE, {"train": config})
    (run / rundir.STATE_FILE).write_bytes(b"saved state")
    rundir.write_status(run, "stopped", pid=2**22 + 7, epoch=0, step=3, total_steps=20)
    _open(app, "pages/train.py")
    app.selectbox(key="train_selected_run").set_value("resume-me").run()
    assert app.button(key="train_stop").disabled and not app.button(key="train_resume").disabled
    app.button(key="train_resume").click().run()
    slow_start.append(run)
    assert any("Resumed resume-me" in s for s in _values(app.success)), _values(app.error)
    # Streamlit re-imported the launcher (a file changed) or another server process shows the page:
    # only the run folder says the new process is there, before the trainer writes anything.
    launcher._children.clear()
    app.run()
    assert not app.exception
    assert "`starting`" in [m for m in _values(app.markdown) if m.startswith("**Status:**")][0]
    assert not app.button(key="train_stop").disabled and app.button(key="train_resume").disabled
    app.button(key="train_stop").click().run()
    assert any("Asked resume-me to stop" in i for i in _values(app.info)), _values(app.warning)


def test_a_launched_job_keeps_its_temporary_files_in_its_run_folder(tmp_path):
    """A prepare extracts case zips to the temporary folder: that must be inside the workspace."""
    run_dir = tmp_path / "workspace" / "runs" / "job"
    script = "import tempfile; print('tmp=' + tempfile.mkdtemp())"
    launched = launcher.launch([sys.executable, "-c", script], run_dir)
    deadline = time.monotonic() + 30
    while launcher.exit_code(run_dir) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    printed = [line for line in launcher.launch_log_tail(run_dir).splitlines() if line.startswith("tmp=")]
    assert launched.pid and printed, launcher.launch_log_tail(run_dir)
    made = Path(printed[0].removeprefix("tmp="))
    assert made.is_dir() and made.is_relative_to(run_dir / launcher.SCRATCH_DIR)
