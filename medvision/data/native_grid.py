"""Series of one study -> one ``Case`` on the reference series' grid, and the model's ~1 mm in-plane grid.

Clinical studies hold each sequence on its own grid (BRAINIX: FLAIR 288x288 at 0.8 mm, T1/T2 512x512 at
0.45-0.47 mm, all 22 slices 6 mm apart in one frame of reference). :func:`to_reference_grid` resamples
every series onto the reference's grid (FLAIR by default, else T1ce, else the first given) through the
affines alone: ``inv(A_moving) @ A_reference`` maps each reference voxel to the moving volume, sampled
with linear interpolation (scipy), after a Gaussian anti-alias filter in-plane where the moving series is
finer (0.47 -> 0.8 mm would otherwise alias). An optional rigid refinement (SimpleITK, Mattes mutual
information on 5% of the voxels, 30 iterations) corrects patient motion between series. Measured on
BRAINIX (AMD EPYC, 2 shared cores): it moves T1 by 1.0 mm (mostly through-plane) and 0.6 degrees and T2
by 1.1 mm and 0.2 degrees, the same with three sampling seeds, and full-sample mutual information
improves by 3-4%; it costs 5-9 s per series. The series share a frame of reference and the shifts are a
sixth of the 6 mm slice spacing, so it is off by default (``register=True`` turns it on).

:func:`to_model_grid` prepares the reference-grid case for the 2-D model: in-plane axes turned (exact
flips and transposes, no interpolation) so that an axial study has the BraTS orientation the model was
trained on (i toward the patient's left, j toward posterior, k toward superior), then each slice
resampled to ~1 mm in-plane. Native slices are kept: a thick-slice study needs no through-plane
interpolation for a slice-wise model. The ``back`` function it returns maps a label volume predicted on
that grid to the reference grid (nearest neighbour, then the inverse turn), where it is exported.
Every step appends a :class:`GridNote` (what was done, sizes, seconds) to the caller's list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from medvision.data.case import MODALITIES, Case, case_to_nifti_axes, nifti_to_case_axes

__all__ = [
    "GridNote",
    "InputVolume",
    "choose_reference",
    "resample_volume",
    "rigid_refinement",
    "to_model_grid",
    "to_reference_grid",
]

logger = logging.getLogger(__name__)

REFERENCE_PREFERENCE: tuple[str, ...] = ("flair", "t1ce")
MODEL_ORIENTATION: tuple[str, str, str] = ("L", "P", "S")  # BraTS files, see DESIGN.md
BackToReference = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class InputVolume:
    """One modality as read: voxels in NIfTI (i, j, k) order, the voxel -> RAS+ mm affine, its source."""

    modality: str
    data: np.ndarray
    affine: np.ndarray
    source: str = ""  # how it is named to a user ("series 401 'sT2W/FLAIR'", a file name)
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class GridNote:
    step: str
    detail: str
    seconds: float

    def __str__(self) -> str:
        return f"{self.step}: {self.detail} ({self.seconds:.2f} s)"


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def choose_reference(modalities: Sequence[str], reference: str | None = None) -> str:
    """The modality whose grid the case is put on: ``reference`` if given, else FLAIR, else T1ce, else the
    first given. ValueError when ``reference`` is not among ``modalities``."""
    if not modalities:
        raise ValueError("no volumes given")
    if reference is not None:
        if reference not in modalities:
            raise ValueError(
                f"reference {reference!r} is not among the volumes given ({', '.join(modalities)})"
            )
        return reference
    return next((m for m in REFERENCE_PREFERENCE if m in modalities), modalities[0])


def resample_volume(
    volume: InputVolume,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    world_transform: np.ndarray | None = None,
    order: int = 1,
) -> np.ndarray:
    """``volume`` sampled on the grid (``shape``, ``affine``): zero outside its field of view.

    ``world_transform`` (4x4, RAS+ mm) maps a point of the target's world to the volume's world (a rigid
    refinement); identity when None. Where the volume is finer than the target in-plane it is smoothed
    first (sigma = (ratio - 1) / 2 voxels, as skimage's anti-aliasing) so that detail does not alias.
    """
    transform = np.eye(4) if world_transform is None else np.asarray(world_transform, dtype=np.float64)
    voxel_map = np.linalg.inv(volume.affine) @ transform @ np.asarray(affine, dtype=np.float64)
    data = volume.data.astype(np.float32, copy=False)
    if tuple(data.shape) == tuple(shape) and np.allclose(voxel_map, np.eye(4), atol=1e-4):
        return data.copy()  # already on the grid (co-registered NIfTI): nothing to interpolate
    if order > 0:
        # How many moving voxels one target voxel spans along each moving axis.
        ratio = np.abs(voxel_map[:3, :3]).sum(axis=1)
        sigma = [max(0.0, (r - 1.0) / 2.0) if axis < 2 else 0.0 for axis, r in enumerate(ratio)]
        if any(s > 0.05 for s in sigma):
            data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
    return ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        output_shape=shape,
        order=order,
        mode="constant",
        cval=0.0,
    ).astype(np.float32, copy=False)


def _sitk_image(data: np.ndarray, affine: np.ndarray):  # noqa: ANN202 - SimpleITK has no stubs
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = _spacing(lps)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def rigid_refinement(
    fixed: InputVolume, moving: InputVolume, *, iterations: int = 30, seed: int = 0
) -> np.ndarray:
    """A rigid transform (4x4, RAS+ mm) mapping ``fixed``'s world onto ``moving``'s, found by SimpleITK
    (Mattes mutual information on 5% of the voxels, regular-step gradient descent, ``iterations`` steps),
    starting from the identity: the series already share a frame of reference."""
    import SimpleITK as sitk

    fixed_image = _sitk_image(fixed.data, fixed.affine)
    moving_image = _sitk_image(moving.data, moving.affine)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    initial = sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    initial.SetTranslation((0.0, 0.0, 0.0))  # start where the scanner put it
    transform = sitk.Euler3DTransform(initial)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed_image, moving_image)
    result = transform
    rotation = np.asarray(result.GetMatrix()).reshape(3, 3)
    center = np.asarray(result.GetCenter())
    lps = np.eye(4)
    lps[:3, :3] = rotation
    lps[:3, 3] = center + np.asarray(result.GetTranslation()) - rotation @ center
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def _describe_transform(transform: np.ndarray, reference: InputVolume) -> str:
    """How far a rigid transform moves the reference's corner and centre voxels, in mm."""
    shape = np.asarray(reference.data.shape) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])])
    world = corners @ reference.affine.T
    moved = world @ transform.T
    most = np.linalg.norm((moved - world)[:, :3], axis=1).max()
    return f"moves points of the field of view by up to {most:.2f} mm"


def _register_all(
    volumes: Mapping[str, InputVolume], reference: str, notes: list[GridNote]
) -> dict[str, np.ndarray]:
    transforms: dict[str, np.ndarray] = {}
    for modality, volume in volumes.items():
        if modality == reference:
            continue
        start = time.perf_counter()
        transforms[modality] = rigid_refinement(volumes[reference], volume)
        detail = (
            f"{modality} onto {reference}: {_describe_transform(transforms[modality], volumes[reference])}"
        )
        notes.append(GridNote("rigid refinement", detail, time.perf_counter() - start))
    return transforms


def to_reference_grid(
    volumes: Mapping[str, InputVolume],
    *,
    case_id: str,
    reference: str | None = None,
    register: bool = False,
    notes: list[GridNote] | None = None,
    unregistered: dict[str, np.ndarray] | None = None,
) -> Case:
    """A Case on the reference volume's grid from volumes keyed by modality (MODALITIES names; any subset):
    ``available`` lists those given, the other channels are zeros, ``affine`` is the reference's, and
    ``source_paths`` holds the reference's files first, then the others'.

    ``unregistered``: with ``register``, filled with each refined series resampled as the scanner's
    positions put it (case axes, float32), so a user can compare before and after the refinement."""
    unknown = sorted(set(volumes) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; use {MODALITIES}")
    notes = notes if notes is not None else []
    given = [m for m in MODALITIES if m in volumes]
    ref_name = choose_reference(given, reference)
    ref = volumes[ref_name]
    shape = tuple(int(s) for s in ref.data.shape)
    transforms = _register_all(volumes, ref_name, notes) if register else {}
    image = np.zeros((len(MODALITIES), shape[2], shape[0], shape[1]), dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        if modality not in volumes:
            continue
        start = time.perf_counter()
        volume = volumes[modality]
        if modality == ref_name:
            data = volume.data.astype(np.float32, copy=False)
            detail = (
                f"{modality} ({volume.source or 'reference'}) is the reference: {_grid(shape, ref.affine)}"
            )
        else:
            data = resample_volume(volume, shape, ref.affine, world_transform=transforms.get(modality))
            if unregistered is not None and modality in transforms:
                unregistered[modality] = nifti_to_case_axes(resample_volume(volume, shape, ref.affine))
            detail = (
                f"{modality} {_grid(volume.data.shape, volume.affine)} -> {_grid(shape, ref.affine)}, linear"
            )
        image[channel] = nifti_to_case_axes(data)
        notes.append(GridNote("reference grid", detail, time.perf_counter() - start))
    spacing = _spacing(ref.affine)
    paths = ref.paths + tuple(p for m in given if m != ref_name for p in volumes[m].paths)
    return Case(
        case_id=case_id,
        image=image,
        affine=np.asarray(ref.affine, dtype=np.float64),
        spacing=(float(spacing[2]), float(spacing[0]), float(spacing[1])),
        source_paths=paths,
        available=tuple(given),
    )


def _grid(shape: Sequence[int], affine: np.ndarray) -> str:
    spacing = _spacing(affine)
    return "x".join(str(int(s)) for s in shape) + " at " + " x ".join(f"{s:.2f}" for s in spacing) + " mm"


# ------------------------------------------------------------------------------------ model grid


def _in_plane_turn(affine: np.ndarray) -> np.ndarray | None:
    """The nibabel orientation transform that gives MODEL_ORIENTATION while keeping the slice axis k in
    place (a flip of k allowed); None when the slices are not axial (k is not closest to S/I)."""
    current = ornt.io_orientation(affine)
    if int(current[2, 0]) != 2:  # world axis 2 (S/I) does not run along voxel axis k: not an axial stack
        return None
    return ornt.ornt_transform(current, ornt.axcodes2ornt(MODEL_ORIENTATION))


@dataclass(frozen=True)
class _InPlane:
    """Resampling each slice from ``size`` to ``new_size`` voxels over the same field of view."""

    size: tuple[int, int]
    new_size: tuple[int, int]

    @property
    def ratio(self) -> np.ndarray:  # old voxels per new voxel along i and j
        return np.array([self.size[0] / self.new_size[0], self.size[1] / self.new_size[1]])

    def forward(self, data: np.ndarray) -> np.ndarray:
        if self.size == self.new_size:
            return data.copy()
        ratio = self.ratio
        sigma = [max(0.0, (ratio[0] - 1) / 2), max(0.0, (ratio[1] - 1) / 2), 0.0]
        if max(sigma) > 0.05:
            data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest")
        matrix = np.array([ratio[0], ratio[1], 1.0])
        offset = np.array([(ratio[0] - 1) / 2, (ratio[1] - 1) / 2, 0.0])
        shape = (*self.new_size, data.shape[2])
        return ndimage.affine_transform(
            data, matrix, offset=offset, output_shape=shape, order=1, mode="nearest"
        )

    def backward(self, label: np.ndarray) -> np.ndarray:
        if self.size == self.new_size:
            return label.copy()
        ratio = self.ratio
        matrix = np.array([1 / ratio[0], 1 / ratio[1], 1.0])
        offset = np.array([(1 / ratio[0] - 1) / 2, (1 / ratio[1] - 1) / 2, 0.0])
        shape = (*self.size, label.shape[2])
        return ndimage.affine_transform(
            label, matrix, offset=offset, output_shape=shape, order=0, mode="nearest"
        )

    def affine(self, affine: np.ndarray) -> np.ndarray:
        scale = np.diag([self.ratio[0], self.ratio[1], 1.0, 1.0])
        scale[:2, 3] = (self.ratio - 1) / 2  # voxel centres move so that the field of view stays the same
        return affine @ scale


def _turned(case: Case, notes: list[GridNote]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The case's available channels in NIfTI axes, turned to the model orientation when axial."""
    start = time.perf_counter()
    turn = _in_plane_turn(case.affine)
    data = np.stack([case_to_nifti_axes(case.image[c]) for c in range(case.image.shape[0])], axis=-1)
    affine = np.asarray(case.affine, dtype=np.float64)
    before = "".join(nib.aff2axcodes(affine))
    if turn is None:
        detail = (
            f"slices are not axial ({before}); the model was trained on axial slices, results are unreliable"
        )
    else:
        data = ornt.apply_orientation(data, turn)
        nifti_shape = (case.image.shape[2], case.image.shape[3], case.image.shape[1])
        affine = affine @ ornt.inv_ornt_aff(turn, nifti_shape)
        detail = f"{before} -> {''.join(MODEL_ORIENTATION)} (flips/transposes only, no interpolation)"
    notes.append(GridNote("orientation", detail, time.perf_counter() - start))
    return data, affine, turn


def to_model_grid(
    case: Case, *, spacing_mm: float = 1.0, notes: list[GridNote] | None = None
) -> tuple[Case, BackToReference]:
    """``case`` with slices in the model's orientation and ~``spacing_mm`` in-plane (native slices kept),
    and ``back(label)`` mapping a (D, H, W) label volume on that grid to ``case``'s grid (nearest)."""
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    notes = notes if notes is not None else []
    data, affine, turn = _turned(case, notes)
    start = time.perf_counter()
    spacing = _spacing(affine)
    size = (int(data.shape[0]), int(data.shape[1]))
    new_size = tuple(max(1, round(n * s / spacing_mm)) for n, s in zip(size, spacing[:2], strict=True))
    plane = _InPlane(size, new_size)  # type: ignore[arg-type]
    channels = [
        plane.forward(data[..., c]) if MODALITIES[c] in case.available else None
        for c in range(data.shape[-1])
    ]
    shape = (*plane.new_size, data.shape[2])
    image = np.zeros((len(MODALITIES), shape[2], shape[0], shape[1]), dtype=np.float32)
    for c, channel in enumerate(channels):
        if channel is not None:
            image[c] = nifti_to_case_axes(channel)
    new_affine = plane.affine(affine)
    new_spacing = _spacing(new_affine)
    detail = f"{_grid(data.shape[:3], affine)} -> {_grid(shape, new_affine)}, linear, slices kept"
    notes.append(GridNote("model grid", detail, time.perf_counter() - start))
    model_case = Case(
        case_id=case.case_id,
        image=image,
        affine=new_affine,
        spacing=(float(new_spacing[2]), float(new_spacing[0]), float(new_spacing[1])),
        source_paths=case.source_paths,
        available=case.available,
    )
    return model_case, _back(plane, turn, case.shape)


def _back(plane: _InPlane, turn: np.ndarray | None, reference_shape: tuple[int, int, int]) -> BackToReference:
    def back(label: np.ndarray) -> np.ndarray:
        label = np.asarray(label)
        expected = (reference_shape[0], *plane.new_size)
        if label.shape != expected:
            raise ValueError(f"label shape {label.shape} is not the model grid's (D, H, W) {expected}")
        volume = plane.backward(case_to_nifti_axes(label))
        if turn is not None:
            volume = ornt.apply_orientation(volume, _inverse(turn))
        out = np.ascontiguousarray(nifti_to_case_axes(volume))
        if out.shape != reference_shape:
            raise AssertionError(f"back to the reference grid gave {out.shape}, expected {reference_shape}")
        return out

    return back


def _inverse(turn: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``turn`` (an axis permutation with flips)."""
    inverse = np.zeros_like(turn)
    for source, (target, flip) in enumerate(turn):
        inverse[int(target)] = (source, flip)
    return inverse
