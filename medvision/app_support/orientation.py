"""How each view of a case is cut and drawn, read from the case's affine (never from its array order).

Convention (stated once, used by every view, figure and export of the app):

- **radiological** (the default, as in ITK-SNAP and 3D Slicer): the patient's right is on the image's
  left, so the patient's left is on the image's right, in axial and coronal views;
- **neurological** (an option): the patient's left is on the image's left;
- in both, anterior is at the top of axial views, superior at the top of coronal and sagittal views,
  and sagittal views have anterior on the left.

The affine says which world direction each voxel axis runs toward (nibabel ``io_orientation``, which
also picks the nearest axis for slightly oblique scans). Case arrays hold voxel axes in the order
``CASE_AXIS_TO_VOXEL`` (see medvision/data/case.py), so a view is: the case axis whose world axis is the
view's normal, cut at the slice index (a voxel index of the file), then the two remaining axes
transposed and flipped into the convention's rows and columns. Flips and transposes are numpy views,
so orienting costs nothing per redraw.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from medvision.data.case import CASE_AXIS_TO_VOXEL

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
CONVENTIONS: tuple[str, ...] = ("radiological", "neurological")

# World axes as nibabel numbers them (RAS+): 0 = x toward Right, 1 = y toward Anterior, 2 = z toward Superior.
_TOWARD_POSITIVE = "RAS"
_TOWARD_NEGATIVE = "LPI"
_NORMAL: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
# (world axis of the rows, world axis of the columns) of each view.
_PLANE_AXES: dict[str, tuple[int, int]] = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}


def _check_view(view: str) -> None:
    if view not in _NORMAL:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")


@dataclass(frozen=True)
class DisplayFrame:
    """Where each case array axis points in the patient, and the display convention to draw in.

    ``world_axis[a]`` is the world axis (0 x, 1 y, 2 z) of case array axis ``a``; ``positive[a]`` is True
    when the index along ``a`` grows toward R, A or S (False: toward L, P or I).
    """

    world_axis: tuple[int, int, int]
    positive: tuple[bool, bool, bool]
    convention: str = "radiological"

    def __post_init__(self) -> None:
        if sorted(self.world_axis) != [0, 1, 2]:
            raise ValueError(f"the case axes must cover x, y and z once each, got {self.world_axis}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown display convention {self.convention!r}; expected one of {CONVENTIONS}")

    @classmethod
    def from_affine(cls, affine: np.ndarray, convention: str = "radiological") -> DisplayFrame:
        """The frame of a case whose voxel -> world (RAS+ mm) matrix is ``affine``."""
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise ValueError("the affine must be a finite 4x4 matrix")
        by_voxel = nib.orientations.io_orientation(affine)  # row v: (world axis, +1/-1) of voxel axis v
        if np.isnan(by_voxel).any():
            raise ValueError("the affine is singular: the scan's orientation cannot be read from it")
        rows = [by_voxel[v] for v in CASE_AXIS_TO_VOXEL]
        return cls(
            world_axis=tuple(int(r[0]) for r in rows),  # type: ignore[arg-type]
            positive=tuple(bool(r[1] > 0) for r in rows),  # type: ignore[arg-type]
            convention=convention,
        )

    def axis_codes(self) -> str:
        """The case array's axis codes, e.g. ``"SLP"`` for a BraTS case read as (k, i, j)."""
        return "".join(
            (_TOWARD_POSITIVE if p else _TOWARD_NEGATIVE)[w]
            for w, p in zip(self.world_axis, self.positive, strict=True)
        )

    def slice_axis(self, view: str) -> int:
        """The case array axis a view steps through."""
        _check_view(view)
        return self.world_axis.index(_NORMAL[view])

    def _wanted_positive(self, view: str) -> tuple[bool, bool]:
        """Whether rows and columns grow toward R/A/S in this convention (False: toward L/P/I)."""
        # Rows grow downward: toward posterior on axial views, toward inferior on the others.
        # Columns: sagittal runs anterior (left) to posterior; axial and coronal run toward the
        # patient's left (radiological) or right (neurological).
        columns_positive = view != "sagittal" and self.convention == "neurological"
        return False, columns_positive

    def orient(self, plane: np.ndarray, view: str) -> np.ndarray:
        """A plane cut across ``slice_axis(view)`` (its last two axes the other case axes, in order) ->
        the same plane with rows and columns in the convention."""
        rest = [a for a in range(3) if a != self.slice_axis(view)]
        row_world, _ = _PLANE_AXES[view]
        if self.world_axis[rest[0]] != row_world:
            plane = np.swapaxes(plane, -2, -1)
            rest.reverse()
        for offset, (axis, wanted) in enumerate(zip(rest, self._wanted_positive(view), strict=True)):
            if self.positive[axis] != wanted:
                plane = np.flip(plane, axis=-2 + offset)
        return plane

    def take(self, volume: np.ndarray, view: str, index: int) -> np.ndarray:
        """One display plane of a (..., D, H, W) volume; ``index`` is the voxel index along the view axis."""
        axis = self.slice_axis(view)
        n = volume.shape[-3 + axis]
        if not 0 <= index < n:
            raise IndexError(f"{view} slice {index} is out of range 0..{n - 1}")
        return self.orient(np.take(volume, index, axis=volume.ndim - 3 + axis), view)

    def edge_labels(self, view: str) -> dict[str, str]:
        """The anatomical letter at the top, bottom, left and right edge of a view."""
        _check_view(view)
        letters = []
        for world, positive in zip(_PLANE_AXES[view], self._wanted_positive(view), strict=True):
            ends = (_TOWARD_NEGATIVE[world], _TOWARD_POSITIVE[world])
            letters.append(ends if positive else ends[::-1])  # (start edge, end edge)
        (top, bottom), (left, right) = letters
        return {"top": top, "bottom": bottom, "left": left, "right": right}

    def index_direction(self, view: str) -> str:
        """The letter the slice index grows toward, e.g. ``"S"`` for axial slices of a BraTS case."""
        axis = self.slice_axis(view)
        return (_TOWARD_POSITIVE if self.positive[axis] else _TOWARD_NEGATIVE)[self.world_axis[axis]]

    def pixel_spacing(self, spacing: tuple[float, float, float], view: str) -> tuple[float, float]:
        """(row, column) spacing in mm of the planes ``take`` returns, for an undistorted display."""
        _check_view(view)
        row_world, col_world = _PLANE_AXES[view]
        row_axis, col_axis = self.world_axis.index(row_world), self.world_axis.index(col_world)
        return float(spacing[row_axis]), float(spacing[col_axis])
