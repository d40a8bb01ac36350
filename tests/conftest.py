"""Shared test settings: the repository root on PYTHONPATH for subprocesses, and the real case path."""

from __future__ import annotations

import os
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
