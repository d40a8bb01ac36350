"""Volumes for the browser-side viewer (NiiVue): compressed NIfTI bytes with the case's geometry, their size.

The Predict page sends one scan (the chosen modality) and one overlay (the prediction, the ground truth,
an error map or the uncertainty) to the browser once; scrolling, plane changes, zoom and window/level
then happen there. Everything here is a pure function of numpy arrays, so the page can cache its results
and tests can check them without a browser.

Geometry. Each volume is written in NIfTI voxel order ``(i, j, k)`` (``case_to_nifti_axes``) with the
case's own affine as sform and qform, so NiiVue orients it from the affine, as every other view of the
app does. By default the whole grid is sent, so the voxel numbers NiiVue shows are the file's. Where the
browser renders WebGL in software (no GPU: SwiftShader), the page sends only the box of the scan's non-zero
voxels plus a margin (``scan_box``) with the affine shifted by the box's corner, so world coordinates
are unchanged: a skull-stripped BraTS case shrinks from 240x240x155 to about 134x177x136 voxels, which
cuts the software renderer's loading time from about 28 s to 11 s (measured on 2 loaded cores). Label
voxels outside that box (outside the scanned head) are counted and the page says so; they are not drawn.

Colours. The component takes a colormap name per overlay, not a label table, so labels are written as
the positions on NiiVue's ``hsv`` colormap that give the app's palette (render.LABEL_COLOURS: NCR/NET red,
ED yellow, ET blue; errors: TP green, FP magenta, FN cyan), with ``cal_min``/``cal_max`` 0..255 in the
header so the mapping is exact. The viewer must draw voxels without interpolation, or the border between
two labels would blend into a third colour.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from medvision.data.case import MODALITIES, REGION_LABELS, Case, case_to_nifti_axes

# Positions on NiiVue's "hsv" colormap (control points at 0, 43, 85, 128, 170, 213, 255) of each colour.
HSV_COLORMAP = "hsv"
_HUE = {"red": 255, "yellow": 43, "green": 85, "cyan": 128, "blue": 170, "magenta": 213}
LABEL_HUES: dict[int, str] = {1: "red", 2: "yellow", 4: "blue"}  # as render.LABEL_COLOURS
ERROR_HUES: dict[str, str] = {"TP": "green", "FP": "magenta", "FN": "cyan"}  # as render.ERROR_COLOURS
HEAT_COLORMAP = "hot"  # black-red-yellow, as render.heatmap
BOX_MARGIN = 4  # voxels kept around the scan's non-zero box
GZIP_LEVEL = 6  # computed once per case and choice: the smaller payload is worth 0.3 s more
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class Box:
    """A box of NIfTI voxel indices: ``start`` inclusive, ``stop`` exclusive, along (i, j, k)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def cut(self, volume_ijk: np.ndarray) -> np.ndarray:
        return volume_ijk[tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))]

    def affine(self, affine: np.ndarray) -> np.ndarray:
        """The affine of the cut volume: the same world position for every voxel that is kept."""
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return np.asarray(affine, dtype=np.float64) @ shift


def full_box(case: Case) -> Box:
    """The whole grid of ``case`` (voxel numbers in the viewer are the file's own)."""
    return Box((0, 0, 0), tuple(int(s) for s in case_to_nifti_axes(case.image[0]).shape))  # type: ignore[arg-type]


def scan_box(case: Case, margin: int = BOX_MARGIN) -> Box:
    """The box of voxels that are non-zero in any modality (the whole grid if none is), plus ``margin``."""
    shape_ijk = case_to_nifti_axes(case.image[0]).shape
    occupied = case_to_nifti_axes(np.any(case.image != 0, axis=0))
    if not occupied.any():
        return full_box(case)
    start, stop = [], []
    for axis, size in enumerate(shape_ijk):
        hits = np.flatnonzero(occupied.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(max(int(hits[0]) - margin, 0))
        stop.append(min(int(hits[-1]) + 1 + margin, int(size)))
    return Box(tuple(start), tuple(stop))  # type: ignore[arg-type]


def _nifti_gz(
    volume_ijk: np.ndarray, affine: np.ndarray, header_values: dict[str, float], dtype: type = np.uint8
) -> bytes:
    """Real values -> .nii.gz bytes stored as ``dtype``; nibabel picks scl_slope/scl_inter where needed."""
    image = nib.Nifti1Image(np.ascontiguousarray(volume_ijk), affine)
    image.set_data_dtype(dtype)
    image.set_sform(affine, code=1)  # scanner coordinates: NiiVue reads the orientation from here
    image.set_qform(affine, code=1)
    for name, value in header_values.items():
        image.header[name] = value
    return gzip.compress(
        image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0
    )  # mtime 0: same input, same bytes


def _int16_values(values: np.ndarray) -> np.ndarray:
    """Integer scans (BraTS is int16) as int16, stored exactly; others as floats that nibabel scales."""
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo >= _INT16.min and hi <= _INT16.max and np.array_equal(values, np.round(values)):
        return values.astype(np.int16)
    return values


def scan_nifti(case: Case, modality: str, window: tuple[float, float], box: Box) -> bytes:
    """One modality of ``case`` as .nii.gz bytes (int16), opening in the display window ``(low, high)``."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    values = np.asarray(box.cut(case_to_nifti_axes(case.image[MODALITIES.index(modality)])), dtype=np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    low, high = max(float(window[0]), lo), min(float(window[1]), hi)
    if not high > low:  # a flat scan: any window that contains its one value
        low, high = lo, lo + 1.0
    header = {"cal_min": low, "cal_max": high}  # in real units, as NIfTI defines them
    return _nifti_gz(_int16_values(values), box.affine(case.affine), header, np.int16)


@dataclass(frozen=True)
class Overlay:
    """One overlay volume for the viewer, with what the page says about it."""

    data: bytes
    name: str
    colormap: str
    outside_box: int  # voxels of the overlay that lie outside the box (not drawn)


def _coded_overlay(codes_kij: np.ndarray, affine: np.ndarray, box: Box, name: str) -> Overlay | None:
    """A (k, i, j) uint8 volume of hsv positions (0 = nothing) -> an overlay, or None when it is empty."""
    if not codes_kij.any():
        return None
    codes = case_to_nifti_axes(codes_kij)
    kept = box.cut(codes)
    outside = int(np.count_nonzero(codes)) - int(np.count_nonzero(kept))
    header = {"cal_min": 0.0, "cal_max": 255.0}
    return Overlay(_nifti_gz(kept, box.affine(affine), header), name, HSV_COLORMAP, outside)


def label_overlay(
    label: np.ndarray, affine: np.ndarray, box: Box, *, labels_shown: Iterable[int] = (1, 2, 4), name: str
) -> Overlay | None:
    """A (k, i, j) BraTS label volume (0/1/2/4) drawn in the app's label colours; None if nothing is shown."""
    label = np.asarray(label)
    lut = np.zeros(256, dtype=np.uint8)
    for value in labels_shown:
        if value not in LABEL_HUES:
            raise ValueError(f"unknown BraTS label {value}; expected one of {sorted(LABEL_HUES)}")
        lut[value] = _HUE[LABEL_HUES[value]]
    return _coded_overlay(lut[label.astype(np.uint8)], affine, box, name)


def error_overlay(
    predicted: np.ndarray, truth: np.ndarray, region: str, affine: np.ndarray, box: Box
) -> Overlay | None:
    """True positives green, false positives magenta, false negatives cyan, for one region (WT/TC/ET)."""
    if region not in REGION_LABELS:
        raise ValueError(f"unknown region {region!r}; expected one of {tuple(REGION_LABELS)}")
    if np.shape(predicted) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(predicted)} and truth {np.shape(truth)} differ in shape")
    pred = np.isin(predicted, REGION_LABELS[region])
    true = np.isin(truth, REGION_LABELS[region])
    codes = np.zeros(pred.shape, dtype=np.uint8)
    for kind, mask in (("TP", pred & true), ("FP", pred & ~true), ("FN", ~pred & true)):
        codes[mask] = _HUE[ERROR_HUES[kind]]
    return _coded_overlay(codes, affine, box, f"errors_{region}.nii.gz")


def heat_overlay(
    values: np.ndarray, affine: np.ndarray, box: Box, *, vmax: float, name: str
) -> Overlay | None:
    """A non-negative (k, i, j) map (uncertainty) on a 0..``vmax`` heat scale, stored as uint8 steps."""
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    scaled = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)) / vmax, 0.0, 1.0)
    steps = np.round(scaled * 255).astype(np.uint8)
    if not steps.any():
        return None
    full = case_to_nifti_axes(steps)
    kept = box.cut(full)
    outside = int(np.count_nonzero(full)) - int(np.count_nonzero(kept))
    header = {"cal_min": 0.0, "cal_max": float(vmax)}
    real = kept.astype(np.float64) * (vmax / 255.0)  # the steps in the map's own units (nibabel scales)
    return Overlay(_nifti_gz(real, box.affine(affine), header), name, HEAT_COLORMAP, outside)


def code_legend(kind: str) -> str:
    """What the viewer's readout under the cursor means for a coded overlay: it shows the stored colour
    position (e.g. 255), not the BraTS label, so the page says which is which. ``kind``: "labels" or
    "errors"."""
    if kind == "labels":
        names = {1: "NCR/NET (label 1)", 2: "ED (label 2)", 4: "ET (label 4)"}
        pairs = [(_HUE[LABEL_HUES[value]], names[value]) for value in sorted(LABEL_HUES)]
    elif kind == "errors":
        pairs = [(_HUE[ERROR_HUES[k]], k) for k in ("TP", "FP", "FN")]
    else:
        raise ValueError(f"unknown legend {kind!r}; expected 'labels' or 'errors'")
    return ", ".join(f"{code} = {name}" for code, name in pairs)


def wire_bytes(n: int) -> int:
    """Bytes that ``n`` bytes of data take in the component's message (base64 text)."""
    return 4 * ((int(n) + 2) // 3)


@dataclass(frozen=True)
class TransferReport:
    """What one viewer state sends to the browser: (part, bytes on the wire) in order."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts)

    def text(self) -> str:
        """E.g. ``"3.4 MB (scan 3.3 MB, prediction 0.1 MB)"``."""
        detail = ", ".join(f"{name} {megabytes(n)}" for name, n in self.parts)
        return f"{megabytes(self.total)} ({detail})" if detail else megabytes(self.total)


def transfer_report(scan: bytes, overlays: Iterable[tuple[str, bytes]]) -> TransferReport:
    """The bytes sent for a scan and its overlays, each as base64 on the wire."""
    parts = [("scan", wire_bytes(len(scan)))] + [(name, wire_bytes(len(data))) for name, data in overlays]
    return TransferReport(tuple(parts))


def megabytes(n: int) -> str:
    """Bytes as a short decimal figure: ``"3.1 MB"``, ``"42 kB"``."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


LAYOUTS: tuple[str, ...] = ("multiplanar", "axial", "coronal", "sagittal", "3d")  # the component's view modes
# The viewer's heights in pixels and their names on the Predict page. Software WebGL (no graphics card) draws
# every pixel on the CPU: in headless Chromium with SwiftShader on 2 AVX2 cores a slice step reached the
# screen in 32 ms at the compact height and 53 ms at the large one (both in one run of
# bench/viewer_latency.py), so compact is the default there.
COMPACT_HEIGHT, LARGE_HEIGHT = 460, 620
VIEWER_HEIGHTS: dict[int, str] = {COMPACT_HEIGHT: "Compact", LARGE_HEIGHT: "Large"}


def default_viewer_height(drawn_in_software: bool) -> int:
    """The viewer height a page starts with: compact where the browser draws WebGL on the CPU."""
    return COMPACT_HEIGHT if drawn_in_software else LARGE_HEIGHT


def niivue_arguments(
    scan: bytes,
    overlay: Overlay | None,
    *,
    opacity: float,
    radiological: bool,
    layout: str = "multiplanar",
    height: int = LARGE_HEIGHT,
) -> dict:
    """Keyword arguments for ``niivue_component.niivue_viewer`` (all but ``key``).

    Equal inputs give equal arguments, so a rerun that changes nothing here sends a message Streamlit's
    browser cache already holds (a reference, not the megabytes again). No click feedback: with it, every
    scroll or crosshair move in the browser would rerun the page.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    overlays = []
    if overlay is not None:
        overlays.append(
            {
                "data": overlay.data,
                "name": overlay.name,
                "colormap": overlay.colormap,
                "opacity": float(opacity),
            }
        )
    return {
        "nifti_data": scan,
        "filename": "scan.nii.gz",  # a fixed name: no case text reaches the component
        "overlays": overlays,
        "height": int(height),
        "view_mode": layout,
        "settings": {
            "crosshair": True,
            "radiological": bool(radiological),
            "colorbar": overlay is not None and overlay.colormap == HEAT_COLORMAP,
            # Voxels as voxels: interpolated label codes would blend into other colours.
            "interpolation": False,
        },
        "update_interval_ms": None,
    }
