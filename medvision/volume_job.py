"""A whole-volume prediction running in a background thread, polled by the app.

The Streamlit page starts a job, keeps it in ``st.session_state`` and reads ``progress`` / ``state`` from
a fragment that reruns every second; every attribute is read under a lock, so polling from another
thread is safe. ``cancel()`` stops the job at the next batch boundary, and so does ``still_wanted``
returning False (the page passes "is my browser session still connected?": a closed tab must not keep
the server's cores busy for minutes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from medvision.data.case import Case
from medvision.inference.predictor import Predictor, VolumePrediction

logger = logging.getLogger(__name__)

STATES = ("pending", "running", "done", "failed", "cancelled")


class _Cancelled(Exception):
    """Raised from the progress callback to stop predict_volume between batches."""


class VolumeJob:
    """``VolumeJob(predictor, case, tta=..., mc_samples=..., seed=..., min_component_voxels=...).start()``.

    state: one of STATES; progress: fraction in [0, 1]; result: the VolumePrediction once done;
    error: the exception when failed (its message is what the page shows). ``still_wanted`` is asked
    between batches; when it returns False the job ends as "cancelled".
    """

    def __init__(
        self,
        predictor: Predictor,
        case: Case,
        *,
        still_wanted: Callable[[], bool] | None = None,
        **options: Any,
    ) -> None:
        allowed = {"tta", "mc_samples", "seed", "min_component_voxels", "min_component_fraction", "mc_focus"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown predict_volume options {unknown}; allowed: {sorted(allowed)}")
        self.predictor = predictor
        self.case = case
        self.options = dict(options)
        self._lock = threading.Lock()
        self._state = "pending"
        self._progress = 0.0
        self._started = 0.0
        self._result: VolumePrediction | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._still_wanted = still_wanted
        self._thread = threading.Thread(
            target=self._run, name=f"medvision-predict-{case.case_id}", daemon=True
        )

    def start(self) -> VolumeJob:
        with self._lock:
            if self._state != "pending":
                raise RuntimeError(f"job already {self._state}")
            self._state = "running"
            self._started = time.monotonic()
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at the next batch boundary (no effect once finished)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finishes (or ``timeout`` seconds pass); True when finished."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return self.finished

    def _on_progress(self, fraction: float) -> None:
        if self._still_wanted is not None and not self._still_wanted():
            logger.info("prediction of %s cancelled: nobody is waiting for it any more", self.case.case_id)
            self._cancel.set()
        if self._cancel.is_set():
            raise _Cancelled
        with self._lock:
            self._progress = min(max(float(fraction), 0.0), 1.0)

    def _run(self) -> None:
        try:
            result = self.predictor.predict_volume(self.case, progress=self._on_progress, **self.options)
        except _Cancelled:
            with self._lock:
                self._state = "cancelled"
            return
        except BaseException as exc:  # reported to the page through .error instead of dying silently
            logger.warning("prediction of %s failed: %s", self.case.case_id, exc)
            with self._lock:
                self._state, self._error = "failed", exc
            return
        with self._lock:
            self._state, self._result, self._progress = "done", result, 1.0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def progress(self) -> float:
        with self._lock:
            return self._progress

    @property
    def seconds_left(self) -> float | None:
        """Time still to go, extrapolated from the pace so far; None before any progress or once finished.

        The engine reports progress in slice passes, so the pace is even through a run (MC passes count
        as many plain passes as there are samples).
        """
        with self._lock:
            if self._state != "running" or not 0.0 < self._progress < 1.0:
                return None
            elapsed = time.monotonic() - self._started
            return elapsed * (1.0 - self._progress) / self._progress

    @property
    def result(self) -> VolumePrediction | None:
        with self._lock:
            return self._result

    @property
    def error(self) -> BaseException | None:
        with self._lock:
            return self._error

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")
