"""Whether a process the app started is still the same live process, from any server process or session.

A pid alone is not enough: after the process ends the kernel may give its number to another one. The
start time the kernel records for a process (``/proc/<pid>/stat``, field 22, in clock ticks since boot)
does not change while it lives, so ``(pid, start)`` names one process for good. A zombie (ended, not yet
reaped by its parent, which may be another server process) counts as ended.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_alive", "start_time"]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")": split after the last.
    _, _, rest = text.rpartition(")")
    return rest.split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None when no such process is readable."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20:
        return None
    return int(fields[19])  # field 22 of the whole line: fields here start at field 3 (state)


def is_alive(pid: int, start: int | None) -> bool:
    """``pid`` is live, not a zombie, and (where ``start`` is known) the very process that had that start."""
    fields = _stat_fields(pid)
    if fields is None:
        if not Path("/proc/self/stat").exists():  # no procfs (not Linux): fall back to the pid alone
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    if fields[0] == "Z" or fields[0] == "X":
        return False
    return start is None or (len(fields) >= 20 and int(fields[19]) == int(start))
