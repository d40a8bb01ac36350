"""Brain extraction by a small network of our own, trained only on head phantoms
(:mod:`medvision.data.phantom_head`: a phantom brain inside CSF, skull, marrow, muscle, fat, skin, eyes
and a neck), shipped as ``checkpoints/brain_extractor.*`` and made by
``python -m medvision.train.brain_extractor``.

The network is the project's 2-D Attention U-Net with one input and one output channel: each axial slice of
one modality, resampled in-plane to ``PIXEL_MM`` (coarser when the field of view is wider than
``GRID * PIXEL_MM``) and centred on a ``GRID`` x ``GRID`` canvas, gives a brain probability map. Slices are
independent, so a thick-slice clinical study (BRAINIX: 22 slices 6 mm apart) needs no through-plane
resampling. The probabilities are taken back to the scan's own in-plane grid; the brain is the largest
3-D piece above 0.5 with holes filled per slice.

Intensities are divided by the 99th percentile of the voxels above the volume's mean (the head's bright
tissue, whatever the background) and clipped to [0, ``CLIP``], the same in training and here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "CHECKPOINT",
    "brain_mask_by",
    "GRID",
    "PIXEL_MM",
    "SlicePlacement",
    "from_model_slices",
    "normalise_head",
    "phantom_net_available",
    "phantom_net_brain",
    "postprocess_brain",
    "predict_brain_probability",
    "to_model_slices",
]

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "brain_extractor"
GRID: int = 128  # canvas side in pixels (a multiple of the network's 2**depth)
PIXEL_MM: float = 2.0  # in-plane pixel of the canvas; a 256 mm field of view at most without coarsening
CLIP: float = 3.0
BATCH: int = 16


@dataclass(frozen=True)
class SlicePlacement:
    """Where a scan's slices sit on the canvas: resampled to ``size`` pixels, then padded by ``offset``."""

    native: tuple[int, int]  # (H, W) of the scan
    size: tuple[int, int]  # (h, w) after in-plane resampling
    offset: tuple[int, int]  # top-left corner of the resampled slice on the canvas


def normalise_head(volume: np.ndarray) -> np.ndarray:
    """``volume`` / the 99th percentile of its voxels above the mean, clipped to [0, CLIP] (float32)."""
    volume = np.asarray(volume, dtype=np.float32)
    bright = volume[volume > volume.mean()]
    scale = float(np.percentile(bright, 99)) if bright.size else 0.0
    if scale <= 0:
        return np.zeros_like(volume)
    return np.clip(volume / scale, 0.0, CLIP)


def _placement(shape_hw: tuple[int, int], spacing_hw: tuple[float, float]) -> SlicePlacement:
    extent = (shape_hw[0] * spacing_hw[0], shape_hw[1] * spacing_hw[1])
    pixel = max(PIXEL_MM, extent[0] / GRID, extent[1] / GRID)
    size = tuple(min(GRID, max(1, round(e / pixel))) for e in extent)
    offset = tuple((GRID - s) // 2 for s in size)
    return SlicePlacement(native=tuple(shape_hw), size=size, offset=offset)  # type: ignore[arg-type]


def to_model_slices(
    volume: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[torch.Tensor, SlicePlacement]:
    """(D, H, W) head volume (Case axes, ``spacing`` in mm along D, H, W) -> ((D, 1, GRID, GRID) float32
    canvas slices, their placement)."""
    placement = _placement(volume.shape[1:], (float(spacing[1]), float(spacing[2])))
    slices = torch.from_numpy(normalise_head(volume))[:, None]
    if tuple(slices.shape[2:]) != placement.size:
        slices = F.interpolate(
            slices, size=placement.size, mode="bilinear", align_corners=False, antialias=True
        )
    canvas = torch.zeros((slices.shape[0], 1, GRID, GRID), dtype=torch.float32)
    (top, left), (h, w) = placement.offset, placement.size
    canvas[:, :, top : top + h, left : left + w] = slices
    return canvas, placement


def from_model_slices(probability: torch.Tensor, placement: SlicePlacement) -> np.ndarray:
    """(D, 1, GRID, GRID) canvas probabilities -> (D, H, W) float32 on the scan's own in-plane grid."""
    (top, left), (h, w) = placement.offset, placement.size
    crop = probability[:, :, top : top + h, left : left + w]
    if (h, w) != placement.native:
        crop = F.interpolate(crop, size=placement.native, mode="bilinear", align_corners=False)
    return crop[:, 0].numpy()


def postprocess_brain(probability: np.ndarray) -> np.ndarray:
    """The largest 3-D piece above 0.5 (26-connected), holes filled per slice."""
    mask = probability > 0.5
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        mask = labels == int(np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def predict_brain_probability(model: torch.nn.Module, canvas: torch.Tensor) -> torch.Tensor:
    """Sigmoid of ``model`` over the canvas slices, ``BATCH`` at a time, in fp32 without gradients."""
    model.eval()
    out = torch.empty_like(canvas)
    with torch.inference_mode():
        for start in range(0, canvas.shape[0], BATCH):
            out[start : start + BATCH] = torch.sigmoid(model(canvas[start : start + BATCH]))
    return out


def phantom_net_available(checkpoint: Path = CHECKPOINT) -> bool:
    return checkpoint.with_suffix(".safetensors").is_file() and checkpoint.with_suffix(".json").is_file()


@functools.lru_cache(maxsize=2)
def _model(checkpoint: Path) -> torch.nn.Module:
    from medvision.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    return model


def brain_mask_by(
    model: torch.nn.Module, volume: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """(D, H, W) bool brain mask of one head volume (Case axes, ``spacing`` in mm) by ``model``: onto the
    canvas, the network, back to the scan's grid, the largest piece."""
    canvas, placement = to_model_slices(volume, spacing)
    return postprocess_brain(from_model_slices(predict_brain_probability(model, canvas), placement))


def phantom_net_brain(
    volume: np.ndarray, spacing: tuple[float, float, float], checkpoint: Path = CHECKPOINT
) -> np.ndarray:
    """(D, H, W) bool brain mask of one head volume (Case axes) by the shipped phantom-trained network."""
    return brain_mask_by(_model(Path(checkpoint)), volume, spacing)
