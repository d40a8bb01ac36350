"""The geometry of one DICOM series: its slices sorted into one evenly spaced stack, and the RAS+ affine.

Axes follow what nibabel and dcm2niix users expect of a NIfTI, without flips: voxel ``i`` walks along a
row (DICOM column index), ``j`` down the columns (row index), ``k`` along the slice normal (row x column
direction cosines) in increasing position. For an axial scan that is the BraTS orientation (i toward the
patient's left, j toward posterior, k toward superior), so the model sees slices as it was trained on.

DICOM positions are LPS; the affine is made RAS+ by negating its first two rows. The slice step is the
mean step between sorted positions (a vector, so a sheared stack is still described exactly), after
checking that positions lie on one line, evenly spaced, none missing or duplicated: what would otherwise
give a silently distorted volume is refused with a :class:`SeriesProblem` naming the files concerned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["LPS_TO_RAS", "SeriesProblem", "StackGeometry", "stack_geometry"]

LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
# Direction cosines are written with 6-16 digits; one series' slices share them to far better than this.
ORIENTATION_TOLERANCE: float = 1e-3
# Slice positions jitter by micrometres on real scanners; a step off by more than this fraction (and more
# than SPACING_ATOL mm) is uneven spacing, and two slices closer than DUPLICATE_FRACTION of the step coincide.
SPACING_RTOL: float = 0.02
SPACING_ATOL: float = 0.01
DUPLICATE_FRACTION: float = 0.1
# Positions further than this (mm) off the line through the first and last slice are not one stack.
LINE_TOLERANCE_MM: float = 0.1


class SeriesProblem(ValueError):
    """A series whose slices cannot form one volume; the message says why, naming the files concerned."""


@dataclass(frozen=True)
class StackGeometry:
    """Slices sorted along the normal and the voxel -> RAS+ mm affine of the stacked volume."""

    order: tuple[int, ...]  # indices into the given headers, sorted along the slice normal
    shape: tuple[int, int, int]  # NIfTI (i, j, k) = (columns, rows, slices)
    affine: np.ndarray  # (4, 4) voxel (i, j, k) -> RAS+ mm
    step_mm: float  # distance between slice centres
    thickness_mm: float | None  # SliceThickness as written (thinner than the step: a gap between slices)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k) in mm."""
        norms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(norms[0]), float(norms[1]), float(norms[2]))


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise SeriesProblem(f"{name} has no usable {keyword} ({value!r})")
    return array


def _check_same_plane(headers: Sequence[Dataset], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The shared orientation (6 cosines) and pixel spacing; refuse slices differing in either or in size."""
    orientation = _floats(headers[0], "ImageOrientationPatient", 6, names[0])
    spacing = _floats(headers[0], "PixelSpacing", 2, names[0])
    size = (headers[0].get("Rows"), headers[0].get("Columns"))
    for ds, name in zip(headers[1:], names[1:], strict=True):
        other = _floats(ds, "ImageOrientationPatient", 6, name)
        if np.abs(other - orientation).max() > ORIENTATION_TOLERANCE:
            raise SeriesProblem(
                f"slices are not one parallel stack: {name} is oriented differently from {names[0]} "
                "(a localizer or a multi-plane series)"
            )
        if (ds.get("Rows"), ds.get("Columns")) != size:
            raise SeriesProblem(f"{name} is {ds.get('Rows')}x{ds.get('Columns')} pixels, {names[0]} {size}")
        if np.abs(_floats(ds, "PixelSpacing", 2, name) - spacing).max() > 1e-4:
            raise SeriesProblem(f"{name} has a different pixel spacing from {names[0]}")
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise SeriesProblem(f"{names[0]} has ImageOrientationPatient that is not two orthonormal directions")
    return orientation, spacing


def _check_spacing(distances: np.ndarray, names: Sequence[str]) -> float:
    """The regular step between sorted slice positions; refuse duplicated, missing or unevenly spaced ones."""
    steps = np.diff(distances)
    step = float(np.median(steps))
    for index, gap in enumerate(steps):
        first, second = names[index], names[index + 1]
        if gap < DUPLICATE_FRACTION * step:
            raise SeriesProblem(
                f"duplicated slice: {first} and {second} are both at {distances[index]:.2f} mm "
                "along the slice normal"
            )
    for index, gap in enumerate(steps):
        first, second = names[index], names[index + 1]
        if abs(gap - step) <= max(SPACING_RTOL * step, SPACING_ATOL):
            continue
        multiple = gap / step
        if multiple > 1.5 and abs(multiple - round(multiple)) < 0.1:
            missing = round(multiple) - 1
            plural = "s" if missing > 1 else ""
            raise SeriesProblem(
                f"missing slice{plural}: a gap of {gap:.2f} mm between {first} and {second} where slices "
                f"are {step:.2f} mm apart elsewhere ({missing} slice{plural} not in the upload?)"
            )
        raise SeriesProblem(
            f"uneven slice spacing: {gap:.2f} mm from {first} to {second}, {step:.2f} mm elsewhere"
        )
    return step


def stack_geometry(headers: Sequence[Dataset], names: Sequence[str]) -> StackGeometry:
    """Sort the slices of one series (headers only) and build its affine; SeriesProblem when they are not
    one evenly spaced stack of parallel slices. ``names`` name each header's file in messages."""
    if len(headers) < 2:
        raise SeriesProblem("a single slice is not a volume")
    orientation, pixel_spacing = _check_same_plane(headers, names)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.stack(
        [_floats(ds, "ImagePositionPatient", 3, n) for ds, n in zip(headers, names, strict=True)]
    )
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    positions, distances = positions[order], distances[order]
    sorted_names = [names[i] for i in order]
    step = _check_spacing(distances, sorted_names)
    step_vector = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step_vector
    off_line = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(off_line))
    if off_line[worst] > LINE_TOLERANCE_MM:
        raise SeriesProblem(
            f"slices are not one stack: {sorted_names[worst]} lies {off_line[worst]:.2f} mm off the line "
            "through the first and last slice"
        )
    lps = np.eye(4)
    # PixelSpacing is (between rows, between columns): i steps along a row by the column spacing.
    lps[:3, 0] = row * pixel_spacing[1]
    lps[:3, 1] = col * pixel_spacing[0]
    lps[:3, 2] = step_vector
    lps[:3, 3] = positions[0]
    thickness = headers[0].get("SliceThickness")
    return StackGeometry(
        order=tuple(int(i) for i in order),
        shape=(int(headers[0].Columns), int(headers[0].Rows), len(headers)),
        affine=LPS_TO_RAS @ lps,
        step_mm=step,
        thickness_mm=float(thickness) if thickness not in (None, "") else None,
    )
