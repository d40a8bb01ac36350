"""Tumours of a synthetic phantom: irregular lesions with necrotic core, enhancing rim and oedema.

Each lesion is a noise-deformed, randomly rotated ellipsoidal blob drawn on a small box around its
centre. Three nested surfaces give the BraTS sub-regions: the whole-tumour surface (oedema, label 2,
spreading further along white matter and kept out of the ventricles), the core surface (label 4,
enhancing) and an inner surface (label 1, necrosis) whose distance to the core surface varies, so the
enhancing rim has an irregular thickness. Lesion kinds: ``necrotic`` (rim + necrosis),
``solid`` (enhancing without necrosis) and ``non_enhancing`` (a core of label 1 only).

Along with the labels the module returns soft weights (oedema, core, necrotic share of the core)
that the contrast model uses to paint intensities, so the image boundary follows the label boundary
with a realistic partial-volume ramp rather than a hard step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvision.data.phantom_anatomy import Anatomy
from medvision.data.phantom_fields import random_rotation, smooth_noise, smoothstep

LESION_KINDS: tuple[str, ...] = ("necrotic", "solid", "non_enhancing")


@dataclass(frozen=True)
class LesionSpec:
    """One lesion, in the phantom's millimetre frame."""

    centre_mm: tuple[float, float, float]
    radius_mm: float  # whole-tumour (oedema) radius before deformation
    core_fraction: float  # core radius / whole-tumour radius
    kind: str  # one of LESION_KINDS


@dataclass(frozen=True)
class TumourMaps:
    """Per-brain-voxel lists aligned with ``Anatomy.index``."""

    label: np.ndarray  # uint8 BraTS labels 0/1/2/4
    oedema: np.ndarray  # float32 weight of the oedema contrast
    core: np.ndarray  # float32 weight of the tumour-core contrast (replaces tissue)
    necrotic: np.ndarray  # float32 share of the core that is necrotic / non-enhancing
    lesions: tuple[LesionSpec, ...]


# Which label wins where lesions overlap: any core beats oedema.
_LABEL_RANK = np.array([0, 2, 1, 0, 3], dtype=np.uint8)  # indexed by label value 0, 1, 2, (3), 4


def sample_lesions(rng: np.random.Generator, anatomy: Anatomy) -> list[LesionSpec]:
    """Choose 1-3 lesions: sizes from a few mm to ~4 cm radius, anywhere in the cerebrum's white matter."""
    n_lesions = int(rng.choice([1, 2, 3], p=[0.65, 0.25, 0.10]))
    lesions = []
    for number in range(n_lesions):
        if number == 0 and rng.random() > 0.3:
            radius = float(np.exp(rng.uniform(np.log(14.0), np.log(40.0))))
        else:
            radius = float(np.exp(rng.uniform(np.log(4.0), np.log(13.0 if number == 0 else 22.0))))
        kind = str(rng.choice(LESION_KINDS, p=[0.55, 0.2, 0.25]))
        if kind == "necrotic" and radius < 8.0:
            kind = "solid"  # a small lesion has no room for a rim around necrosis
        core_fraction = float(rng.uniform(0.85, 1.0) if rng.random() < 0.1 else rng.uniform(0.25, 0.75))
        # Centre on white matter deep enough for the core, so lesions are not mostly cut by the surface.
        min_depth = max(4.0, 0.6 * radius * core_fraction)
        candidates = np.flatnonzero((anatomy.depth > min_depth) & (anatomy.wm > 0.5))
        if candidates.size == 0:
            candidates = np.flatnonzero(anatomy.depth >= np.percentile(anatomy.depth, 90))
        pick = int(rng.choice(candidates))
        centre = tuple(float(c[pick]) for c in anatomy.coords)
        lesions.append(LesionSpec(centre, radius, core_fraction, kind))  # type: ignore[arg-type]
    return lesions


def _lesion_box(anatomy: Anatomy, lesion: LesionSpec) -> tuple[slice, slice, slice]:
    half = 1.6 * lesion.radius_mm + 4.0
    box = []
    for axis, centre in zip(anatomy.axes_mm, lesion.centre_mm, strict=True):
        lo = int(np.searchsorted(axis, centre - half))
        hi = int(np.searchsorted(axis, centre + half))
        box.append(slice(lo, max(hi, lo + 1)))
    return tuple(box)  # type: ignore[return-value]


def _draw_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    lesion: LesionSpec,
    wm: np.ndarray,
    ventricle: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label and weights of one lesion on its box (3-D arrays); ``wm``/``ventricle`` are crops of that box."""
    box = _lesion_box(anatomy, lesion)
    axes = tuple(ax[b] for ax, b in zip(anatomy.axes_mm, box, strict=True))
    rotation = random_rotation(rng)
    stretch = rng.uniform(0.75, 1.3, size=3)
    offsets = [(ax - c).astype(np.float32) for ax, c in zip(axes, lesion.centre_mm, strict=True)]
    offsets = [offsets[0][:, None, None], offsets[1][None, :, None], offsets[2][None, None, :]]
    radius2 = 0.0
    for row in range(3):
        along = sum(np.float32(rotation[row, col]) * offsets[col] for col in range(3)) / np.float32(
            stretch[row]
        )
        radius2 = radius2 + along * along
    r = np.sqrt(radius2)  # mm, anisotropic and rotated

    r_wt = lesion.radius_mm
    r_core = lesion.radius_mm * lesion.core_fraction
    shape_noise = smooth_noise(rng, axes, max(3.0, r_wt / 2.5))  # type: ignore[arg-type]
    core_noise = smooth_noise(rng, axes, max(2.5, r_core / 2.0))  # type: ignore[arg-type]
    rim_noise = smooth_noise(rng, axes, max(2.0, r_core / 3.0))  # type: ignore[arg-type]

    # Oedema spreads along white matter and less into cortex; it does not fill the ventricles.
    reach = 0.7 + 0.3 * wm
    rho_wt = (r / r_wt + rng.uniform(0.12, 0.3) * shape_noise) / reach
    rho_core = r / r_core + rng.uniform(0.08, 0.2) * core_noise
    soft_edge = rng.uniform(0.07, 0.14)
    oedema = smoothstep(rho_wt, 1.0 + soft_edge, 1.0 - soft_edge) * (1.0 - ventricle)
    core = smoothstep(rho_core, 1.04, 0.96)
    if lesion.kind == "necrotic":
        rim_mm = rng.uniform(1.5, 5.0)
        inner = 1.0 - (rim_mm / r_core) * (1.0 + 0.6 * rim_noise)
        necrotic = smoothstep(rho_core, inner + 0.04, inner - 0.04)
    elif lesion.kind == "solid":
        # Mostly enhancing; occasionally a few non-enhancing islands.
        necrotic = smoothstep(rim_noise, 1.6, 2.2)
    else:
        necrotic = np.ones_like(core)

    label = np.zeros(core.shape, dtype=np.uint8)
    label[oedema >= 0.5] = 2
    is_core = core >= 0.5
    label[is_core] = np.where(necrotic[is_core] >= 0.5, 1, 4).astype(np.uint8)
    return label, oedema, core, np.broadcast_to(necrotic, core.shape)


def make_tumours(rng: np.random.Generator, anatomy: Anatomy, lesions: list[LesionSpec]) -> TumourMaps:
    """Draw ``lesions`` into the anatomy; returns labels and contrast weights per brain voxel."""
    crop = anatomy.crop_shape
    label = np.zeros(crop, dtype=np.uint8)
    oedema = np.zeros(crop, dtype=np.float32)
    core = np.zeros(crop, dtype=np.float32)
    necrotic = np.zeros(crop, dtype=np.float32)
    wm = anatomy.to_crop(anatomy.wm)
    ventricle = anatomy.to_crop(anatomy.ventricle)
    for lesion in lesions:
        box = _lesion_box(anatomy, lesion)
        lab, ed, co, nc = _draw_lesion(rng, anatomy, lesion, wm[box], ventricle[box])
        current = label[box]
        label[box] = np.where(_LABEL_RANK[lab] > _LABEL_RANK[current], lab, current)
        oedema[box] = np.maximum(oedema[box], ed)
        # The necrotic share follows whichever lesion contributes more core at a voxel.
        necrotic[box] = np.where(co > core[box], nc, necrotic[box])
        core[box] = np.maximum(core[box], co)
    index = anatomy.index
    return TumourMaps(
        label=label.ravel()[index],
        oedema=oedema.ravel()[index],
        core=core.ravel()[index],
        necrotic=necrotic.ravel()[index],
        lesions=tuple(lesions),
    )
