"""Slice views: one case cut along another of its axes, for networks trained on coronal or sagittal slices.

A 2-D network sees one plane at a time. The models here were trained on axial slices (the case's first
array axis, D = NIfTI k). A network trained on the same cases cut along H or W sees other neighbours of
each voxel, so averaging the three views' probabilities (a "triplanar" ensemble) gives each voxel three
different looks rather than three looks along the same plane.

On the model grid (``medvision.data.native_grid.MODEL_ORIENTATION``: i toward the patient's left, j toward
posterior, k toward superior; the BraTS files are stored so) the case axes are (D, H, W) = (S, L, P), so:

- ``axial``: slices along D, as stored;
- ``coronal``: slices along W (A-P), each slice (D, H): rows superior-inferior, columns left-right;
- ``sagittal``: slices along H (L-R), each slice (D, W): rows superior-inferior, columns anterior-posterior.

:func:`to_view` turns a (C, D, H, W) array into the view's axis order and :func:`from_view` turns it
back, exactly (transposes only, no interpolation). :func:`reslice_case` does the same to a whole
:class:`~medvision.data.case.Case`, affine and spacing included, so the resliced case is the same scan
in world space with another array axis first: ``prepare --view coronal`` stores it, and the trainer
then trains on coronal slices without knowing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medvision.data.case import CASE_AXIS_TO_VOXEL, Case

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
# The case axes (D, H, W) in the order each view puts them: the first is the slice axis.
_ORDER: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (2, 0, 1), "sagittal": (1, 0, 2)}


def check_view(view: str) -> str:
    if view not in _ORDER:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    return view


def checkpoint_view(meta: dict[str, Any]) -> str:
    """The slice view a checkpoint was trained on (its store's, ``data.view``); "axial" for checkpoints made
    before views were recorded."""
    return check_view(str((meta.get("data") or {}).get("view", "axial")))


def view_order(view: str) -> tuple[int, int, int]:
    """The case axes (0 = D, 1 = H, 2 = W) in the view's order; the first is the slice axis."""
    return _ORDER[check_view(view)]


def to_view(array: np.ndarray, view: str) -> np.ndarray:
    """A (..., D, H, W) array in the view's axis order (a transposed view of it, not a copy)."""
    lead = array.ndim - 3
    order = [lead + a for a in view_order(view)]
    return array.transpose(*range(lead), *order)


def from_view(array: np.ndarray, view: str) -> np.ndarray:
    """The inverse of :func:`to_view`: an array in the view's axis order back in (..., D, H, W)."""
    lead = array.ndim - 3
    inverse = np.argsort(view_order(view))
    return array.transpose(*range(lead), *(lead + int(a) for a in inverse))


def resliced_affine(affine: np.ndarray, view: str) -> np.ndarray:
    """The affine of the view's array: its voxel axes are the source's, reordered.

    The case convention keeps ``affine`` in NIfTI (i, j, k) order with D = k, H = i, W = j
    (:data:`~medvision.data.case.CASE_AXIS_TO_VOXEL`). The resliced array's axes (D', H', W') are the
    source case axes ``view_order(view)``, so its voxel (i', j', k') = (H', W', D') index the source voxel
    axes CASE_AXIS_TO_VOXEL[order[1]], CASE_AXIS_TO_VOXEL[order[2]], CASE_AXIS_TO_VOXEL[order[0]]."""
    order = view_order(view)
    columns = [CASE_AXIS_TO_VOXEL[order[axis]] for axis in (1, 2, 0)]
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, :3] = np.asarray(affine, dtype=np.float64)[:3, columns]
    return out


def reslice_case(case: Case, view: str) -> Case:
    """The same scan with the view's slice axis first (image, label, spacing and affine together)."""
    if check_view(view) == "axial":
        return case
    order = view_order(view)
    image = np.ascontiguousarray(to_view(case.image, view))
    label = None if case.label is None else np.ascontiguousarray(to_view(case.label, view))
    spacing = tuple(float(case.spacing[a]) for a in order)
    return dataclasses.replace(
        case,
        image=image,
        label=label,
        spacing=spacing,  # type: ignore[arg-type]
        affine=resliced_affine(case.affine, view),
    )
