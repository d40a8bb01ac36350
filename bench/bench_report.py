"""What every benchmark in bench/ reports the same way: the device, how loaded the machine is, and the
section it appends to bench/RESULTS.md (date, command, device, figures)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medvision.precision import cpu_kind

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADER = "# Benchmark results\n\nAppended by the scripts in bench/. Newest last.\n"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its kind (AVX2 / AMX, bf16 native or emulated), core count and
    torch's thread count: the fastest settings differ between CPU kinds, so every figure names its own."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_kind()}, torch threads {torch.get_num_threads()}"


def machine_calibration() -> float:
    """Seconds to SHA-256 a 142 MB buffer (one core): shows how loaded or throttled the machine is now."""
    data = np.ones(4 * 155 * 240 * 240, dtype=np.float32)
    start = time.perf_counter()
    hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    return time.perf_counter() - start


def append_results(name: str, lines: list[str]) -> Path:
    """Append a dated section holding the exact command line and ``lines`` to bench/RESULTS.md."""
    if not RESULTS.exists():
        RESULTS.write_text(HEADER, encoding="utf-8")
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    argv = [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]
    command = "python " + " ".join(shlex.quote(a) for a in argv)
    section = [f"\n## {name}: {stamp}\n", f"- command: `{command}`", *lines]
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(section) + "\n")
    return RESULTS


class Reporter:
    """``report(text)`` prints a figure line at once and keeps it in ``lines`` for :func:`append_results`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)


def report_machine(calibration: float, load_before: tuple[float, float, float], report: Reporter) -> None:
    """The machine check and load lines every benchmark ends with (calibration taken before the run)."""
    load_after = os.getloadavg()
    report(
        f"- machine check: SHA-256 of 142 MB took {calibration:.3f} s before the run, "
        f"{machine_calibration():.3f} s after (0.09 s when this 2-core VM was idle)"
    )
    report(
        f"- load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"(other processes on the machine slow every figure)"
    )


def finish_report(
    name: str,
    report: Reporter,
    *,
    calibration: float,
    load_before: tuple[float, float, float],
    under_load: bool = False,
    note: str = "",
    record: bool = True,
) -> None:
    """The lines every benchmark ends with (load flag, note, machine check) and, with ``record``, its
    section in bench/RESULTS.md, headed ``name`` (", under load" added when ``under_load``)."""
    if under_load:
        report("- under load: other work shared the cores during this run; not quiet-machine figures")
    if note:
        report(f"- note: {note}")
    report_machine(calibration, load_before, report)
    if record:
        append_results(name + (", under load" if under_load else ""), report.lines)


def add_report_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark that ends with :func:`finish_from_args` takes."""
    parser.add_argument("--note", default="", help="a line for RESULTS.md (e.g. how quiet the machine was)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--under-load", action="store_true", help="say that other work shared the cores")


def finish_from_args(
    name: str,
    report: Reporter,
    args: argparse.Namespace,
    *,
    calibration: float,
    load_before: tuple[float, float, float],
) -> None:
    """:func:`finish_report` with the flags of :func:`add_report_flags`."""
    finish_report(
        name,
        report,
        calibration=calibration,
        load_before=load_before,
        under_load=args.under_load,
        note=args.note,
        record=not args.no_record,
    )
