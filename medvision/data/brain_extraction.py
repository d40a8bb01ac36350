"""Brain extraction for scans that still show the skull and scalp (a raw clinical study such as BRAINIX).

The model was trained on skull-stripped BraTS volumes, where the brain is exactly the non-zero voxels; a
raw scan must be cut to the brain first, or scalp and neck are segmented as tumour and z-scored with it.

Three methods, chosen by ``extract_case_brain(case, method=...)``:

- "network": deepbet (PyPI, MIT), two small 3-D U-Nets whose TorchScript weights ship inside its wheel,
  run on the CPU offline. It won the comparison in bench/brain_extraction.py (bench/RESULTS.md): brain
  Dice 0.980-0.985 against 0.968-0.982 for the classical recipe on the MNI152 template and a BraTS case
  with a synthetic skull, and on BRAINIX it finds the brain from T1 or T2 alone (1397 / 1493 cm^3) where
  the classical recipe keeps 13 / 65 cm^3 of it. It costs 5-9 s a volume on 2 cores against about 1 s.
- "classical": the recipe below, used where deepbet is not installed and by ``--brain-extractor
  classical``.
- "phantom": a small 2-D network of our own trained only on head phantoms (skull, scalp, fat, eyes, neck;
  :mod:`medvision.data.brain_extraction_net`, ``checkpoints/brain_extractor.*``), by ``--brain-extractor
  phantom``; compared with the other two in bench/brain_extraction.py.
- "auto" (the default): "network" when deepbet can be imported, else "classical".

The classical recipe, on one reference volume in Case axes (D, H, W) with distances in mm (slices may be
6 mm apart):

1. head: voxels above a tenth of the 99th percentile, holes filled per slice, largest 3-D component;
2. tissue: voxels of the head above Otsu's threshold of the head's intensities (dark bone, air and most
   CSF fall below it; brain and scalp fat stay above);
3. eroded by ``erode_mm`` in-plane (a distance transform per slice), which cuts the thin bridges between
   brain and scalp; the largest 3-D component nearest the head's centre is the brain (erosion is
   in-plane only because slices may be 6 mm apart: one slice is already more than the radius);
4. dilated back by the same distance inside the head, then the brain's dim rim (partial volume with CSF,
   which the threshold lost) taken back within that distance, a closing and holes filled per slice
   (ventricles, dark tumour cores and resection cavities are inside the brain).

6 mm rather than 4 mm of erosion: at 4 mm the orbits and face of BRAINIX's lowest slices joined the brain
(mask 1555 cm^3 against 1307 cm^3), for 0.004 less Dice on the synthetic-skull BraTS case. Known limits:
the thin cortex at the vertex (top 2-3 slices of BRAINIX) is partly lost, and a scan whose scalp touches
the brain over more than the erosion distance keeps a piece of scalp.

Measured in ``bench/brain_extraction.py`` (results in bench/RESULTS.md): Dice against the true mask of a
BraTS case with a synthetic skull and scalp added, and the share of the BRAINIX tumour ROI kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from medvision.data.brain_extraction_net import CHECKPOINT as PHANTOM_CHECKPOINT
from medvision.data.brain_extraction_net import phantom_net_available, phantom_net_brain
from medvision.data.case import MODALITIES, Case

__all__ = [
    "METHODS",
    "BrainMask",
    "apply_brain_mask",
    "extract_brain",
    "extract_case_brain",
    "network_available",
]

logger = logging.getLogger(__name__)

METHOD = "Otsu threshold, in-plane erosion, largest central component, dilation, per-slice hole filling"
NETWORK_METHOD = "deepbet network, weights from its wheel"
PHANTOM_METHOD = "our network trained on head phantoms (checkpoints/brain_extractor)"
METHODS: tuple[str, ...] = ("auto", "network", "classical", "phantom")
DEFAULT_ERODE_MM: float = 6.0
LOW_FRACTION: float = 0.3  # of Otsu's threshold: the brain's dim rim is taken back above it
# The channel whose contrast separates brain from scalp best, in order of preference.
_PREFERRED: tuple[str, ...] = ("flair", "t2", "t1ce", "t1")
# For deepbet: FLAIR first, then T1. Its brain Dice is about the same from either (0.982 / 0.985 on the
# synthetic-skull BraTS case), but BRAINIX's WT Dice was 0.646 with its FLAIR mask against 0.632 with its
# T1 mask; from T2 it keeps the most CSF around the brain (1493 cm^3 against 1397 on BRAINIX).
_NETWORK_PREFERRED: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True)
class BrainMask:
    mask: np.ndarray  # (D, H, W) bool
    method: str
    volume_cm3: float
    channel: str  # the modality the mask was computed from


def _per_slice(function, mask: np.ndarray) -> np.ndarray:
    return np.stack([function(plane) for plane in mask])


def _largest_component(mask: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """The largest connected piece (26-connected); with ``centre``, size is weighed against distance
    from it so that a big scalp piece at the edge loses to the brain in the middle."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:].astype(np.float64)
    if centre is not None:
        centres = np.asarray(ndimage.center_of_mass(mask, labels, range(1, count + 1)))
        spread = max(float(np.sqrt(mask.sum())), 1.0)
        sizes = sizes / (1.0 + np.linalg.norm(centres - centre, axis=1) / spread)
    return labels == (int(np.argmax(sizes)) + 1)


def _head(volume: np.ndarray) -> np.ndarray:
    positive = volume[volume > 0]
    if positive.size == 0:
        return np.zeros(volume.shape, bool)
    head = volume > 0.1 * np.percentile(positive, 99)
    head = _per_slice(ndimage.binary_fill_holes, head)
    return _largest_component(head) if head.any() else head


def _in_plane_distance(mask: np.ndarray, spacing_hw: tuple[float, float]) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to the nearest voxel outside it, within its slice."""
    return np.stack([ndimage.distance_transform_edt(plane, sampling=spacing_hw) for plane in mask])


def _grow(mask: np.ndarray, radius_mm: float, spacing_hw: tuple[float, float]) -> np.ndarray:
    """``mask`` dilated in-plane by ``radius_mm``."""
    return _in_plane_distance(~mask, spacing_hw) <= radius_mm


def _disk(radius_mm: float, spacing_hw: tuple[float, float]) -> np.ndarray:
    ri, rj = (max(1, round(radius_mm / s)) for s in spacing_hw)
    i, j = np.ogrid[-ri : ri + 1, -rj : rj + 1]
    return (i * spacing_hw[0] / radius_mm) ** 2 + (j * spacing_hw[1] / radius_mm) ** 2 <= 1.0


def _closed(plane: np.ndarray, radius_mm: float, spacing_hw: tuple[float, float]) -> np.ndarray:
    """A binary closing by a disk of ``radius_mm``, padded so that the image border does not erode it."""
    disk = _disk(radius_mm, spacing_hw)
    pad = max(disk.shape) // 2 + 1
    return ndimage.binary_closing(np.pad(plane, pad), disk)[pad:-pad, pad:-pad]


def extract_brain(
    volume: np.ndarray, spacing: tuple[float, float, float], *, erode_mm: float = DEFAULT_ERODE_MM
) -> np.ndarray:
    """(D, H, W) bool brain mask of one head volume (Case axes, ``spacing`` in mm along D, H, W)."""
    volume = np.asarray(volume, dtype=np.float32)
    head = _head(volume)
    if head.sum() < 64:
        return head
    spacing_hw = (float(spacing[1]), float(spacing[2]))
    threshold = float(threshold_otsu(volume[head]))
    tissue = head & (volume > threshold)
    core = _in_plane_distance(tissue, spacing_hw) > erode_mm
    if not core.any():
        return _per_slice(ndimage.binary_fill_holes, tissue)
    centre = np.asarray(ndimage.center_of_mass(head))
    brain = _largest_component(core, centre)
    brain = _grow(brain, erode_mm, spacing_hw) & head
    # The opening lost the brain's darker rim (partial volume with CSF): take back, within the same
    # distance, what is brighter than a third of the threshold (dark bone and the CSF gap stay out).
    dim = head & (volume > LOW_FRACTION * threshold)
    brain |= _grow(brain, erode_mm, spacing_hw) & dim
    brain = _per_slice(lambda plane: _closed(plane, erode_mm, spacing_hw), brain)
    return _per_slice(ndimage.binary_fill_holes, brain) & head


def network_available() -> bool:
    """Whether deepbet (the "network" method) is installed."""
    return importlib.util.find_spec("deepbet") is not None


@functools.lru_cache(maxsize=1)
def _network():  # noqa: ANN202 - deepbet's BrainExtraction, loaded once per process (0.3 s)
    from deepbet.bet import BrainExtraction

    with warnings.catch_warnings():  # its TorchScript weights load through torch.jit.load (deprecated)
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        return BrainExtraction(no_gpu=True)


def network_brain(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(D, H, W) bool brain mask of one head volume (Case axes) by deepbet, on the grid ``affine`` gives."""
    import nibabel as nib

    from medvision.data.case import case_to_nifti_axes, nifti_to_case_axes

    image = nib.Nifti1Image(case_to_nifti_axes(np.asarray(volume, dtype=np.float32)), np.asarray(affine))
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines are not ours to print
        _, mask, _ = _network().run(image)
    return nifti_to_case_axes(np.asarray(mask.dataobj) > 0)


def _resolved(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown brain extraction method {method!r}; expected one of {METHODS}")
    if method == "auto":
        return "network" if network_available() else "classical"
    if method == "network" and not network_available():
        raise ValueError("brain extraction method 'network' needs deepbet (pip install -r requirements.txt)")
    if method == "phantom" and not phantom_net_available():
        raise ValueError(f"brain extraction method 'phantom' needs its checkpoint {PHANTOM_CHECKPOINT}.json")
    return method


def extract_case_brain(case: Case, *, method: str = "auto", erode_mm: float = DEFAULT_ERODE_MM) -> BrainMask:
    """The brain mask of ``case`` by ``method`` (see the module's notes), computed on the available channel
    that method does best on (networks: FLAIR, T1, T1ce, T2; classical: FLAIR, T2, T1ce, T1)."""
    chosen = _resolved(method)
    order = _PREFERRED if chosen == "classical" else _NETWORK_PREFERRED
    channel = next((m for m in order if m in case.available), MODALITIES[0])
    volume = case.image[MODALITIES.index(channel)]
    if chosen == "network":
        mask, name = network_brain(volume, case.affine), NETWORK_METHOD
    elif chosen == "phantom":
        mask, name = phantom_net_brain(volume, case.spacing), PHANTOM_METHOD
    else:
        mask, name = extract_brain(volume, case.spacing, erode_mm=erode_mm), METHOD
    volume_cm3 = float(mask.sum()) * case.voxel_volume_mm3 / 1000.0
    return BrainMask(mask, name, volume_cm3, channel)


def apply_brain_mask(case: Case, mask: np.ndarray) -> Case:
    """``case`` with every channel zero outside ``mask``: the predictor's brain is its non-zero voxels."""
    if mask.shape != case.shape:
        raise ValueError(f"brain mask shape {mask.shape} does not match the case's (D, H, W) {case.shape}")
    image = np.where(mask[None], case.image, np.float32(0)).astype(np.float32, copy=False)
    return dataclasses.replace(case, image=image)
