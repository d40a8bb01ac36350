"""Healthy-brain anatomy of a synthetic phantom: brain shape, tissue fractions, CSF spaces, vessels.

Geometry is drawn in a millimetre frame the size of a BraTS volume (155 x 240 x 240 mm along D, H, W),
whatever the voxel grid, so a small test volume is a down-sampled brain rather than a tiny one.
Axis meaning follows BraTS (and case.py): D = axial slice index (inferior -> superior), H = NIfTI i
(left-right, so the interhemispheric fissure is a plane of constant H), W = NIfTI j (anterior ->
posterior for the BraTS affine diag(-1, -1, 1)).

For speed the brain outline is computed on the brain's bounding box ("crop") and every tissue map
after that only on the list of brain voxels (about a sixth of a BraTS volume): 1-D float32 arrays
aligned with ``Anatomy.index``. ``Anatomy.to_crop`` scatters such a list back to a 3-D crop array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvision.data.phantom_fields import ellipsoid_depth, noise_at_points, smooth_noise, smoothstep

FULL_EXTENT_MM: tuple[float, float, float] = (155.0, 240.0, 240.0)

Axes = tuple[np.ndarray, np.ndarray, np.ndarray]
Centre = tuple[float, float, float]
Part = tuple[tuple[float, float, float], tuple[float, float, float]]  # (centre, semi-axes) in mm


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps of one phantom; per-voxel maps are 1-D float32 lists over the brain voxels."""

    box: tuple[slice, slice, slice]  # crop of the full (D, H, W) volume that holds the brain
    axes_mm: Axes  # voxel-centre coordinates of the crop along D, H, W (mm)
    brain: np.ndarray  # (crop) bool, True inside the skull-stripped brain
    index: np.ndarray  # flat indices of the brain voxels in the crop
    coords: Axes  # per brain voxel: D, H, W coordinates in mm (float32)
    depth: np.ndarray  # mm below the brain surface (approximate)
    csf: np.ndarray  # fractions in [0, 1]; csf + gm + deep_gm + wm == 1
    gm: np.ndarray
    deep_gm: np.ndarray
    wm: np.ndarray
    ventricle: np.ndarray  # ventricular CSF fraction (part of csf)
    vessel: np.ndarray  # vessel fraction (enhances on T1ce)
    choroid: np.ndarray  # choroid plexus fraction (enhances on T1ce)
    periventricular: np.ndarray  # weight of the faint FLAIR caps at the ventricular horns
    midline_mm: float  # H coordinate of the interhemispheric plane

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return self.brain.shape  # type: ignore[return-value]

    def full_index(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Flat indices of the brain voxels in the full (D, H, W) volume of ``shape``."""
        voxel = np.unravel_index(self.index, self.brain.shape)
        starts = (self.box[0].start, self.box[1].start, self.box[2].start)
        full = tuple(v + s for v, s in zip(voxel, starts, strict=True))
        return np.ravel_multi_index(full, shape)

    def to_crop(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Scatter a per-brain-voxel list to a 3-D crop array (``fill`` outside the brain)."""
        out = np.full(self.brain.size, fill, dtype=values.dtype)
        out[self.index] = values
        return out.reshape(self.brain.shape)


class _VoxelSampler:
    """Draws smooth fields on the crop and keeps only the brain voxels."""

    def __init__(self, rng: np.random.Generator, axes: Axes, index: np.ndarray) -> None:
        self.rng, self.axes, self.index = rng, axes, index

    def noise(self, cell_mm: float) -> np.ndarray:
        return smooth_noise(self.rng, self.axes, cell_mm).ravel()[self.index]


def _part_box(centre: tuple[float, ...], semi: tuple[float, ...], pad: float) -> np.ndarray:
    c = np.asarray(centre)
    s = np.asarray(semi) * pad + 3.0
    return np.stack([c - s, c + s])


def _soft_ellipsoid(
    coords: Axes,
    centre: tuple[float, float, float],
    semi: tuple[float, float, float],
    wobble: np.ndarray | float = 0.0,
    edge: float = 0.1,
) -> np.ndarray:
    rho = (
        np.sqrt(
            ((coords[0] - centre[0]) / semi[0]) ** 2
            + ((coords[1] - centre[1]) / semi[1]) ** 2
            + ((coords[2] - centre[2]) / semi[2]) ** 2
        )
        - wobble
    )
    return smoothstep(rho, 1.0 + edge, 1.0 - edge)


def _ventricles(
    rng: np.random.Generator,
    field: _VoxelSampler,
    coords: Axes,
    centre: tuple[float, float, float],
    size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Lateral ventricles (two arched ellipsoids) + third ventricle; also the periventricular FLAIR caps."""
    ck, ci, cj = centre
    z, h, j = coords
    enlarge = rng.uniform(0.6, 1.8)  # atrophy / hydrocephalus variation
    wobble = field.noise(9.0) * np.float32(0.12)
    semi_d, semi_h, semi_w = 9.0 * np.sqrt(enlarge) * size, 4.5 * enlarge * size, 32.0 * size
    ventricle = np.zeros(z.shape, dtype=np.float32)
    caps = np.zeros_like(ventricle)
    spread_front, spread_back = rng.uniform(0.0, 6.0) * size, rng.uniform(3.0, 10.0) * size
    cap_reach = rng.uniform(1.5, 2.2)
    for side in (-1.0, 1.0):
        jc = cj - 4.0 * size + rng.uniform(-2, 2)
        uj = (j - jc) / np.float32(semi_w)
        # The bodies run close to the septum; frontal and (more) occipital horns diverge from it.
        flare = spread_front * np.clip(-uj, 0.0, 1.0) ** 2 + spread_back * np.clip(uj, 0.0, 1.0) ** 2
        hc = ci + side * (1.5 * size + semi_h + flare)
        # The body arches over the thalamus: lower at the frontal and occipital ends.
        arch = ck + 14.0 * size - 12.0 * size * uj**2
        rho = np.sqrt(((z - arch) / semi_d) ** 2 + ((h - hc) / semi_h) ** 2 + uj**2) - wobble
        ventricle = np.maximum(ventricle, smoothstep(rho, 1.1, 0.9))
        # Periventricular FLAIR caps, largest around the horns (common, and not tumour).
        caps = np.maximum(caps, smoothstep(rho, cap_reach, 1.05) * smoothstep(np.abs(uj), 0.4, 0.8))
    third = _soft_ellipsoid(
        coords,
        (ck - 3 * size, ci, cj + 4 * size),
        (9 * size, (0.8 + 1.2 * enlarge) * size, 12 * size),
        wobble,
        0.2,
    )
    ventricle = np.maximum(ventricle, third)
    return ventricle, caps * (1.0 - ventricle)


def _deep_grey(
    field: _VoxelSampler, coords: Axes, centre: tuple[float, float, float], size: float
) -> np.ndarray:
    """Thalami and lentiform nuclei: grey-matter-like ellipsoids either side of the third ventricle."""
    ck, ci, cj = centre
    wobble = field.noise(8.0) * np.float32(0.1)
    deep = np.zeros(coords[0].shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        thalamus = _soft_ellipsoid(
            coords,
            (ck - 4 * size, ci + side * 10 * size, cj + 8 * size),
            (9 * size, 8 * size, 14 * size),
            wobble,
            0.2,
        )
        lentiform = _soft_ellipsoid(
            coords,
            (ck + 1 * size, ci + side * 23 * size, cj - 10 * size),
            (11 * size, 6 * size, 15 * size),
            wobble,
            0.2,
        )
        deep = np.maximum(deep, np.maximum(thalamus, lentiform))
    return deep


def _vessels(
    rng: np.random.Generator,
    field: _VoxelSampler,
    coords: Axes,
    depth: np.ndarray,
    centre: tuple[float, float, float],
) -> np.ndarray:
    """Tubes where two smooth fields both cross zero (near the surface), plus the sagittal sinus."""
    ck, ci, _ = centre
    width = rng.uniform(0.05, 0.1)
    a = np.abs(field.noise(13.0))
    b = np.abs(field.noise(13.0))
    tubes = smoothstep(a, width, 0.4 * width) * smoothstep(b, width, 0.4 * width)
    tubes *= smoothstep(depth, rng.uniform(6.0, 14.0), 3.0)
    sinus = (
        smoothstep(np.abs(coords[1] - ci), 3.0, 1.5)
        * smoothstep(depth, 3.0, 1.0)
        * smoothstep(coords[0], ck + 5, ck + 20)
    )
    return np.maximum(tubes, sinus * np.float32(rng.uniform(0.3, 1.0)))


@dataclass(frozen=True)
class _BrainShape:
    """The random outline of one brain: the cerebrum and the smaller parts that bulge from it."""

    centre: Centre
    size: float  # whole-brain scale
    cerebrum_semi: tuple[float, float, float]
    cerebrum_below: float  # the cerebrum's D semi-axis below its equator
    parts: list[Part]  # cerebrum first, then temporal lobes, cerebellum, brainstem


@dataclass(frozen=True)
class _Sulci:
    """Sulcal sheets: the field whose zero set they are, how far in they reach, and their CSF."""

    field: np.ndarray  # |field|: small on a sheet
    depth: np.ndarray  # mm below the surface where a sulcus ends
    width: float
    csf: np.ndarray


def _draw_brain_shape(rng: np.random.Generator) -> _BrainShape:
    """Centre, scale and semi-axes of the brain and its parts (mm, in the BraTS frame)."""
    u = rng.uniform
    ck, ci, cj = 74.0 + u(-5, 5), 119.5 + u(-4, 4), 122.0 + u(-6, 6)
    size = u(0.9, 1.06)
    cerebrum_semi = (60.0 * size * u(0.95, 1.05), 66.0 * size * u(0.93, 1.07), 85.0 * size * u(0.94, 1.06))
    cerebrum_below = cerebrum_semi[0] * u(0.78, 0.9)  # the cerebrum is flatter below its equator
    parts: list[Part] = [
        ((ck, ci, cj), cerebrum_semi),
        ((ck - 33 * size, ci - 44 * size, cj - 18 * size), (20 * size, 21 * size, 40 * size)),  # temporal
        ((ck - 33 * size, ci + 44 * size, cj - 18 * size), (20 * size, 21 * size, 40 * size)),
        ((ck - 52 * size, ci, cj + 44 * size), (21 * size, 50 * size, 30 * size)),  # cerebellum
        ((ck - 50 * size, ci, cj + 6 * size), (34 * size, 13 * size, 14 * size)),  # brainstem
    ]
    return _BrainShape((ck, ci, cj), size, cerebrum_semi, cerebrum_below, parts)


def _crop_to_parts(
    parts: list[Part], spacing: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], Axes]:
    """Crop to the union of the parts' boxes so the full-resolution maths runs on a fraction of the voxels."""
    corners = np.concatenate([_part_box(c, s, 1.08) for c, s in parts])
    lo = np.clip(np.floor(corners.min(axis=0) / spacing).astype(int), 0, shape)
    hi = np.clip(np.ceil(corners.max(axis=0) / spacing).astype(int) + 1, 0, shape)
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))
    axes: Axes = tuple((np.arange(b.start, b.stop) + 0.5) * sp for b, sp in zip(box, spacing, strict=True))  # type: ignore[assignment]
    return box, axes


def _crop_depth(rng: np.random.Generator, axes: Axes, outline: _BrainShape) -> tuple[np.ndarray, np.ndarray]:
    """(mm below the brain surface, weight where the cerebellum dominates) on the crop."""
    wobble = smooth_noise(rng, axes, 38.0) * np.float32(rng.uniform(0.03, 0.06))
    # Depth below the surface of the union of the parts = max of the parts' depths. The smaller parts
    # are evaluated only on their own boxes inside the crop.
    ck = outline.centre[0]
    semi = outline.cerebrum_semi
    cerebrum = (np.where(axes[0] < ck, outline.cerebrum_below, semi[0]), semi[1], semi[2])
    crop_depth = ellipsoid_depth(axes, outline.parts[0][0], cerebrum, wobble)
    cerebellum_crop = np.zeros_like(crop_depth)
    for number, (centre, part_semi) in enumerate(outline.parts[1:], start=1):
        corner = _part_box(centre, part_semi, 1.08)
        sub = tuple(
            slice(int(np.searchsorted(ax, c0)), int(np.searchsorted(ax, c1)))
            for ax, c0, c1 in zip(axes, corner[0], corner[1], strict=True)
        )
        sub_axes: Axes = tuple(ax[b] for ax, b in zip(axes, sub, strict=True))  # type: ignore[assignment]
        part_depth = ellipsoid_depth(sub_axes, centre, part_semi, wobble[sub])
        if number == 3:  # cerebellum: remember where it dominates (for its grey-matter texture)
            cerebellum_crop[sub] = smoothstep(part_depth - crop_depth[sub], -2.0, 2.0)
        np.maximum(crop_depth[sub], part_depth, out=crop_depth[sub])
    return crop_depth, cerebellum_crop


def _sulci(
    rng: np.random.Generator, field: _VoxelSampler, coords: Axes, depth: np.ndarray, outline: _BrainShape
) -> _Sulci:
    """Sheets running inward from the surface, filled with CSF.

    A field on the sphere of directions from the cerebrum's centre is constant along each ray, so its
    zero set gives radial sheets (sulci between gyri); a little 3-D noise bends them, and they stop at a
    varying sulcal depth.
    """
    u = rng.uniform
    sphere_mm = 70.0
    ellipsoidal = [
        (c - c0) / s0 for c, c0, s0 in zip(coords, outline.centre, outline.cerebrum_semi, strict=True)
    ]
    norm = np.sqrt(sum(e * e for e in ellipsoidal)) + np.float32(1e-3)
    directions = tuple(np.float32(sphere_mm) * e / norm for e in ellipsoidal)
    sulcus_field = noise_at_points(rng, directions, u(5.0, 7.5))  # type: ignore[arg-type]
    sulcus_field += np.float32(u(0.25, 0.45)) * field.noise(u(6.0, 9.0))
    np.abs(sulcus_field, out=sulcus_field)
    sulcal_depth = u(12.0, 24.0) + 4.0 * field.noise(25.0)
    width = u(0.06, 0.14)
    csf = smoothstep(sulcus_field, width, 0.4 * width) * smoothstep(depth, sulcal_depth, sulcal_depth - 3.0)
    return _Sulci(sulcus_field, sulcal_depth, width, csf)


def _fissure(
    rng: np.random.Generator, field: _VoxelSampler, coords: Axes, centre: Centre, cerebellum: np.ndarray
) -> np.ndarray:
    """Interhemispheric fissure: a wobbly CSF sheet at the midline, above the corpus callosum and at
    the poles."""
    ck, ci, cj = centre
    z, h, j = coords
    fissure_wobble = 1.5 * field.noise(30.0)
    half_width = rng.uniform(0.7, 1.8)
    fissure_zone = np.maximum(smoothstep(z, ck + 14, ck + 22), smoothstep(np.abs(j - cj), 40.0, 48.0))
    fissure_zone *= 1.0 - cerebellum
    return smoothstep(np.abs(h - ci - fissure_wobble), half_width + 0.5, half_width - 0.5) * fissure_zone


def _outer_csf(rng: np.random.Generator, field: _VoxelSampler, depth: np.ndarray) -> np.ndarray:
    """Subarachnoid CSF left on the surface by skull stripping: 0-2 mm, patchy."""
    outer = rng.uniform(-0.5, 1.8) + 0.8 * field.noise(20.0)
    return smoothstep(depth, outer + 0.6, outer - 0.6)


def _cortex(
    rng: np.random.Generator,
    field: _VoxelSampler,
    depth: np.ndarray,
    sulci: _Sulci,
    cerebellum: np.ndarray,
    csf: np.ndarray,
) -> np.ndarray:
    """Cortical grey matter: a surface layer, the banks of the sulci and the cerebellar cortex."""
    gm_thickness = rng.uniform(2.5, 4.0) + 0.7 * field.noise(15.0)
    gm_surface = smoothstep(depth, gm_thickness + 0.7, gm_thickness - 0.7)
    gm_sulci = smoothstep(sulci.field, sulci.width + 0.5, sulci.width + 0.35) * smoothstep(
        depth, sulci.depth + 3.5, sulci.depth + 1.5
    )
    # The cerebellar cortex is finely folded: mostly grey matter at this resolution.
    gm_cerebellum = cerebellum * smoothstep(field.noise(3.0), -0.9, -0.3)
    return np.maximum.reduce([gm_surface, gm_sulci, gm_cerebellum]) * (1.0 - csf)


def make_anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> Anatomy:
    """Draw a random healthy brain on a (D, H, W) grid spanning the BraTS field of view."""
    # The order of the random draws below fixes every phantom of a seed: keep it when editing.
    spacing = np.asarray(FULL_EXTENT_MM) / np.asarray(shape)
    outline = _draw_brain_shape(rng)
    centre = outline.centre
    box, axes = _crop_to_parts(outline.parts, spacing, shape)
    crop_depth, cerebellum_crop = _crop_depth(rng, axes, outline)
    brain = crop_depth > 0
    index = np.flatnonzero(brain)
    depth = crop_depth.ravel()[index]
    cerebellum = cerebellum_crop.ravel()[index]
    del crop_depth, cerebellum_crop
    voxel = np.unravel_index(index, brain.shape)
    coords: Axes = tuple(ax.astype(np.float32)[v] for ax, v in zip(axes, voxel, strict=True))  # type: ignore[assignment]
    field = _VoxelSampler(rng, axes, index)

    sulci = _sulci(rng, field, coords, depth, outline)
    csf_fissure = _fissure(rng, field, coords, centre, cerebellum)
    csf_outer = _outer_csf(rng, field, depth)
    ventricle, periventricular = _ventricles(rng, field, coords, centre, outline.size)
    csf = np.maximum.reduce([csf_outer, sulci.csf, csf_fissure, ventricle])

    gm = _cortex(rng, field, depth, sulci, cerebellum, csf)
    deep_gm = _deep_grey(field, coords, centre, outline.size) * (1.0 - csf) * (1.0 - gm)
    wm = np.clip(1.0 - csf - gm - deep_gm, 0.0, 1.0)

    vessel = _vessels(rng, field, coords, depth, centre)
    choroid = (
        ventricle
        * smoothstep(field.noise(5.0), 0.6, 1.2)
        * smoothstep(coords[2], centre[2] - 5, centre[2] + 8)
    )

    return Anatomy(
        box=box,
        axes_mm=axes,
        brain=brain,
        index=index,
        coords=coords,
        depth=depth,
        csf=csf,
        gm=gm,
        deep_gm=deep_gm,
        wm=wm,
        ventricle=ventricle,
        vessel=vessel,
        choroid=choroid,
        periventricular=periventricular,
        midline_mm=centre[1],
    )
