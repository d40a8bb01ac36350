"""What a file really is, from its first bytes, whatever its name says; and readers for the odd ones.

Uploads arrive named ``scan.nii.gz.gz`` (a gzipped .nii.gz), ``image`` (a DICOM file without extension) or
``case.zip`` that is really a gzip. :func:`sniff` looks at magic bytes only (it never trusts the name):

- ``nifti``: a NIfTI-1 or NIfTI-2 header (sizeof_hdr 348 / 540 and the ``n+1``/``ni1``/``n+2`` magic),
  possibly behind up to :data:`MAX_GZIP_LAYERS` gzip layers (``.nii.gz.gz`` is two layers);
- ``dicom``: ``DICM`` at offset 128, or a preamble-less implicit-VR file starting with a group 0008 tag;
- ``nrrd`` (``NRRD000``), ``hdf5`` (its signature at offset 0 or 512), ``zip`` (``PK\\x03\\x04``);
- ``gzip`` for a gzip that holds none of the above, ``unknown`` otherwise, ``folder`` for a folder.

:func:`open_any_nifti` reads such a NIfTI however many gzip layers it hides behind, holding the decompressed
size to a bound (a small file cannot inflate without limit), and :func:`read_nrrd` reads an NRRD through
SimpleITK. Both return a :class:`VolumeData` (voxels in NIfTI (i, j, k) order + RAS+ affine); every file is
opened through :class:`~medvision.confinement.Confinement` like the other readers.
"""

from __future__ import annotations

import gzip
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medvision.confinement import Confinement
from medvision.errors import InputDataError

__all__ = ["KINDS", "VolumeData", "open_any_nifti", "read_any_volume", "read_nrrd", "sniff", "sniff_bytes"]

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("nifti", "dicom", "nrrd", "hdf5", "zip", "gzip", "folder", "unknown")
# ``.nii.gz.gz`` is two layers; nobody gzips three times on purpose, and a bound stops gzip quines.
MAX_GZIP_LAYERS: int = 3
# Bytes needed to tell every kind apart: the DICOM preamble + magic (132) and a NIfTI-1 header (348).
HEAD_BYTES: int = 1024
# A 512^3 float32 volume is 512 MiB; a decompressed NIfTI larger than this is refused unread.
DEFAULT_MAX_NIFTI_BYTES: int = 4 * 512**3 + (1 << 20)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"


def _looks_nifti(head: bytes) -> bool:
    if len(head) >= 348:
        for order in ("<", ">"):
            if struct.unpack(order + "i", head[:4])[0] == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
                return True
    if len(head) >= 12:
        for order in ("<", ">"):
            if struct.unpack(order + "i", head[:4])[0] == 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
                return True
    return False


def _looks_preambleless_dicom(head: bytes) -> bool:
    """An implicit-VR little-endian data set starts with a (0008,xxxx) tag and a sane length; a file meta
    group (0002,xxxx) with an explicit VR means a DICOM file whose preamble was stripped."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group == 0x0002 and head[4:6].isalpha():
        return True
    if group != 0x0008 or element > 0x0020:  # the first elements of a data set are (0008,0005)..(0008,0018)
        return False
    (length,) = struct.unpack("<I", head[4:8])
    return 0 < length < 256 or head[4:6] in (b"CS", b"UI", b"DA", b"TM", b"SH", b"LO")


def sniff_bytes(head: bytes) -> str:
    """The kind (see the module docstring) of data starting with ``head``; gzip layers are not opened."""
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if _looks_nifti(head):
        return "nifti"
    if head[128:132] == b"DICM" or _looks_preambleless_dicom(head):
        return "dicom"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head[:8] == _HDF5_SIGNATURE or head[512:520] == _HDF5_SIGNATURE:
        return "hdf5"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return "unknown"


def _gunzip_head(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes of gzip ``data`` (a damaged stream yields what could be decoded)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return inflater.decompress(data, size)
    except zlib.error:
        return b""


def sniff(path: str | Path, *, within: Confinement | None = None) -> str:
    """What ``path`` holds, from its magic bytes (gzip layers looked through): one of :data:`KINDS`.

    ``within``: the allowed folders (default: around ``path``); a path leading outside them is refused.
    A file that cannot be opened is an InputDataError naming it.
    """
    path = Path(path)
    (within or Confinement.around(path)).check(path)
    if path.is_dir():
        return "folder"
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES * 64)  # enough compressed bytes to inflate three small heads
    except OSError as exc:
        raise InputDataError(path, f"cannot be opened: {exc.strerror or exc}") from exc
    for layer in range(MAX_GZIP_LAYERS + 1):
        kind = sniff_bytes(head)
        if kind != "gzip":
            return "gzip" if kind == "unknown" and layer > 0 else kind
        inner = _gunzip_head(head, HEAD_BYTES * 16)
        if not inner:
            return "gzip"
        head = inner
    return "gzip"


@dataclass(frozen=True)
class VolumeData:
    """One 3-D volume read from a single file: voxels in NIfTI (i, j, k) order and their RAS+ affine."""

    path: Path
    data: np.ndarray  # (i, j, k) float32
    affine: np.ndarray  # (4, 4) float64, voxel (i, j, k) -> RAS+ mm
    qform_code: int = 1
    sform_code: int = 1


def _gunzip_bounded(data: bytes, most: int, path: Path) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, most + 1)
    except zlib.error as exc:
        raise InputDataError(path, f"damaged gzip data: {exc}") from exc
    if len(out) > most:
        raise InputDataError(path, f"decompresses to more than {most:,} bytes; refusing to read it")
    if not inflater.eof:
        raise InputDataError(path, "truncated gzip data (the stream ends early)")
    return out


def _nifti_bytes(path: Path, most: int) -> bytes:
    """The file's bytes with every gzip layer removed, each layer bounded by ``most``."""
    size = path.stat().st_size
    if size > most:
        raise InputDataError(path, f"file of {size:,} bytes is larger than the limit of {most:,}")
    data = path.read_bytes()
    for _layer in range(MAX_GZIP_LAYERS):
        if data[:2] != _GZIP_MAGIC:
            return data
        data = _gunzip_bounded(data, most, path)
    if data[:2] == _GZIP_MAGIC:
        raise InputDataError(path, f"more than {MAX_GZIP_LAYERS} gzip layers; not a NIfTI as people write it")
    return data


def open_any_nifti(
    path: str | Path, *, within: Confinement | None = None, max_bytes: int = DEFAULT_MAX_NIFTI_BYTES
) -> VolumeData:
    """A single 3-D NIfTI file whatever its name (``x.nii.gz.gz``, ``x.gz``, ``x``): gzip layers are removed
    in memory (each bounded by ``max_bytes``) and nibabel reads the header and voxels from the bytes.

    Raises InputDataError naming the file when it is not a NIfTI, too large, damaged, or not 3-D.
    """
    path = Path(path)
    (within or Confinement.around(path)).check(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    raw = _nifti_bytes(path, max_bytes)
    if not _looks_nifti(raw[:HEAD_BYTES]):
        raise InputDataError(
            path, f"not a NIfTI file (its content looks like: {sniff_bytes(raw[:HEAD_BYTES])})"
        )
    klass = nib.Nifti2Image if struct.unpack("<i", raw[:4])[0] in (540, 469893120) else nib.Nifti1Image
    try:
        image = klass.from_bytes(raw)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (ValueError, EOFError, OSError, struct.error, nib.filebasedimages.ImageFileError) as exc:
        raise InputDataError(path, f"not a readable NIfTI (corrupt or truncated): {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(path, f"expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputDataError(path, "contains non-finite voxel values (NaN or Inf)")
    header = image.header
    return VolumeData(
        path, data, np.asarray(image.affine, np.float64), int(header["qform_code"]), int(header["sform_code"])
    )


def read_nrrd(path: str | Path, *, within: Confinement | None = None, max_voxels: int = 512**3) -> VolumeData:
    """A 3-D scalar NRRD (``.nrrd`` or ``.nhdr``) through SimpleITK, which converts any NRRD ``space`` to LPS;
    the size is checked from the header before any voxel is read."""
    import SimpleITK as sitk

    path = Path(path)
    (within or Confinement.around(path)).check(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        if len(size) != 3 or reader.GetNumberOfComponents() != 1:
            raise InputDataError(path, f"expected a 3-D scalar volume, got size {size}")
        if int(np.prod(size)) > max_voxels:
            raise InputDataError(path, f"header claims {size} voxels, more than the limit of {max_voxels:,}")
        image = reader.Execute()
    except RuntimeError as exc:  # SimpleITK reports every read failure as RuntimeError
        raise InputDataError(path, f"not a readable NRRD file: {str(exc).splitlines()[-1]}") from exc
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    return VolumeData(path, data, sitk_affine_ras(image))


def read_any_volume(path: str | Path, *, within: Confinement | None = None) -> VolumeData:
    """A single 3-D volume, NIfTI (any gzip layers, any name) or NRRD, told apart by its content."""
    kind = sniff(path, within=within)
    if kind == "nifti":
        return open_any_nifti(path, within=within)
    if kind == "nrrd":
        return read_nrrd(path, within=within)
    raise InputDataError(path, f"not a NIfTI or NRRD volume (its content looks like: {kind})")


def sitk_affine_ras(image: object) -> np.ndarray:
    """The RAS+ voxel (i, j, k) -> mm affine of a 3-D SimpleITK image (ITK works in LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)  # type: ignore[attr-defined]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)  # type: ignore[attr-defined]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = image.GetOrigin()  # type: ignore[attr-defined]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped (in memory); used to make the ``.nii.gz.gz`` files seen in the wild."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(data)
    return buffer.getvalue()
