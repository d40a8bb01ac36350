"""Skull-stripped or not, tried as a new user would: the real BraTS case (stripped) and the BRAINIX study
(skull, scalp and scanner noise) must get opposite verdicts with figures that say why."""

from __future__ import annotations

from pathlib import Path

from dicom_fixtures import brainix_dir  # noqa: F401 - a fixture

from medvision.data.readers import read_brats_folder
from medvision.data.skull import check_skull_stripped
from medvision.dicom import read_study


def test_brats_is_stripped_and_brainix_is_not(real_case_dir: Path, brainix_dir: Path) -> None:  # noqa: F811
    brats = check_skull_stripped(read_brats_folder(real_case_dir))
    assert brats.skull_stripped and brats.background_zero > 0.99, brats.reason
    raw = check_skull_stripped(read_study(brainix_dir / "DICOM").case)
    assert not raw.skull_stripped and raw.background_zero < 0.9, raw.reason
    assert "not skull-stripped" in raw.reason and "flair" in raw.reason
    assert raw.largest_slice_cm2 > brats.largest_slice_cm2
