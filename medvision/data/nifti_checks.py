"""Careful NIfTI reading: validate the header before touching the data, wrap every failure.

Readers of whole cases (BraTS folders, Decathlon files, uploads) all go through ``open_nifti`` (header
only, cheap) and ``read_nifti_data`` (the voxels), so every malformed file is refused the same way: one
``InputDataError`` naming the file and the problem, never a nibabel/zlib traceback and never a
multi-gigabyte allocation because a header lies about its size. ``open_nifti`` takes the allowed folders
(a :class:`~medvision.confinement.Confinement`) and opens nothing whose real path lies outside them, and
``check_case_voxels`` holds a whole case to a voxel budget, from the headers, before any voxel is read.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medvision.confinement import Confinement
from medvision.errors import InputDataError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
# A BraTS volume is 240x240x155 (8.9 M voxels); 512^3 per volume (x4 channels for a 4-D file) leaves room
# for any real MRI while refusing headers that would make us allocate tens of gigabytes.
MAX_SPATIAL_VOXELS: int = 512**3
MAX_TOTAL_VOXELS: int = 4 * 512**3
# Decoded image voxels per case, all modalities together. A BraTS case is 4 x 240 x 240 x 155 = 35.7 M voxels
# (143 MB as the float32 case image); 4 x 256^3 = 67.1 M (268 MB) leaves 1.9x room for a larger field of view,
# while four 512 x 512 x 384 volumes (403 M voxels, 1.6 GB, from a zip of under 1 MB) are refused.
DEFAULT_CASE_VOXEL_BUDGET: int = 4 * 256**3
# Affines of co-registered modalities are equal up to float rounding in the header.
AFFINE_TOLERANCE: float = 1e-3
# Deflate cannot expand data more than ~1032:1, so a .nii.gz cannot hold more than this many bytes per byte.
MAX_DEFLATE_RATIO: int = 1100

# Everything nibabel, gzip, zlib and the OS raise for damaged or foreign files.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
    TypeError,
)


@dataclass(frozen=True)
class NiftiVolume:
    """A NIfTI file whose header passed every check; ``read_nifti_data`` reads its voxels."""

    path: Path
    image: nib.Nifti1Image  # proxy image: header parsed, data not read
    shape: tuple[int, ...]  # validated shape (trailing singleton dimensions beyond ``ndim`` dropped)
    dtype: np.dtype
    affine: np.ndarray
    zooms: tuple[float, float, float]  # voxel size along NIfTI (i, j, k) in mm

    @property
    def spacing_dhw(self) -> tuple[float, float, float]:
        """Voxel size along MedVision (D, H, W) = NIfTI (k, i, j)."""
        zi, zj, zk = self.zooms
        return (zk, zi, zj)


def has_nifti_suffix(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(name: str) -> str:
    """File name without its .nii / .nii.gz suffix."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_nifti(path: str | Path, *, ndim: int, within: Confinement) -> NiftiVolume:
    """Parse and validate a NIfTI header (no voxel data is read).

    ``ndim`` is the expected number of dimensions (3 for a modality or label, 4 for a Decathlon image);
    extra trailing dimensions of length 1 (``(X, Y, Z, 1)``, written by some tools) are accepted.
    ``within``: the allowed folders; a path leading outside them (a symbolic link) is refused unread.
    """
    path = Path(path)
    if not has_nifti_suffix(path.name):
        raise InputDataError(path, f"wrong extension: expected a .nii or .nii.gz file, got {path.name!r}")
    within.check(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputDataError(path, "file is empty (0 bytes)")
    try:
        # mmap=False: read through plain file handles so nothing keeps the source (or a temp dir) open.
        image = _load_quietly(path)
    except _READ_ERRORS as exc:
        raise InputDataError(path, f"not a readable NIfTI file (corrupt or truncated): {exc}") from exc
    if not isinstance(image, nib.Nifti1Image):
        raise InputDataError(path, f"not a NIfTI-1/2 image (nibabel read it as {type(image).__name__})")

    shape = _validated_shape(path, tuple(int(s) for s in image.shape), ndim)
    dtype = _validated_dtype(path, image)
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputDataError(path, "header affine is missing or not finite")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputDataError(path, f"voxel sizes {zooms} must be three positive finite numbers")
    # nibabel silently repairs a zero pixdim to 1 while loading; the affine still has the true spacing.
    if int(image.header["sform_code"]) > 0 or int(image.header["qform_code"]) > 0:
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if not np.allclose(zooms, norms, rtol=1e-3, atol=1e-4):
            spacing = tuple(float(n) for n in norms)
            problem = f"voxel sizes {zooms} in the header disagree with the affine {spacing}"
            raise InputDataError(path, problem)
    _check_size_against_file(path, image, shape, dtype)
    return NiftiVolume(path, image, shape, dtype, affine, zooms)  # type: ignore[arg-type]


def check_case_voxels(volumes: Sequence[NiftiVolume], budget: int, where: str | Path) -> None:
    """Refuse a case whose image volumes decode to more than ``budget`` voxels, from their headers only."""
    if budget <= 0:
        raise ValueError(f"the voxel budget must be positive, got {budget}")
    total = sum(int(np.prod(v.shape, dtype=np.int64)) for v in volumes)
    if total > budget:
        shapes = ", ".join(f"{v.path.name} {v.shape}" for v in volumes[:4])
        raise InputDataError(
            where,
            f"the case would decode to {total:,} voxels ({shapes}), more than the limit of {budget:,} "
            f"voxels per case ({budget * 4 / 1e6:,.0f} MB as float32); a BraTS case has 35,712,000",
        )


def _load_quietly(path: Path) -> nib.Nifti1Image:
    """nib.load without nibabel's header-repair log lines ('nibabel.global' has its own stderr handler and
    also propagates to the root logger): the problems it refuses come back in the exception anyway."""
    nib_log = logging.getLogger("nibabel.global")
    previous, nib_log.disabled = nib_log.disabled, True
    try:
        return nib.load(path, mmap=False)
    finally:
        nib_log.disabled = previous


def _check_size_against_file(
    path: Path, image: nib.Nifti1Image, shape: tuple[int, ...], dtype: np.dtype
) -> None:
    """Refuse a header claiming more voxel bytes than the file can hold, before anything is allocated."""
    needed = int(image.header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    most = size * MAX_DEFLATE_RATIO if compressed else size
    if needed > most:
        raise InputDataError(
            path,
            f"corrupt or truncated file: the header claims {needed:,} bytes of voxel data but the file "
            f"holds only {size:,}{' compressed' if compressed else ''} bytes",
        )


def _gunzip_checked(volume: NiftiVolume) -> bytes:
    """The whole decompressed file, inflated to its end so that zlib checks the CRC-32 and length in each
    member's trailer (nibabel stops at the end of the voxel data and never checks them), bounded by what
    the header describes so a small file cannot inflate without limit.

    One zlib call per gzip member, which releases the GIL for the whole file: the modalities of a case
    can be inflated on two cores at once (see readers._assemble_case)."""
    most = int(volume.image.header.get_data_offset()) + int(np.prod(volume.shape)) * volume.dtype.itemsize
    room = most + (1 << 20)
    try:
        rest = volume.path.read_bytes()
        parts: list[bytes] = []
        while rest:
            inflater = zlib.decompressobj(wbits=31)  # 31: a gzip member, header and trailer checked
            part = inflater.decompress(rest, room + 1)
            room -= len(part)
            if room < 0:
                raise InputDataError(volume.path, "holds far more data than its header describes")
            if not inflater.eof:
                raise zlib.error("the compressed stream ends before its trailer")
            parts.append(part)
            rest = inflater.unused_data.lstrip(b"\x00")  # gzip allows zero padding after a member
    except (OSError, EOFError, zlib.error) as exc:
        problem = f"cannot read voxel data (corrupt or truncated file): gzip check failed: {exc}"
        raise InputDataError(volume.path, problem) from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _validated_shape(path: Path, shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    kept = shape
    while len(kept) > ndim and kept[-1] == 1:
        kept = kept[:-1]
    if len(kept) != ndim:
        raise InputDataError(path, f"expected a {ndim}-D image, got {len(shape)}-D shape {shape}")
    if any(s <= 0 for s in kept):
        raise InputDataError(path, f"header shape {shape} has an empty dimension")
    spatial = int(np.prod(kept[:3], dtype=np.int64))
    total = int(np.prod(kept, dtype=np.int64))
    if spatial > MAX_SPATIAL_VOXELS or total > MAX_TOTAL_VOXELS:
        raise InputDataError(
            path,
            f"header claims an implausible size {shape} ({total:,} voxels); refusing to read it "
            f"(limit {MAX_SPATIAL_VOXELS:,} voxels per volume)",
        )
    return kept


def _validated_dtype(path: Path, image: nib.Nifti1Image) -> np.dtype:
    try:
        dtype = np.dtype(image.get_data_dtype())
    except _READ_ERRORS as exc:
        raise InputDataError(path, f"unsupported NIfTI data type: {exc}") from exc
    if dtype.kind == "c":
        raise InputDataError(path, f"complex data ({dtype}) is not an MRI intensity volume")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputDataError(
            path, f"unsupported data type {dtype} (RGB or structured voxels); expected scalar voxels"
        )
    return dtype


def read_nifti_data(volume: NiftiVolume) -> np.ndarray:
    """Read the voxels of a validated NIfTI (scaling applied), in NIfTI (i, j, k[, c]) axis order."""
    try:
        if volume.path.name.lower().endswith(".gz"):
            # Decompress once (checking the gzip trailer on the way), then let nibabel read the voxels from
            # memory: reading through the proxy and checking the trailer separately inflated every file twice.
            raw = _gunzip_checked(volume)
            nib_log = logging.getLogger("nibabel.global")  # header repairs were reported when it was opened
            previous, nib_log.disabled = nib_log.disabled, True
            try:
                image = type(volume.image).from_bytes(raw)
            finally:
                nib_log.disabled = previous
            data = np.asarray(image.dataobj)
        else:
            data = np.asarray(volume.image.dataobj)
    except MemoryError as exc:
        raise InputDataError(volume.path, f"not enough memory to read shape {volume.shape}") from exc
    except _READ_ERRORS as exc:
        problem = f"cannot read voxel data (corrupt or truncated file): {exc}"
        raise InputDataError(volume.path, problem) from exc
    if data.shape != volume.shape:
        data = data.reshape(volume.shape)  # only drops the trailing singleton dimensions checked above
    return data


def check_finite(data: np.ndarray, path: str | Path) -> None:
    """Refuse NaN / Inf voxels (integer data cannot hold them, so it is not scanned)."""
    if data.dtype.kind != "f":
        return
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputDataError(path, f"contains {bad:,} non-finite voxel values (NaN or Inf)")


def check_not_empty(data: np.ndarray, path: str | Path) -> None:
    """Refuse an image whose voxels are all zero: an empty scan (a failed export or conversion)."""
    if not np.any(data):
        raise InputDataError(path, "all voxels are zero (an empty scan: a failed export or conversion?)")


def check_same_grid(volume: NiftiVolume, reference: NiftiVolume, *, spatial_only: bool = False) -> None:
    """Refuse a modality or label whose shape or affine differs from the reference volume's."""
    shape, ref_shape = volume.shape, reference.shape
    if spatial_only:
        shape, ref_shape = shape[:3], ref_shape[:3]
    if shape != ref_shape:
        raise InputDataError(
            volume.path, f"shape {shape} differs from {reference.path.name} shape {ref_shape}"
        )
    if not np.allclose(volume.affine, reference.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        ours = np.array2string(volume.affine, precision=3)
        theirs = np.array2string(reference.affine, precision=3)
        raise InputDataError(
            volume.path,
            f"affine differs from {reference.path.name} (the images are not on the same voxel grid):\n"
            f"{ours}\nvs\n{theirs}",
        )


def _distinct_values(data: np.ndarray) -> np.ndarray:
    """np.unique for label volumes, sorted. Most voxels of a label volume are background (0), so only the
    non-zero voxels are sorted or counted: on a 240x240x155 BraTS label this is about 50x faster than
    counting all 9 million voxels, and far faster than sorting them."""
    flat = data.ravel(order="K")
    nonzero = flat[flat != 0]
    if (
        nonzero.dtype.kind in "ui"
        and nonzero.size
        and int(nonzero.min()) >= 0
        and int(nonzero.max()) < 1 << 16
    ):
        values = np.flatnonzero(np.bincount(nonzero)).astype(data.dtype)
    else:
        values = np.unique(nonzero)
    if nonzero.size < flat.size:  # some voxels are 0: add it where it sorts (before any positive value)
        values = np.sort(np.concatenate([np.zeros(1, dtype=data.dtype), values]))
    return values


def labels_to_brats(data: np.ndarray, path: str | Path, mapping: dict[int, int]) -> np.ndarray:
    """Map raw label values to BraTS labels (uint8) with ``mapping``; refuse values it does not know."""
    check_finite(data, path)
    values = _distinct_values(data)
    if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        fractional = values[values != np.round(values)][:5]
        raise InputDataError(path, f"label values must be integers, found {fractional}")
    unknown = [v for v in values.tolist() if int(v) not in mapping]
    if unknown:
        allowed = ", ".join(str(k) for k in sorted(mapping))
        raise InputDataError(path, f"unknown label values {unknown[:10]} (allowed: {allowed})")
    lut = np.zeros(256, dtype=np.uint8)
    for raw, brats in mapping.items():
        lut[raw] = brats
    return lut[data.astype(np.uint8, copy=False)]
