"""Sample prediction images written once per epoch: FLAIR with the truth and with the prediction overlaid.

One row per fixed validation slice, two panels per row (truth | prediction), so successive
``samples/epoch_XXX.png`` files show the same slices improving.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medvision.atomic import atomic_path

logger = logging.getLogger(__name__)

# RGB of each overlay: BraTS labels for the three nested regions, one colour for single-channel targets.
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    2: (0.1, 0.85, 0.2),  # ED: green
    1: (0.95, 0.15, 0.15),  # NCR/NET: red
    4: (1.0, 0.85, 0.0),  # ET: yellow
}
SINGLE_COLOUR = (0.95, 0.15, 0.15)
ALPHA = 0.45
GAP = 4  # pixels of black between panels and rows


def _grey(flair: np.ndarray) -> np.ndarray:
    """z-scored FLAIR (H, W) -> [0, 1] using the 1st-99th percentile of the brain (non-zero) pixels."""
    brain = flair[flair != 0]
    if brain.size == 0:
        return np.zeros(flair.shape, dtype=np.float32)
    lo, hi = np.percentile(brain, [1, 99])
    scaled = (flair - lo) / max(hi - lo, 1e-6)
    return np.clip(np.where(flair != 0, scaled, 0.0), 0.0, 1.0).astype(np.float32)


def _overlay(grey: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """grey (H, W) + boolean target channels (T, H, W) -> RGB float (H, W, 3)."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if channels.shape[0] == 3:
        from medvision.data.case import regions_to_label

        label = regions_to_label(channels)
        layers = [(label == value, colour) for value, colour in LABEL_COLOURS.items()]
    else:
        layers = [(channels[0].astype(bool), SINGLE_COLOUR)]
    for mask, colour in layers:
        rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * np.asarray(colour, dtype=np.float32)
    return rgb


def render_samples(flair: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """flair (N, H, W), truth/pred (N, T, H, W) booleans -> uint8 RGB grid (rows: slices; truth | pred)."""
    if flair.ndim != 3 or truth.shape != pred.shape or truth.shape[0] != flair.shape[0]:
        raise ValueError(f"shapes do not fit: flair {flair.shape}, truth {truth.shape}, pred {pred.shape}")
    n, h, w = flair.shape
    canvas = np.zeros((n * h + (n - 1) * GAP, 2 * w + GAP, 3), dtype=np.float32)
    for i in range(n):
        grey = _grey(flair[i])
        top = i * (h + GAP)
        canvas[top : top + h, :w] = _overlay(grey, truth[i])
        canvas[top : top + h, w + GAP :] = _overlay(grey, pred[i])
    return (canvas * 255).round().astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG atomically (temp file + os.replace)."""
    from skimage import io  # lazy: scikit-image import is slow and only needed here

    with atomic_path(path) as tmp:
        io.imsave(tmp, rgb, check_contrast=False)


def save_samples(
    path: str | Path, flair: np.ndarray, truth: np.ndarray, pred: np.ndarray, names: Sequence[str] = ()
) -> Path:
    """Render and save one epoch's sample grid; returns the path. ``names`` only go to the log."""
    save_png(path, render_samples(flair, truth, pred))
    logger.debug("wrote samples %s (%s)", path, ", ".join(names))
    return Path(path)
