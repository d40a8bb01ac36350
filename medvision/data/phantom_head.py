"""Head phantoms: a skull-stripped phantom brain (:mod:`medvision.data.synthetic`) with what a raw scan
shows around it, for training and testing brain extraction with a known brain.

``make_head_phantom(seed, size)`` draws one brain and wraps it, from the inside out, in a CSF gap, the
skull (inner table, marrow-filled diploe, outer table), temporal muscle, subcutaneous fat and skin, each
layer's thickness varying smoothly over the head; below the brain a neck of muscle in a ring of fat runs
to the bottom of the field of view; in front of the frontal lobe's base sit two eyes (vitreous in orbital
fat). Every tissue's brightness is drawn per modality as a share of the brain's median (scalp fat is
bright on T1, vitreous bright on T2 and dark on FLAIR and T1), then a smooth bias field and Rician noise
cover the whole field of view, so the background is not 0 (as in BRAINIX, unlike BraTS).

The true brain is the phantom's non-zero voxels before the head was drawn: the same rule that defines
the brain of a skull-stripped BraTS case. Axes are the Case's (D, H, W) = (inferior -> superior,
right -> left, anterior -> posterior), as the phantom's BraTS affine gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from medvision.data.case import MODALITIES, Case
from medvision.data.synthetic import make_phantom

__all__ = ["HeadPhantom", "TISSUES", "add_head", "make_head_phantom"]

# Brightness of each tissue outside the brain, per modality (FLAIR, T1, T1ce, T2), as a range of shares of
# the brain's median in that modality; one value per case is drawn from each range.
TISSUES: dict[str, tuple[tuple[float, float], ...]] = {
    "csf": ((0.10, 0.35), (0.10, 0.35), (0.10, 0.35), (1.30, 2.00)),
    "bone": ((0.02, 0.10), (0.02, 0.10), (0.02, 0.10), (0.02, 0.10)),
    "marrow": ((0.60, 1.20), (1.00, 1.60), (1.00, 1.70), (0.50, 1.00)),
    "muscle": ((0.45, 0.80), (0.55, 0.90), (0.60, 1.00), (0.35, 0.70)),
    "fat": ((0.80, 1.50), (1.30, 2.10), (1.30, 2.10), (0.80, 1.50)),
    "skin": ((0.50, 0.90), (0.50, 0.90), (0.50, 0.90), (0.50, 0.90)),
    "vitreous": ((0.05, 0.20), (0.10, 0.30), (0.10, 0.30), (1.50, 2.20)),
}
# The layers around the brain, inside out: (tissue, thickness range in mm).
LAYERS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("csf", (1.0, 4.0)),
    ("bone", (1.0, 2.5)),
    ("marrow", (1.0, 4.0)),
    ("bone", (1.0, 2.0)),
    ("muscle", (0.5, 4.0)),
    ("fat", (1.5, 6.0)),
    ("skin", (1.0, 2.0)),
)
SOFT_TISSUE_FROM = "muscle"  # the first layer measured from the skull and eyes rather than the brain
NECK_MM: tuple[float, float] = (0.0, 30.0)  # added below the brain's lowest slice
EYE_RADIUS_MM: tuple[float, float] = (10.0, 12.5)
NOISE: tuple[float, float] = (0.015, 0.06)  # Rician noise sigma, as a share of the brain's FLAIR median


@dataclass(frozen=True)
class HeadPhantom:
    case: Case  # the head: image (4, D, H, W) float32, no label
    brain: np.ndarray  # (D, H, W) bool, the true brain


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A smooth random field scaled to [-1, 1] (blurred white noise at 1/4 resolution, zoomed back)."""
    coarse = [max(2, s // 4) for s in shape]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / 4)
    field = ndimage.zoom(field, [s / c for s, c in zip(shape, coarse, strict=True)], order=1)[
        tuple(slice(0, s) for s in shape)
    ]
    return (field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


def _per_slice_hull(mask: np.ndarray) -> np.ndarray:
    return np.stack([convex_hull_image(plane) if plane.any() else plane for plane in mask])


def _labelled_layers(
    rng: np.random.Generator, brain: np.ndarray, eyes: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """(D, H, W) int8 map: -1 background, 0 brain, 1.. the index into LAYERS (+1) of each voxel's layer.

    The skull's layers (up to the outer table) are measured from the brain, the soft tissue over it from
    the brain, the skull and the eyes together, so that the eyes sit in the face under fat and skin."""
    # The thickness of every layer varies by up to 40% over the head, smoothly (thick temporal muscle,
    # thin scalp at the vertex).
    stretch = 1.0 + 0.4 * _smooth_field(rng, brain.shape, sigma=6.0)
    layers = np.full(brain.shape, -1, dtype=np.int8)
    layers[brain] = 0
    inside, inner = brain, 0.0
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing).astype(np.float32)
    for index, (tissue, (low, high)) in enumerate(LAYERS, start=1):
        if tissue == SOFT_TISSUE_FROM:
            # The soft tissue wraps the skull and the eyes together: what lies between them on a slice
            # (the face, the temporal fossa) is filled with this first soft layer.
            inside = _per_slice_hull((layers >= 0) | eyes)
            layers[inside & (layers < 0) & ~eyes] = index
            inner = 0.0
            distance = ndimage.distance_transform_edt(~inside, sampling=spacing).astype(np.float32)
        outer = inner + float(rng.uniform(low, high))
        ring = ~inside & (layers < 0) & (distance > inner * stretch) & (distance <= outer * stretch)
        layers[ring] = index
        inner = outer
    return layers


def _neck(rng: np.random.Generator, shape: tuple[int, int, int], brain: np.ndarray, spacing) -> np.ndarray:
    """(D, H, W) int8: 1 neck muscle, 2 its fat ring, below the brain's lowest slice, else 0."""
    neck = np.zeros(shape, dtype=np.int8)
    lowest = int(np.flatnonzero(brain.any(axis=(1, 2)))[0])
    if lowest == 0:
        return neck
    _, hh, ww = np.nonzero(brain[lowest : lowest + 3])
    centre_h, centre_w = float(hh.mean()), float(ww.mean())
    radius_h = rng.uniform(40.0, 55.0) / spacing[1]
    radius_w = rng.uniform(38.0, 50.0) / spacing[2]
    fat = rng.uniform(3.0, 8.0)
    h, w = np.ogrid[: shape[1], : shape[2]]
    r = np.sqrt(((h - centre_h) / radius_h) ** 2 + ((w - centre_w) / radius_w) ** 2)
    plane = np.where(r <= 1.0, 1, np.where(r <= 1.0 + fat / (radius_h * spacing[1]), 2, 0)).astype(np.int8)
    neck[:lowest] = plane
    return neck


def _eyes(rng: np.random.Generator, brain: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """(vitreous, orbital fat) (D, H, W) bool: two globes in front of the lowest part of the frontal lobe."""
    d_idx, h_idx, w_idx = np.nonzero(brain)
    front = w_idx.min() + 0.2 * (w_idx.max() - w_idx.min())
    frontal = w_idx <= front
    base = float(np.percentile(d_idx[frontal], 5))  # the frontal lobe's base (orbital roof above the eyes)
    radius = float(rng.uniform(*EYE_RADIUS_MM))
    centre_d = base - rng.uniform(0.3, 0.9) * radius / spacing[0]
    centre_w = w_idx.min() - rng.uniform(8.0, 14.0) / spacing[2]
    midline = float(h_idx.mean())
    apart = rng.uniform(28.0, 34.0) / spacing[1]
    d, h, w = np.ogrid[: brain.shape[0], : brain.shape[1], : brain.shape[2]]
    vitreous = np.zeros(brain.shape, dtype=bool)
    orbit = np.zeros(brain.shape, dtype=bool)
    for centre_h in (midline - apart, midline + apart):
        r = np.sqrt(
            ((d - centre_d) * spacing[0]) ** 2
            + ((h - centre_h) * spacing[1]) ** 2
            + ((w - centre_w) * spacing[2]) ** 2
        )
        vitreous |= r <= radius
        orbit |= (r > radius) & (r <= radius + rng.uniform(4.0, 8.0))
    return vitreous & ~brain, orbit & ~brain


def _tissue_levels(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: np.array([rng.uniform(lo, hi) for lo, hi in ranges]) for name, ranges in TISSUES.items()}


def _paint(image: np.ndarray, where: np.ndarray, levels: np.ndarray, medians: np.ndarray, rng) -> None:
    texture = 1.0 + 0.08 * rng.standard_normal(int(where.sum())).astype(np.float32)
    for channel in range(image.shape[0]):
        image[channel][where] = levels[channel] * medians[channel] * texture


def add_head(case: Case, rng: np.random.Generator) -> HeadPhantom:
    """``case`` (a skull-stripped phantom: brain = non-zero voxels) with a head drawn around its brain."""
    brain = case.image.max(axis=0) > 0
    spacing = tuple(float(s) for s in case.spacing)
    pad = int(round(rng.uniform(*NECK_MM) / spacing[0]))  # room below the brain for the neck
    image = np.pad(case.image, ((0, 0), (pad, 0), (0, 0), (0, 0)))
    brain = np.pad(brain, ((pad, 0), (0, 0), (0, 0)))
    medians = np.array([float(np.median(channel[brain])) for channel in image])
    levels = _tissue_levels(rng)
    vitreous, orbit = _eyes(rng, brain, spacing)
    layers = _labelled_layers(rng, brain, vitreous | orbit, spacing)
    neck = _neck(rng, brain.shape, brain, spacing)
    for index, (tissue, _) in enumerate(LAYERS, start=1):
        _paint(image, layers == index, levels[tissue], medians, rng)
    _paint(image, (neck == 1) & (layers < 0), levels["muscle"], medians, rng)
    _paint(image, (neck == 2) & (layers < 0), levels["fat"], medians, rng)
    _paint(image, orbit & (layers < 0), levels["fat"], medians, rng)
    _paint(image, vitreous & (layers < 0), levels["vitreous"], medians, rng)
    bias = 1.0 + 0.15 * _smooth_field(rng, brain.shape, sigma=10.0)
    sigma = float(rng.uniform(*NOISE)) * medians[0]
    noisy = np.empty_like(image)
    for channel in range(image.shape[0]):
        real = image[channel] * bias + rng.normal(0.0, sigma, brain.shape).astype(np.float32)
        imaginary = rng.normal(0.0, sigma, brain.shape).astype(np.float32)
        noisy[channel] = np.sqrt(real * real + imaginary * imaginary)
    affine = case.affine.copy()
    affine[:3, 3] -= affine[:3, 2] * pad  # the padded slices lie below the old first one
    head = Case(
        case_id=case.case_id,
        image=noisy.astype(np.float32),
        affine=affine,
        spacing=case.spacing,
        available=MODALITIES,
    )
    return HeadPhantom(case=head, brain=brain)


def make_head_phantom(seed: int, size: tuple[int, int, int] = (78, 120, 120)) -> HeadPhantom:
    """One deterministic head phantom (same ``seed`` and ``size`` -> identical arrays); the default size
    is the BraTS field of view at about 2 mm."""
    case = make_phantom(f"Head_{seed:03d}", seed, size)
    return add_head(case, np.random.default_rng([seed, 1]))
