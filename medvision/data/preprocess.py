"""Intensity normalisation and brain cropping shared by the prepared store and inference.

Training and inference must see the same numbers, so both call these functions.
"""

from __future__ import annotations

import numpy as np


def brain_mask(image: np.ndarray) -> np.ndarray:
    """(C, ...) image -> boolean mask of voxels where any modality is non-zero (skull-stripped data)."""
    if image.shape[0] == 0:
        return np.zeros(image.shape[1:], dtype=bool)
    # One channel at a time: np.any(image != 0, axis=0) first builds a (C, ...) boolean array, which on a
    # fresh 240x240x155 case costs about 10x more (mostly page faults on the temporary).
    mask = image[0] != 0
    for channel in image[1:]:
        mask |= channel != 0
    return mask


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
    outside = ~mask
    for c in range(image.shape[0]):
        # Statistics accumulated in float64 without a float64 copy of the brain voxels; the channel is
        # written in place (no temporaries the size of the volume): about 2x faster, the same numbers.
        values = image[c][mask]
        mean = values.mean(dtype=np.float64)
        std = values.std(dtype=np.float64)
        scale = 1.0 / std if std > 1e-8 else 1.0
        np.subtract(image[c], np.float32(mean), out=out[c])
        out[c] *= np.float32(scale)
        np.copyto(out[c], 0.0, where=outside)
    return out


def normalise_case_image(image: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """(4, D, H, W) raw image -> (brain-cropped z-scored float32 image, the crop box in D, H, W)."""
    normalised, box, _ = normalise_case_image_and_brain(image)
    return normalised, box


def normalise_case_image_and_brain(
    image: np.ndarray,
) -> tuple[np.ndarray, tuple[slice, slice, slice], np.ndarray]:
    """As :func:`normalise_case_image`, with the brain mask of the crop too (computed once, not again)."""
    mask = brain_mask(image)
    box = bounding_box(mask)
    cropped = image[(slice(None),) + box]
    brain = np.ascontiguousarray(mask[box])  # a compact array, not a view that keeps the whole mask
    return zscore_in_brain(cropped, brain), box, brain  # type: ignore[return-value]
