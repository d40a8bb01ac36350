"""How many CPU threads a prediction should use right now.

PyTorch's OpenMP threads wait for each other at the end of every operation. When other processes keep
the cores busy (a training run started from the app, another job), a descheduled thread stalls all the
others: on a 2-core machine with two busy neighbours, one forward pass of a slice took about 1 s with 2
threads and 0.05 s with 1, and a whole volume 30 s instead of 4 s (bench/RESULTS.md). So before a
prediction we look at how much CPU the rest of the machine is using (a 50 ms sample of /proc/stat,
Linux only) and leave those cores alone. Elsewhere, or when /proc/stat cannot be read, nothing changes.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

_STAT = Path("/proc/stat")
_CACHE_SECONDS = 5.0
_cache: tuple[float, int, int] | None = None  # (time, max_threads, answer)
_lock = threading.Lock()


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs from the first line of /proc/stat, or None."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def busy_cores_elsewhere(window_s: float = 0.05, cores: int | None = None) -> float | None:
    """Cores kept busy by other work during a short window in which this process sleeps, or None."""
    import os

    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    fraction = (second[0] - first[0]) / (second[1] - first[1])
    return fraction * (cores or os.cpu_count() or 1)


def auto_threads(max_threads: int) -> int:
    """``max_threads`` minus the cores other work is using now (at least 1); cached for a few seconds."""
    global _cache
    now = time.monotonic()
    with _lock:
        if _cache is not None and now - _cache[0] < _CACHE_SECONDS and _cache[1] == max_threads:
            return _cache[2]
    busy = busy_cores_elsewhere()
    # 0.3 core of background activity (the app's own server, a shell) does not cost a thread.
    answer = max_threads if busy is None else max(1, max_threads - max(0, math.ceil(busy - 0.3)))
    with _lock:
        _cache = (time.monotonic(), max_threads, answer)
    return answer
