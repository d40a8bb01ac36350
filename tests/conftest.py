"""Shared test settings: the repository root on PYTHONPATH for subprocesses, and the real case path."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CASE_DIR = REPO_ROOT.parent / "shared" / "data" / "brats2021_00006"

# Tests start `python -m medvision ...` and `streamlit run app.py` as subprocesses; they must import
# this checkout's package whatever the current directory is.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def real_case_dir() -> Path:
    """The real BraTS 2021 case kept beside the project (never copied into it)."""
    if not (REAL_CASE_DIR / "BraTS2021_00006_flair.nii.gz").exists():
        pytest.skip(f"real BraTS case not found at {REAL_CASE_DIR}")
    return REAL_CASE_DIR


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest runs a page as ``__main__`` and leaves it there; put the real one back after every test."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _onnx_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`predict` keeps its ONNX export in the user's cache (~/.cache/medvision); every test, and every
    process a test starts, is given a temporary folder instead (.ci/run fails if the real one appears)."""
    monkeypatch.setenv("MEDVISION_CACHE_DIR", str(tmp_path / "onnx-cache"))


@pytest.fixture()
def slow_start(monkeypatch):
    """Training launches start a process that writes nothing for a minute (a trainer still importing);
    yields a list the test adds its run folders to, and stops those processes afterwards."""
    from medvision.app_support import launcher

    def command(store, run_dir, config, *, resume=False, python=sys.executable):
        return [python, "-c", "import time; time.sleep(60)"]

    monkeypatch.setattr(launcher, "train_command", command)
    started: list[Path] = []
    yield started
    for run_dir in started:
        deadline = time.time() + 20
        while launcher.is_busy(run_dir) and time.time() < deadline:
            launcher.stop_training(run_dir)
            time.sleep(0.2)


# Skip policy --------------------------------------------------------------------------------------------
# With MEDVISION_STRICT_SKIPS=1 (set by .ci/run) the only skips allowed are the CUDA-only tests: any other
# skip means part of the suite silently did not run (a missing package, browser or data folder), and fails.
ALLOWED_SKIP = "CUDA"
_skips: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skips.append((report.nodeid, _skip_reason(report)))


def _disallowed_skips() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skips if ALLOWED_SKIP not in reason]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MEDVISION_STRICT_SKIPS") == "1" and _disallowed_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if not _skips:
        return
    terminalreporter.section("skip reasons")
    for node, reason in _skips:
        terminalreporter.write_line(f"{node}: {reason}")
    bad = _disallowed_skips()
    if os.environ.get("MEDVISION_STRICT_SKIPS") == "1" and bad:
        terminalreporter.write_line(
            f"FAILED: {len(bad)} skip(s) other than CUDA-only tests (MEDVISION_STRICT_SKIPS=1)", red=True
        )
