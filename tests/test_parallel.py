"""medvision.parallel: spawned workers never re-run a script standing in as ``__main__`` (as a Streamlit page
does under ``streamlit run`` and AppTest), and they start with the environment they were given."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from medvision.parallel import spawn_pool


def _script_main(tmp_path: Path) -> types.ModuleType:
    """A stand-in ``__main__`` run from a file that leaves a marker whenever it is executed."""
    marker = tmp_path / "script-ran"
    script = tmp_path / "page.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    module.__spec__ = None
    return module


def test_workers_do_not_rerun_a_script_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "__main__", _script_main(tmp_path))
    with spawn_pool(2) as pool:
        pids = set(pool.map(_pid, range(8)))
    assert len(pids) >= 1 and os.getpid() not in pids
    assert not (tmp_path / "script-ran").exists(), "a worker executed the parent's __main__ script"
    assert sys.modules["__main__"].__file__ == str(tmp_path / "page.py"), "the real __main__ was not restored"


def _pid(_: int) -> int:
    return os.getpid()


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_workers_start_with_the_given_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDVISION_TEST_WORKER_VAR", raising=False)
    with spawn_pool(2, env={"MEDVISION_TEST_WORKER_VAR": "1"}) as pool:
        seen = set(pool.map(_env, ["MEDVISION_TEST_WORKER_VAR"] * 4))
    assert seen == {"1"}
    assert "MEDVISION_TEST_WORKER_VAR" not in os.environ, "the parent's environment was not restored"


def test_worker_count_is_checked() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        spawn_pool(0)
