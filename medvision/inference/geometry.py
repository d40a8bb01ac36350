"""Where the network's input comes from and where its output goes back: crop to the brain, pad, uncrop.

A raw case goes through exactly the preprocessing of training (``normalise_case_image``: crop to the
brain box, per-modality z-score); a case read from a prepared store already is that crop. Each axial
slice of the crop is centre-padded with background to the next multiple of ``2**depth`` (optionally at
least the training patch size), the network output is cut back to the crop, and the crop is put back
into the case's full (D, H, W) geometry, zero elsewhere. Training-time validation, ``evaluate`` and
``predict`` all use these functions, so a checkpoint sees the same pixels whichever asks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import availability_vector
from medvision.data.preprocess import brain_mask, normalise_case_image_and_brain

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PreparedVolume:
    """A brain crop normalised like training data, where it sits in the full volume, and its padding."""

    image: np.ndarray  # (4, d, h, w) brain crop, z-scored (float32, or float16 as a store holds it)
    box: Box  # the crop in the full (D, H, W)
    full_shape: tuple[int, int, int]  # (D, H, W) of the whole case
    brain: np.ndarray  # (d, h, w) bool: voxels of the crop where any modality is non-zero
    padded: tuple[int, int]  # network input (H', W')
    offset: tuple[int, int]  # top-left of the crop inside the padded input
    available: tuple[str, ...] = MODALITIES  # the modalities given; the others' channels are zeros

    @property
    def has_brain(self) -> np.ndarray:
        """(d,) bool: slices of the crop holding any brain voxel (the others are not run at all)."""
        return self.brain.any(axis=(1, 2))

    @property
    def depth(self) -> int:
        return int(self.image.shape[1])


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def padded_size(
    crop: tuple[int, int], multiple: int, patch_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """Network input (H', W') for a crop of (h, w): rounded up to ``multiple``; at least ``patch_size``
    (rounded too) when given, as training saw crops centre-padded to the patch size."""
    height, width = round_up(crop[0], multiple), round_up(crop[1], multiple)
    if patch_size is not None:
        height = max(height, round_up(patch_size[0], multiple))
        width = max(width, round_up(patch_size[1], multiple))
    return height, width


def _prepared(
    image: np.ndarray,
    box: Box,
    full_shape: tuple[int, int, int],
    brain: np.ndarray,
    multiple: int,
    patch_size: tuple[int, int] | None,
) -> PreparedVolume:
    h, w = image.shape[-2:]
    padded = padded_size((h, w), multiple, patch_size)
    offset = ((padded[0] - h) // 2, (padded[1] - w) // 2)  # same centring as data.dataset.fit_to_patch
    return PreparedVolume(image, box, full_shape, brain, padded, offset)


def prepare_case_image(
    image: np.ndarray,
    multiple: int,
    patch_size: tuple[int, int] | None = None,
    available: tuple[str, ...] = MODALITIES,
) -> PreparedVolume:
    """A raw case image (4, D, H, W) -> its normalised brain crop with padding for the network.

    Raises:
        ValueError: the image is not (4, D, H, W).
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise ValueError(f"case image must be ({len(MODALITIES)}, D, H, W), got {image.shape}")
    normalised, box, brain = normalise_case_image_and_brain(image)
    full_shape = tuple(int(s) for s in image.shape[1:])
    prepared = _prepared(normalised, box, full_shape, brain, multiple, patch_size)  # type: ignore[arg-type]
    return dataclasses.replace(prepared, available=tuple(available))


def prepare_stored_image(
    image: np.ndarray, multiple: int, patch_size: tuple[int, int] | None = None
) -> PreparedVolume:
    """A prepared store's image (4, d, h, w), already the normalised brain crop, -> the same structure.

    Its brain is where any modality is non-zero: z-scoring keeps the background exactly 0, so this is
    the mask :func:`prepare_case_image` takes from the raw image.
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise ValueError(f"stored image must be ({len(MODALITIES)}, d, h, w), got {image.shape}")
    full_shape = tuple(int(s) for s in image.shape[1:])
    box = tuple(slice(0, s) for s in full_shape)
    return _prepared(image, box, full_shape, brain_mask(image), multiple, patch_size)  # type: ignore[arg-type]


def batch_input(
    prepared: PreparedVolume, indices: np.ndarray, neighbours: int, availability: bool = False
) -> np.ndarray:
    """(B, C, H', W') float32 network input for crop slices ``indices``.

    C = 4 * (1 + 2 * neighbours), blocks in offset order -n ... +n; neighbours clamp at the crop's ends
    (as ``data.dataset.SliceDataset.read`` does at the volume's ends). With ``availability``, 4 more
    constant planes say which modalities were given (medvision.data.modality_sets).
    """
    depth, h, w = prepared.image.shape[1:]
    top, left = prepared.offset
    n_mod = len(MODALITIES)
    image_channels = n_mod * (1 + 2 * neighbours)
    planes = n_mod if availability else 0
    batch = np.zeros((len(indices), image_channels + planes, *prepared.padded), dtype=np.float32)
    if availability:
        batch[:, image_channels:] = availability_vector(prepared.available)[None, :, None, None]
    for b, k in enumerate(indices):
        for block, offset in enumerate(range(-neighbours, neighbours + 1)):
            j = min(max(int(k) + offset, 0), depth - 1)
            batch[b, block * n_mod : (block + 1) * n_mod, top : top + h, left : left + w] = prepared.image[
                :, j
            ]
    return batch


def pad_like_input(prepared: PreparedVolume, array: np.ndarray) -> np.ndarray:
    """(..., h, w) crop-sized array (e.g. targets) -> (..., H', W') placed like the network input."""
    h, w = array.shape[-2:]
    top, left = prepared.offset
    out = np.zeros((*array.shape[:-2], *prepared.padded), dtype=array.dtype)
    out[..., top : top + h, left : left + w] = array
    return out


def uncrop(prepared: PreparedVolume, padded: np.ndarray) -> np.ndarray:
    """(..., H', W') network output -> (..., h, w) of the brain crop."""
    h, w = prepared.image.shape[-2:]
    top, left = prepared.offset
    return padded[..., top : top + h, left : left + w]


def to_full_volume(prepared: PreparedVolume, crop: np.ndarray) -> np.ndarray:
    """(..., d, h, w) array of the crop -> (..., D, H, W) of the whole case, zero outside the crop."""
    full = np.zeros((*crop.shape[:-3], *prepared.full_shape), dtype=crop.dtype)
    full[(..., *prepared.box)] = crop
    return full
