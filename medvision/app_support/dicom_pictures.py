"""Before/after pictures of an uploaded DICOM study, for the user to judge two preprocessing steps.

For one axial slice of the reference series' grid (where the outputs are written):

- registration check: a checkerboard (``skimage.util.compare_images``) of the reference series against
  each other series resampled onto it; edges that run on across the tiles mean the series line up, edges
  that jump at tile borders mean they do not;
- brain extraction: the reference slice with the brain mask's outline, and the same slice cut to the brain
  (what the model sees), when the study was cut to the brain.

Pictures are RGB uint8 (H, W, 3), cut and oriented as the viewer draws axial views
(``medvision.app_support.orientation``: anterior at the top, the patient's left on the image's right in
the radiological convention), each series in its own display window (``render.auto_window``).

    index = st.slider("slice", 0, axial_slice_count(upload) - 1, axial_slice_count(upload) // 2)
    pictures = slice_pictures(upload, index)
    for modality, board in pictures.registration.items():
        st.image(board, caption=f"{pictures.reference} | {modality} checkerboard")
    if pictures.brain_outline is not None:
        st.image([pictures.brain_outline, pictures.brain_cut], caption=["brain mask", "cut to the brain"])

With ``register=True`` in :class:`~medvision.app_support.dicom_upload.DicomOptions` the checkerboard shows
the series after the rigid refinement, and ``before_registration`` the same checkerboard as the scanner's
positions put them (both in the refined series' display window, so only the geometry differs); without
it, the one checkerboard is as the scanner placed them and ``before_registration`` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.segmentation import find_boundaries
from skimage.util import compare_images

from medvision.app_support import render
from medvision.app_support.dicom_upload import DicomUpload
from medvision.data.case import MODALITIES

__all__ = ["BRAIN_OUTLINE_COLOUR", "SlicePictures", "axial_slice_count", "slice_pictures"]

VIEW = "axial"
BRAIN_OUTLINE_COLOUR: tuple[int, int, int] = (40, 200, 80)  # green: no BraTS label colour is green
DEFAULT_TILES = 8  # checkerboard tiles along each side: ~3 cm each on a head-sized field of view


@dataclass(frozen=True)
class SlicePictures:
    index: int  # the axial slice (voxel index along the reference grid's axial axis)
    edges: dict[str, str]  # anatomical letter at each edge: {"top": "A", "bottom": "P", "left": "R", ...}
    reference: str  # the modality of the reference series
    registration: dict[str, np.ndarray]  # other modality -> checkerboard of the reference against it
    before_registration: dict[str, np.ndarray]  # the same before the rigid refinement (refined ones only)
    brain_outline: np.ndarray | None  # reference slice with the mask outline; None: not cut to the brain
    brain_cut: np.ndarray | None  # reference slice with everything outside the mask black


def _frame(upload: DicomUpload, convention: str) -> render.DisplayFrame:
    return render.DisplayFrame.from_affine(upload.native.case.affine, convention)


def axial_slice_count(upload: DicomUpload, convention: str = "radiological") -> int:
    """How many axial slices :func:`slice_pictures` can show (indices 0 .. count - 1)."""
    return render.view_shape(upload.native.case.shape, VIEW, _frame(upload, convention))


def _gray(
    upload: DicomUpload,
    modality: str,
    index: int,
    frame: render.DisplayFrame,
    volume: np.ndarray | None = None,
) -> np.ndarray:
    """Axial slice ``index`` of ``modality`` (or of ``volume``, another placing of that series) in the
    series' own display window."""
    own = upload.native.case.image[MODALITIES.index(modality)]
    plane = render.take_slice(own if volume is None else volume, VIEW, index, frame)
    return render.to_gray(plane, render.auto_window(own))


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)


def _checkerboard(reference: np.ndarray, other: np.ndarray, tiles: int) -> np.ndarray:
    board = compare_images(
        reference.astype(np.float32) / 255.0,
        other.astype(np.float32) / 255.0,
        method="checkerboard",
        n_tiles=(tiles, tiles),
    )
    return _rgb(np.clip(np.rint(board * 255.0), 0, 255).astype(np.uint8))


def _brain(
    upload: DicomUpload, gray: np.ndarray, index: int, frame: render.DisplayFrame
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if upload.brain_mask is None:
        return None, None
    mask = np.ascontiguousarray(render.take_slice(upload.brain_mask, VIEW, index, frame))
    outline = _rgb(gray)
    outline[find_boundaries(mask, mode="thick")] = BRAIN_OUTLINE_COLOUR
    return outline, _rgb(np.where(mask, gray, 0).astype(np.uint8))


def slice_pictures(
    upload: DicomUpload,
    index: int | None = None,
    *,
    tiles: int = DEFAULT_TILES,
    convention: str = "radiological",
) -> SlicePictures:
    """The registration and brain extraction pictures of axial slice ``index`` (default: the middle one).

    IndexError when ``index`` is out of range; ValueError when ``tiles`` is below 2."""
    if tiles < 2:
        raise ValueError(f"a checkerboard needs at least 2 tiles a side, got {tiles}")
    frame = _frame(upload, convention)
    count = render.view_shape(upload.native.case.shape, VIEW, frame)
    index = count // 2 if index is None else int(index)
    reference = upload.report.reference
    gray = _gray(upload, reference, index, frame)  # IndexError naming the range when out of it
    others = [m for m in upload.native.case.available if m != reference]
    registration = {m: _checkerboard(gray, _gray(upload, m, index, frame), tiles) for m in others}
    before = {
        m: _checkerboard(gray, _gray(upload, m, index, frame, upload.native.unregistered[m]), tiles)
        for m in others
        if m in upload.native.unregistered
    }
    outline, cut = _brain(upload, gray, index, frame)
    return SlicePictures(index, frame.edge_labels(VIEW), reference, registration, before, outline, cut)
