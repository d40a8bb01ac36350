"""Is a case skull-stripped? The model was trained on BraTS (skull-stripped, background exactly 0); a raw
clinical scan (BRAINIX) has the skull, scalp and background noise, and must be flagged before prediction.

Two figures from the first available channel decide, both measured on the real data beside the project:

- the share of the background (voxels beyond a 3-voxel margin around the head/brain foreground) that is
  exactly zero: 0.999-1.0 in every BraTS 2018/2021/2023 case here, 0.66-0.73 in BRAINIX (scanner noise);
- the share of the whole volume that is exactly zero: 0.82-0.83 in BraTS, 0.37-0.43 in BRAINIX.

The intensity of the foreground's outer ring against its inside (scalp fat is bright on T1) was measured
too and does not separate them (0.70-1.18 in BraTS, 0.70-0.73 in BRAINIX), so it is not used. A head scan
whose background was zeroed by a converter would pass as stripped; the largest axial foreground area is
reported beside the verdict (heads with scalp are larger than brains) for a user to judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medvision.data.case import MODALITIES, Case

__all__ = ["SkullCheck", "check_skull_stripped"]

MIN_BACKGROUND_ZERO: float = 0.98
MIN_ZERO_FRACTION: float = 0.5


@dataclass(frozen=True)
class SkullCheck:
    skull_stripped: bool
    background_zero: float  # share of the background that is exactly 0
    zero_fraction: float  # share of all voxels that are exactly 0
    largest_slice_cm2: float  # largest axial cross-section of the foreground
    reason: str


def _foreground(volume: np.ndarray) -> np.ndarray:
    """Head or brain: above a tenth of the 99th percentile of the non-zero voxels, holes filled per slice."""
    nonzero = volume[volume != 0]
    if nonzero.size == 0:
        return np.zeros(volume.shape, dtype=bool)
    mask = volume > 0.1 * np.percentile(nonzero, 99)
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def check_skull_stripped(case: Case) -> SkullCheck:
    """The verdict and its figures for ``case`` (its first available modality), from (D, H, W) voxels."""
    channel = MODALITIES.index(case.available[0]) if case.available else 0
    volume = case.image[channel][:, ::2, ::2]  # every other voxel in-plane: 4x less work, same figures
    foreground = _foreground(volume)
    background = ~ndimage.binary_dilation(foreground, structure=np.ones((1, 3, 3), bool), iterations=2)
    background_zero = float((volume[background] == 0).mean()) if background.any() else 1.0
    zero_fraction = float((volume == 0).mean())
    pixel_cm2 = case.spacing[1] * case.spacing[2] * 4 / 100.0
    largest = float(foreground.sum(axis=(1, 2)).max() * pixel_cm2) if foreground.size else 0.0
    stripped = background_zero >= MIN_BACKGROUND_ZERO and zero_fraction >= MIN_ZERO_FRACTION
    verdict = (
        "looks skull-stripped" if stripped else "skull and background noise present (not skull-stripped)"
    )
    name = case.available[0] if case.available else "channel 0"
    reason = (
        f"{verdict}: {background_zero:.0%} of the background and {zero_fraction:.0%} of all voxels are "
        f"exactly 0 in {name}; largest axial section {largest:.0f} cm^2"
    )
    return SkullCheck(stripped, background_zero, zero_fraction, largest, reason)
