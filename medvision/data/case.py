"""The one in-memory type every reader produces: a multi-modal MRI case with an optional label.

Axis convention (used everywhere in MedVision): ``image[c, k, i, j]`` where ``(i, j, k)`` are the
NIfTI voxel indices of the source file, i.e. ``image[c] = nifti_data.transpose(2, 0, 1)``.
So D is the axial slice index k, H is i and W is j, and ``affine`` keeps mapping ``(i, j, k)``
voxel indices to world coordinates exactly as in the source header. A Kaggle BraTS2020 slice
``image[:, :, c]`` of shape (240, 240) is one ``image[c, k]`` plane in this convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
BRATS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
# Which BraTS labels make up each evaluation region.
REGION_LABELS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABEL_NAMES: dict[int, str] = {1: "NCR/NET", 2: "ED", 4: "ET"}
# Case array axis a (D, H, W) holds NIfTI voxel axis CASE_AXIS_TO_VOXEL[a] (k, i, j), as the docstring says.
# Display code reads each axis's anatomical direction from the affine through this, never from the array.
CASE_AXIS_TO_VOXEL: tuple[int, int, int] = (2, 0, 1)


@dataclass(frozen=True)
class Case:
    """A co-registered multi-modal scan (FLAIR, T1, T1ce, T2; some may be missing) with an optional label."""

    case_id: str
    image: np.ndarray  # (4, D, H, W) float32, modalities in MODALITIES order
    affine: np.ndarray  # (4, 4) float64, voxel (i, j, k) -> world (RAS+ mm)
    spacing: tuple[float, float, float]  # mm along (D, H, W)
    label: np.ndarray | None = None  # (D, H, W) uint8 with values in BRATS_LABELS
    source_paths: tuple[Path, ...] = field(default_factory=tuple)
    # The modalities really given, in MODALITIES order; the image's channels of the others are all zero
    # and a model trained with modality dropout is told which are there.
    available: tuple[str, ...] = MODALITIES

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m not in self.available)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))


def label_to_regions(label: np.ndarray) -> np.ndarray:
    """BraTS labels (..., ) -> boolean regions (3, ...) in REGIONS order (WT, TC, ET)."""
    return np.stack([np.isin(label, REGION_LABELS[r]) for r in REGIONS])


def regions_to_label(regions: np.ndarray) -> np.ndarray:
    """Boolean or {0,1} regions (3, ...) in WT/TC/ET order -> BraTS labels (uint8).

    The regions are nested (ET inside TC inside WT), so a voxel takes the innermost region it is in:
    ET -> 4, TC without ET -> 1, WT without TC -> 2. Predictions that break nesting are resolved the
    same way (an ET voxel is 4 even where WT is off).
    """
    wt, tc, et = (np.asarray(regions[i]).astype(bool) for i in range(3))
    label = np.zeros(wt.shape, dtype=np.uint8)
    label[wt] = 2
    label[tc] = 1
    label[et] = 4
    return label


def nifti_to_case_axes(volume: np.ndarray) -> np.ndarray:
    """NIfTI (i, j, k[, ...]) array -> MedVision (k, i, j[, ...])."""
    return np.moveaxis(volume, CASE_AXIS_TO_VOXEL[0], 0)


def case_to_nifti_axes(volume: np.ndarray) -> np.ndarray:
    """MedVision (k, i, j) array -> NIfTI (i, j, k)."""
    return np.moveaxis(volume, 0, 2)
