"""Functions in medvision/ stay readable: at most 80 lines, and ruff's C901 complexity at most 12
(pyproject.toml). CI runs pytest, so the rule is checked here."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medvision"
MAX_LINES = 80


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
                if lines > MAX_LINES:
                    found.append(f"{name} ({lines} lines)")
    return found


def test_no_function_over_80_lines() -> None:
    assert long_functions() == []


def test_complexity_within_ruff_limit() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [ruff, "check", "--select", "C901", "--output-format", "concise", str(PACKAGE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
