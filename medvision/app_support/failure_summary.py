"""One line that says why a background job failed, from its log, without the server's file layout.

A training or prepare log ends with a Python traceback whose frames name every absolute path on the
server (the virtual environment, the user's home, the workspace). The pages show one line instead: the
exception's type and message, with paths inside the workspace made relative to it and any other path
reduced to its file name. The same reduction applies to the log tail a page may show on request.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["failure_summary", "shorten_paths"]

MAX_SUMMARY = 300  # characters: a message that long is a dump, not a reason
_TRACEBACK = "Traceback (most recent call last):"
# An exception line: a (dotted) class name ending like an exception, optionally ": message".
_EXCEPTION = re.compile(
    r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Fault|Warning|Requested))(?::\s*(.*))?$"
)
# A logging record of ours: "2026-01-01 12:00:00,000 ERROR medvision.x: message".
_LOG_ERROR = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) [\w.]+: (.*)$")
# An absolute POSIX path: "/" then anything up to whitespace or a quote, bracket or comma around it.
_ABSOLUTE = re.compile(r"(?<![\w.~])/[^\s'\"(),;:\[\]<>]+")


def shorten_paths(text: str, base: Path | None = None) -> str:
    """``text`` with absolute paths under ``base`` made relative to it and all others cut to file names."""
    prefix = str(Path(base).resolve()) if base is not None else None

    def short(match: re.Match[str]) -> str:
        path = match.group(0)
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return path[len(prefix) :].lstrip("/") or "."
        return Path(path).name or path

    return _ABSOLUTE.sub(short, text)


def _exception_line(lines: list[str]) -> str | None:
    """The exception line of the last traceback in ``lines`` (the first unindented line after it)."""
    start = max((i for i, line in enumerate(lines) if line.endswith(_TRACEBACK)), default=None)
    if start is None:
        return None
    for line in lines[start + 1 :]:
        if line and not line[0].isspace():
            return line.strip()
    return None


def failure_summary(log_text: str, base: Path | None = None) -> str:
    """``"ValueError: bad slice in case x.nii.gz"`` from a log: the last traceback's exception, else the
    last error record, else the last line; paths shortened (see :func:`shorten_paths`)."""
    lines = [line.rstrip() for line in log_text.splitlines()]
    found = _exception_line(lines)
    if found is None:
        for line in reversed(lines):
            match = _EXCEPTION.match(line.strip()) or _LOG_ERROR.match(line.strip())
            if match:
                found = line.strip() if _EXCEPTION.match(line.strip()) else match.group(1)
                break
    if found is None:  # the last line of output, not the "$ command" line the launcher writes first
        found = next(
            (line.strip() for line in reversed(lines) if line.strip() and not line.startswith("$ ")), ""
        )
    summary = shorten_paths(found, base)
    return summary if len(summary) <= MAX_SUMMARY else summary[: MAX_SUMMARY - 1] + "…"
