"""Slice rendering for the viewer: view planes, window/level, BraTS label overlays and error maps.

Everything here works on plain numpy arrays in MedVision's axis convention (``volume[k, i, j]``, see
``medvision.data.case``), cut and oriented by a ``DisplayFrame`` read from the case's affine, and
returns ``uint8`` RGB images, so a redraw is a few vectorised numpy
operations on one 2-D slice (no per-label Python loops over pixels, no float JSON for the browser).

Palette (BraTS labels, documented for the UI legend and the model card):

=========  ==========================================  ===============
label      meaning                                     colour (RGB)
=========  ==========================================  ===============
1          NCR/NET necrotic / non-enhancing core        red (230, 40, 40)
2          ED peritumoral edema                         yellow (255, 215, 0)
4          ET GD-enhancing tumour                       blue (30, 120, 255)
=========  ==========================================  ===============

Red / yellow / blue is used instead of the red / green pairing of some viewers so the three classes stay
distinguishable with the commonest colour-vision deficiencies. Error maps use green for true positives,
magenta for false positives (predicted, not in the truth) and cyan for false negatives (missed).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medvision.app_support.orientation import CONVENTIONS as CONVENTIONS  # re-exported for the page
from medvision.app_support.orientation import VIEWS as VIEWS  # re-exported: pages list the views from here
from medvision.app_support.orientation import DisplayFrame

LABEL_COLOURS: dict[int, tuple[int, int, int]] = {1: (230, 40, 40), 2: (255, 215, 0), 4: (30, 120, 255)}
LABEL_SHORT: dict[int, str] = {1: "NCR/NET", 2: "ED", 4: "ET"}
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "TP": (40, 200, 80),
    "FP": (255, 0, 255),
    "FN": (0, 230, 255),
}

# A lookup table from label value to RGB and to "is this label drawn" keeps the overlay one fancy-index.
_LUT_SIZE = 256


@dataclass(frozen=True)
class Window:
    """Display window: intensities in [level - width/2, level + width/2] map to black..white."""

    level: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.level) or not np.isfinite(self.width):
            raise ValueError("window level and width must be finite")
        if self.width <= 0:
            raise ValueError(f"window width must be positive, got {self.width}")

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0


def view_shape(shape: tuple[int, int, int], view: str, frame: DisplayFrame) -> int:
    """Number of slices along the case axis a view steps through (read from the frame, not assumed)."""
    return int(shape[frame.slice_axis(view)])


def take_slice(volume: np.ndarray, view: str, index: int, frame: DisplayFrame) -> np.ndarray:
    """One display-oriented 2-D plane of a (..., D, H, W) volume (see medvision.app_support.orientation).

    ``index`` is the voxel index along the case axis the view cuts; the plane comes back with anterior
    (axial) or superior (coronal, sagittal) at the top and the patient's left on the image's right in
    the radiological convention.
    """
    return frame.take(volume, view, index)


def pixel_spacing(spacing: tuple[float, float, float], view: str, frame: DisplayFrame) -> tuple[float, float]:
    """(row, column) spacing in mm of the planes ``take_slice`` returns, for an undistorted display."""
    return frame.pixel_spacing(spacing, view)


def auto_window(volume: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> Window:
    """A window spanning the given percentiles of the non-zero (brain) voxels of one modality.

    Sampling every few voxels keeps this fast on a 240x240x155 volume; percentiles barely change.
    """
    values = np.asarray(volume).ravel()[::7]
    values = values[values != 0]
    if values.size == 0:
        return Window(level=0.5, width=1.0)
    lo, hi = np.percentile(values, [low_pct, high_pct])
    width = float(hi - lo) if hi > lo else 1.0
    return Window(level=float(lo) + width / 2.0, width=width)


def to_gray(plane: np.ndarray, window: Window) -> np.ndarray:
    """Float plane -> uint8 grey levels through a window."""
    scaled = (np.asarray(plane, dtype=np.float32) - np.float32(window.low)) * np.float32(255.0 / window.width)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _label_lut(labels_shown: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    colours = np.zeros((_LUT_SIZE, 3), dtype=np.float32)
    shown = np.zeros(_LUT_SIZE, dtype=bool)
    for value in labels_shown:
        if value not in LABEL_COLOURS:
            raise ValueError(f"unknown BraTS label {value}; expected one of {sorted(LABEL_COLOURS)}")
        colours[value] = LABEL_COLOURS[value]
        shown[value] = True
    return colours, shown


def overlay(
    gray: np.ndarray,
    label: np.ndarray | None,
    *,
    labels_shown: Iterable[int] = (1, 2, 4),
    opacity: float = 0.45,
) -> np.ndarray:
    """Grey uint8 plane + BraTS label plane -> RGB uint8 with the chosen labels alpha-blended in colour."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    rgb = np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)
    if label is None or opacity == 0.0:
        return rgb
    label = np.asarray(label)
    if label.shape != rgb.shape[:2]:
        raise ValueError(f"label plane {label.shape} does not match image plane {rgb.shape[:2]}")
    colours, shown = _label_lut(labels_shown)
    mask = shown[label]
    if mask.any():
        base = rgb[mask].astype(np.float32)
        rgb[mask] = (base * (1.0 - opacity) + colours[label[mask]] * opacity).astype(np.uint8)
    return rgb


def error_map(
    gray: np.ndarray, predicted: np.ndarray, truth: np.ndarray, *, opacity: float = 0.6
) -> tuple[np.ndarray, dict[str, int]]:
    """Grey plane + boolean predicted/true masks -> RGB with TP/FP/FN colours, and their pixel counts."""
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.shape != np.shape(gray):
        raise ValueError("error map needs predicted, truth and image planes of one shape")
    rgb = np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)
    counts: dict[str, int] = {}
    for name, mask in (("TP", predicted & truth), ("FP", predicted & ~truth), ("FN", ~predicted & truth)):
        counts[name] = int(mask.sum())
        if counts[name]:
            colour = np.asarray(ERROR_COLOURS[name], dtype=np.float32)
            rgb[mask] = (rgb[mask].astype(np.float32) * (1.0 - opacity) + colour * opacity).astype(np.uint8)
    return rgb, counts


def heatmap(
    gray: np.ndarray, values: np.ndarray, *, opacity: float = 0.6, vmax: float | None = None
) -> np.ndarray:
    """Grey plane + non-negative map (uncertainty, attention) -> RGB with a black-red-yellow heat scale.

    Pixels where the map is zero keep the grey image, so the map reads as an overlay.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != np.shape(gray):
        raise ValueError(f"map {values.shape} does not match image plane {np.shape(gray)}")
    top = float(vmax) if vmax is not None else float(np.nanmax(values)) if values.size else 0.0
    scaled = np.clip(np.nan_to_num(values / top), 0.0, 1.0) if top > 0 else np.zeros_like(values)
    heat = np.stack(
        [np.clip(scaled * 2.0, 0, 1), np.clip(scaled * 2.0 - 1.0, 0, 1), np.zeros_like(scaled)], -1
    )
    alpha = (scaled * opacity)[..., None]
    base = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)
    return (base * (1.0 - alpha) + heat * 255.0 * alpha).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """RGB uint8 -> PNG bytes (fast zlib level: the browser gets a small image, the server stays quick)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")
