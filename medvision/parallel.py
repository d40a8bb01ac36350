"""Worker processes for case-parallel jobs (synthetic cohort, store preparation).

Workers are started with "spawn", not fork: the parent may hold threads (torch's pools, Streamlit's
server) that a fork would copy mid-lock. A spawned worker normally re-imports the parent's ``__main__``
script first, so that functions defined there can be unpickled. Ours never are (every job function lives in
a ``medvision`` module), and re-running the script is harmful where ``__main__`` is a Streamlit page:
``streamlit run`` and ``AppTest`` put the app script there, and each worker would run ``app.py`` again
(making the demo cohort in the user's workspace, racing the others on its temporary files). So the pool
starts all its workers up front while a blank ``__main__`` stands in for a *script* main.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import types
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

logger = logging.getLogger(__name__)


def _ready() -> int:
    return os.getpid()


@contextlib.contextmanager
def _without_script_main() -> Iterator[None]:
    """Hide a ``__main__`` that was run from a file path (a script, not ``python -m``) while workers spawn."""
    main = sys.modules.get("__main__")
    from_file = getattr(main, "__file__", None) is not None
    if main is None or getattr(main, "__spec__", None) is not None or not from_file:
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Set ``overrides`` in os.environ (inherited by the workers spawned meanwhile), then restore."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def spawn_pool(workers: int, *, env: Mapping[str, str] | None = None) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of ``workers`` spawned processes, all started before it is returned.

    Args:
        workers: number of worker processes (>= 1).
        env: environment variables the workers start with (e.g. single-threaded BLAS).
    Raises:
        ValueError: workers < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        with _without_script_main(), _environment(env or {}):
            # The executor spawns a worker per submitted job while none is idle; submitting one tiny job per
            # worker at once starts them all here, inside the guards, instead of later at an unguarded submit.
            pids = {f.result() for f in [pool.submit(_ready) for _ in range(workers)]}
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    logger.debug("started %d worker processes (%d answered)", workers, len(pids))
    return pool
