"""Intensity normalisation and brain cropping shared by the prepared store and inference.

Training and inference must see the same numbers, so both call these functions.
"""

from __future__ import annotations

import numpy as np


def brain_mask(image: np.ndarray) -> np.ndarray:
    """(C, ...) image -> boolean mask of voxels where any modality is non-zero (skull-stripped data)."""
    return np.any(image != 0, axis=0)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Tight box around True voxels (with an optional margin, clipped to the array); whole array if empty."""
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def zscore_in_brain(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-modality z-score over brain voxels; background stays exactly 0. Returns float32."""
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        std = values.std()
        scale = 1.0 / std if std > 1e-8 else 1.0
        channel = (image[c].astype(np.float32) - np.float32(values.mean())) * np.float32(scale)
        out[c] = np.where(mask, channel, 0.0)
    return out


def normalise_case_image(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """(4, D, H, W) raw image -> (brain-cropped z-scored float32 image, the crop box in D, H, W)."""
    mask = brain_mask(image)
    box = bounding_box(mask)
    cropped = image[(slice(None),) + box]
    return zscore_in_brain(cropped, mask[box]), box  # type: ignore[return-value]
