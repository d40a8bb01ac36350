"""A corpus of broken inputs, generated at test time from small volumes, for the reliability tests.

``build_corpus(root)`` writes every kind of broken input under ``root`` (one sub-folder per kind) and
returns them as ``BrokenInput`` records: the path a user would hand to MedVision (a case folder, a .zip,
a 4-D NIfTI, a Kaggle slice folder, some other file, or a path that does not exist), the substring the
error message must contain, the file name the message must name, and the files a user would upload on
the Predict page for the same problem. ``SPECS`` lists the kinds without writing anything, so tests can
be parametrised at collection time. ``write_valid_case`` writes the healthy control case the broken ones
are derived from (NIfTI shape 16x16x8, i.e. Case shape (8, 16, 16)).

Entry points (the names used by ``BrokenInput.findings`` and by tests/test_bad_inputs.py):
``load_case``, ``reader`` (the format's own reader: read_nifti_files / read_zip / read_decathlon /
KaggleH5Index), ``prepare`` (prepare_store), ``predict`` (the CLI) and ``upload`` (the Predict page's
case_from_uploads).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

CASE_ID = "Case_001"
SHAPE = (16, 16, 8)  # NIfTI (i, j, k) -> Case (D, H, W) = (8, 16, 16)
ZOOMS = (1.0, 1.0, 1.5)
AFFINE = np.array([[-1.0, 0, 0, 15.0], [0, -1.0, 0, 15.0], [0, 0, 1.5, -6.0], [0, 0, 0, 1]], dtype=np.float64)
MODALITY_NAMES = ("flair", "t1", "t1ce", "t2")
ENTRY_POINTS = ("load_case", "reader", "prepare", "predict", "upload")
# safe_zip refuses more than this many uncompressed bytes by default; the honest bomb inflates past it.
ZIP_LIMIT = 2_000_000_000


@dataclass(frozen=True)
class BrokenInput:
    """One broken input and what MedVision must say about it."""

    name: str  # the kind of damage, e.g. "truncated_gzip"
    path: Path  # what a user hands over (file or folder; may not exist)
    kind: str  # "case_folder" | "nifti4d" | "zip" | "kaggle" | "file" | "folder" | "missing"
    expected: str  # lower-case substring the error message must contain
    blame: str  # the file (or folder) name the message must contain
    uploads: tuple[Path, ...] = ()  # the files a user would upload for the same problem (empty: n/a)
    upload_expected: str | None = None  # when the upload path says it differently (None: ``expected``)
    upload_blame: str | None = None  # when the upload path names another file (None: ``blame``)
    memory: bool = False  # claims a huge allocation: must be refused under a 2 GiB address-space limit
    skip: tuple[str, ...] = ()  # entry points that do not apply to this input
    findings: dict[str, str] = field(default_factory=dict)  # entry point -> known bug (test is xfail)


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[Path], BrokenInput]
    memory: bool
    findings: dict[str, str]


SPECS: list[Spec] = []


def _spec(*, memory: bool = False, findings: dict[str, str] | None = None):
    def register(build: Callable[[Path], BrokenInput]) -> Callable[[Path], BrokenInput]:
        SPECS.append(Spec(build.__name__.lstrip("_"), build, memory, dict(findings or {})))
        return build

    return register


def build_corpus(root: Path) -> list[BrokenInput]:
    """Write every broken input under ``root`` (``root/<name>/...``) and return them in SPECS order."""
    items = []
    for spec in SPECS:
        folder = Path(root) / spec.name
        folder.mkdir(parents=True, exist_ok=False)
        item = spec.build(folder)
        assert item.name == spec.name and item.memory == spec.memory, spec.name
        items.append(BrokenInput(**{**item.__dict__, "findings": dict(spec.findings)}))
    return items


# ---------------------------------------------------------------------------------------- volumes


def modality_volumes(seed: int = 0) -> dict[str, np.ndarray]:
    """Distinct non-zero int16 volumes per modality (the whole volume counts as brain)."""
    rng = np.random.default_rng(seed)
    return {
        m: (rng.integers(50, 1000, SHAPE) + 1000 * i).astype(np.int16) for i, m in enumerate(MODALITY_NAMES)
    }


def label_volume(values: tuple[int, ...] = (0, 1, 2, 4), seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:12, 4:12, 2:6] = rng.choice(np.array(values, dtype=np.uint8), (8, 8, 4))
    return label


def nifti_bytes(
    array: np.ndarray, affine: np.ndarray = AFFINE, *, compress: bool = True, nifti2: bool = False
) -> bytes:
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    raw = image_class(array, affine).to_bytes()
    return gzip.compress(raw, mtime=0) if compress else raw


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.write_bytes(nifti_bytes(array, affine, compress=path.name.endswith(".gz")))
    return path


def write_valid_case(
    folder: Path, *, case_id: str = CASE_ID, ext: str = ".nii.gz", label: bool = True
) -> dict[str, Path]:
    """A healthy BraTS 2021-named case folder; returns modality (and ``seg``) -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {m: save(v, folder / f"{case_id}_{m}{ext}") for m, v in modality_volumes().items()}
    if label:
        files["seg"] = save(label_volume(), folder / f"{case_id}_seg{ext}")
    return files


def _case(root: Path, **kwargs) -> tuple[Path, dict[str, Path]]:
    folder = root / CASE_ID
    return folder, write_valid_case(folder, **kwargs)


def _folder_item(name: str, folder: Path, expected: str, blame: str, **kwargs) -> BrokenInput:
    uploads = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    return BrokenInput(name, folder, "case_folder", expected, blame, uploads=uploads, **kwargs)


def digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (or of ``path`` itself): to check sources are never modified."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# ------------------------------------------------------------------------------------ byte damage


def truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def flip_bytes(path: Path, at: float = 0.5, count: int = 8) -> None:
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * at)
    raw[start : start + count] = bytes(b ^ 0xFF for b in raw[start : start + count])
    path.write_bytes(bytes(raw))


def png_bytes(size: int = 24, seed: int = 0) -> bytes:
    """A real (random-pixel, greyscale) PNG, made by hand so no imaging library is needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def header_only_nifti(
    shape: tuple[int, ...], dtype=np.float64, *, nifti2: bool = False, payload: int = 64
) -> bytes:
    """Gzipped NIfTI whose header claims ``shape`` but that holds only ``payload`` bytes of data."""
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    header = image_class(np.zeros((2, 2, 2), dtype), AFFINE).header.copy()
    header.set_data_shape(shape)
    offset = int(header.get_data_offset())
    raw = header.binaryblock
    raw += b"\0" * (offset - len(raw)) + b"\0" * payload
    return gzip.compress(raw, mtime=0)


# ---------------------------------------------------------------------------------------- zips


@dataclass(frozen=True)
class RawMember:
    """A zip member written byte by byte, so sizes, CRC, flags and modes can lie."""

    name: str
    data: bytes  # already compressed with ``method``
    crc: int
    file_size: int  # declared uncompressed size
    method: int = zipfile.ZIP_DEFLATED
    mode: int = stat.S_IFREG | 0o644
    flags: int = 0


def raw_member(name: str, payload: bytes, method: int = zipfile.ZIP_DEFLATED, **kwargs) -> RawMember:
    if method == zipfile.ZIP_DEFLATED:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = compressor.compress(payload) + compressor.flush()
    else:
        data = payload
    return RawMember(name, data, zlib.crc32(payload), len(payload), method, **kwargs)


def write_raw_zip(path: Path, members: list[RawMember]) -> Path:
    """A zip archive (local headers, data, central directory, end record) from ``members`` as given."""
    body, central = bytearray(), bytearray()
    for m in members:
        name = m.name.encode("utf-8")
        flags = m.flags | 0x800  # names are UTF-8
        offset = len(body)
        body += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,
            flags,
            m.method,
            0,
            0x21,
            m.crc,
            len(m.data),
            m.file_size,
            len(name),
            0,
        )
        body += name + m.data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            (3 << 8) | 20,
            20,
            flags,
            m.method,
            0,
            0x21,
            m.crc,
            len(m.data),
            m.file_size,
            len(name),
            0,
            0,
            0,
            0,
            (m.mode & 0xFFFF) << 16,
            offset,
        )
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def zip_folder(folder: Path, path: Path, *, prefix: str | None = None) -> Path:
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                rel = file.relative_to(folder).as_posix()
                archive.write(file, f"{prefix}/{rel}" if prefix else rel)
    return path


@functools.lru_cache(maxsize=2)
def _zeros_deflate(total: int) -> tuple[bytes, int]:
    """Raw deflate stream of ``total`` zero bytes (1 MiB blocks, each ~1 kB) and its CRC-32."""
    block = 1 << 20
    assert total % block == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor forgets its history, so every 1 MiB block compresses identically.
    piece = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = piece * (total // block) + compressor.flush(zlib.Z_FINISH)
    crc, zeros = 0, bytes(16 * block)
    for _ in range(total // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    for _ in range(total % len(zeros) // block):
        crc = zlib.crc32(zeros[:block], crc)
    return stream, crc


def _zip_item(name: str, path: Path, expected: str, blame: str | None = None, **kwargs) -> BrokenInput:
    return BrokenInput(name, path, "zip", expected, blame or path.name, uploads=(path,), **kwargs)


# =============================================================================== the corpus itself
# ------------------------------------------------------------------------ damaged NIfTI in a case


@_spec()
def _truncated_gzip(root: Path) -> BrokenInput:
    folder, files = _case(root)
    truncate(files["t2"])
    return _folder_item("truncated_gzip", folder, "truncated", files["t2"].name)


@_spec()
def _corrupt_gzip(root: Path) -> BrokenInput:
    folder, files = _case(root)
    raw = bytearray(files["t1ce"].read_bytes())
    raw[10] = 0xFF  # first deflate block header: BTYPE 11 is reserved, so zlib stops at once
    files["t1ce"].write_bytes(bytes(raw))
    return _folder_item("corrupt_gzip", folder, "corrupt", files["t1ce"].name)


@_spec()
def _corrupt_gzip_crc(root: Path) -> BrokenInput:
    """Damage that still inflates (to wrong voxels): only the gzip CRC-32 in the trailer can tell."""
    folder, files = _case(root)
    flip_bytes(files["t1ce"])
    return _folder_item("corrupt_gzip_crc", folder, "corrupt", files["t1ce"].name)


@_spec()
def _truncated_nii(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    truncate(files["t1"], 0.7)
    return _folder_item("truncated_nii", folder, "truncated", files["t1"].name)


@_spec()
def _truncated_in_header(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    files["flair"].write_bytes(files["flair"].read_bytes()[:200])
    return _folder_item("truncated_in_header", folder, "not a readable nifti", files["flair"].name)


@_spec()
def _plain_nifti_named_gz(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["t2"].write_bytes(gzip.decompress(files["t2"].read_bytes()))
    return _folder_item("plain_nifti_named_gz", folder, "not a readable nifti", files["t2"].name)


@_spec()
def _header_magic_corrupted(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    raw = bytearray(files["t1ce"].read_bytes())
    raw[344:348] = b"XYZ\0"  # NIfTI-1 magic is "n+1\0"
    files["t1ce"].write_bytes(bytes(raw))
    return _folder_item("header_magic_corrupted", folder, "not a readable nifti", files["t1ce"].name)


@_spec()
def _png_renamed_nii(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    files["t1"].write_bytes(png_bytes())
    return _folder_item("png_renamed_nii", folder, "not a readable nifti", files["t1"].name)


@_spec()
def _png_renamed_nii_gz(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["flair"].write_bytes(png_bytes(seed=1))
    return _folder_item("png_renamed_nii_gz", folder, "not a readable nifti", files["flair"].name)


@_spec()
def _wrong_extension_txt(root: Path) -> BrokenInput:
    folder, files = _case(root)
    renamed = files["flair"].with_name(f"{CASE_ID}_flair.txt")
    files["flair"].rename(renamed)
    return _folder_item(
        "wrong_extension_txt",
        folder,
        "wrong extension",
        renamed.name,
        upload_expected="unsupported file type",
    )


@_spec()
def _empty_file(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["t1ce"].write_bytes(b"")
    return _folder_item("empty_file", folder, "empty", files["t1ce"].name)


@_spec()
def _dimensionality_2d(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(modality_volumes()["t1"][:, :, 0], files["t1"])
    return _folder_item("dimensionality_2d", folder, "expected a 3-d image", files["t1"].name)


@_spec()
def _dimensionality_5d(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(np.ones((*SHAPE, 2, 3), np.int16), files["flair"])
    return _folder_item("dimensionality_5d", folder, "expected a 3-d image", files["flair"].name)


@_spec()
def _modality_4d(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(np.ones((*SHAPE, 4), np.int16), files["t2"])
    return _folder_item("modality_4d", folder, "expected a 3-d image", files["t2"].name)


@_spec()
def _nan_voxels(root: Path) -> BrokenInput:
    folder, files = _case(root)
    data = modality_volumes()["t1ce"].astype(np.float32)
    data[3, 4, 5] = np.nan
    save(data, files["t1ce"])
    return _folder_item("nan_voxels", folder, "non-finite", files["t1ce"].name)


@_spec()
def _inf_voxels(root: Path) -> BrokenInput:
    folder, files = _case(root)
    data = modality_volumes()["t2"].astype(np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.inf, -np.inf
    save(data, files["t2"])
    return _folder_item("inf_voxels", folder, "non-finite", files["t2"].name)


@_spec()
def _all_zero_modality(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(np.zeros(SHAPE, np.int16), files["flair"])
    return _folder_item("all_zero_modality", folder, "zero", files["flair"].name)


@_spec()
def _all_zero_case(root: Path) -> BrokenInput:
    folder, files = _case(root, label=False)
    for m in MODALITY_NAMES:
        save(np.zeros(SHAPE, np.int16), files[m])
    return _folder_item("all_zero_case", folder, "zero", f"{CASE_ID}_flair.nii.gz")


@_spec()
def _complex_dtype(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(modality_volumes()["t1"].astype(np.complex64), files["t1"])
    return _folder_item("complex_dtype", folder, "complex", files["t1"].name)


@_spec()
def _rgb_dtype(root: Path) -> BrokenInput:
    folder, files = _case(root)
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 7
    save(rgb, files["t2"])
    return _folder_item("rgb_dtype", folder, "rgb", files["t2"].name)


@_spec()
def _float128_dtype(root: Path) -> BrokenInput:
    """FLOAT128 (NIfTI datatype 1536): a real type on paper that nibabel cannot read."""
    folder, files = _case(root, ext=".nii")
    raw = bytearray(files["t1"].read_bytes())
    raw[70:72] = struct.pack("<h", 1536)  # datatype FLOAT128
    raw[72:74] = struct.pack("<h", 128)  # bitpix
    files["t1"].write_bytes(bytes(raw))
    return _folder_item("float128_dtype", folder, "not a readable nifti", files["t1"].name)


@_spec()
def _absurd_header_nifti2(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["t1"].write_bytes(header_only_nifti((100_000, 100_000, 100_000), nifti2=True))
    return _folder_item("absurd_header_nifti2", folder, "implausible size", files["t1"].name)


@_spec(memory=True)
def _absurd_header_nifti1(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["t2"].write_bytes(header_only_nifti((32767, 32767, 32767), np.int16))
    return _folder_item("absurd_header_nifti1", folder, "implausible size", files["t2"].name, memory=True)


@_spec(memory=True)
def _header_larger_than_file(root: Path) -> BrokenInput:
    """Within the 512^3 size limit, but the 66-byte files cannot hold 1 GiB of voxels each."""
    folder, files = _case(root, label=False)
    for m in MODALITY_NAMES:
        files[m].write_bytes(header_only_nifti((512, 512, 512), np.float64))
    return _folder_item("header_larger_than_file", folder, "truncated", files["flair"].name, memory=True)


@_spec()
def _zero_dimension(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    raw = bytearray(files["t1ce"].read_bytes())
    raw[42:44] = struct.pack("<h", 0)  # dim[1] = 0
    files["t1ce"].write_bytes(bytes(raw))
    return _folder_item("zero_dimension", folder, "empty dimension", files["t1ce"].name)


@_spec()
def _zero_voxel_size(root: Path) -> BrokenInput:
    folder, files = _case(root)
    image = nib.Nifti1Image(modality_volumes()["flair"], AFFINE)
    image.header["pixdim"][1:4] = [1.0, 1.0, 0.0]  # the affine says 1.5 mm between slices
    files["flair"].write_bytes(gzip.compress(image.to_bytes(), mtime=0))
    return _folder_item("zero_voxel_size", folder, "voxel size", files["flair"].name)


@_spec()
def _nonfinite_affine(root: Path) -> BrokenInput:
    folder, files = _case(root, ext=".nii")
    image = nib.Nifti1Image(modality_volumes()["flair"], AFFINE)
    raw = bytearray(image.to_bytes())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]
    raw[292:296] = struct.pack("<f", float("inf"))  # srow_y[0]
    files["flair"].write_bytes(bytes(raw))
    return _folder_item("nonfinite_affine", folder, "affine", files["flair"].name)


# ----------------------------------------------------------------------------- case consistency


@_spec()
def _modalities_different_shapes(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(modality_volumes()["t1"][:, :, :7], files["t1"])
    return _folder_item("modalities_different_shapes", folder, "shape", files["t1"].name)


@_spec()
def _modalities_different_affines(root: Path) -> BrokenInput:
    folder, files = _case(root)
    shifted = AFFINE.copy()
    shifted[:3, 3] += 5.0
    save(modality_volumes()["t2"], files["t2"], shifted)
    return _folder_item("modalities_different_affines", folder, "affine", files["t2"].name)


@_spec()
def _missing_modality(root: Path) -> BrokenInput:
    folder, files = _case(root)
    files["t1ce"].unlink()
    # An upload may hold any subset of the modalities (the model decides whether it can use it, see
    # tests/test_modality_subsets.py), so only the readers and a four-modality model refuse this case.
    return _folder_item("missing_modality", folder, "missing modality", CASE_ID, skip=("upload",))


@_spec()
def _duplicate_modality(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(modality_volumes()["flair"], folder / f"{CASE_ID}_flair.nii")
    return _folder_item(
        "duplicate_modality",
        folder,
        "more than one flair",
        CASE_ID,
        upload_expected="second flair",
        skip=("reader",),  # read_nifti_files takes one path per modality: a duplicate cannot be expressed
    )


@_spec()
def _unknown_labels(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(label_volume((0, 1, 3, 7)), files["seg"])
    return _folder_item("unknown_labels", folder, "unknown label values [7]", files["seg"].name)


@_spec()
def _labels_3_and_4(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(label_volume((0, 1, 3, 4)), files["seg"])
    return _folder_item("labels_3_and_4", folder, "both 3", files["seg"].name)


@_spec()
def _label_float_fraction(root: Path) -> BrokenInput:
    folder, files = _case(root)
    label = label_volume().astype(np.float32)
    label[8, 8, 3] = 1.5
    save(label, files["seg"])
    return _folder_item("label_float_fraction", folder, "integers", files["seg"].name)


@_spec()
def _label_nan(root: Path) -> BrokenInput:
    folder, files = _case(root)
    label = label_volume().astype(np.float32)
    label[0, 0, 0] = np.nan
    save(label, files["seg"])
    return _folder_item("label_nan", folder, "non-finite", files["seg"].name)


@_spec()
def _label_shape_mismatch(root: Path) -> BrokenInput:
    folder, files = _case(root)
    save(np.zeros((16, 16, 9), np.uint8), files["seg"])
    return _folder_item("label_shape_mismatch", folder, "shape", files["seg"].name)


# -------------------------------------------------------------------------------------- Decathlon


def _decathlon(root: Path, image: np.ndarray | bytes, label: np.ndarray | None = None) -> tuple[Path, Path]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    image_path = root / "imagesTr" / "BRATS_001.nii.gz"
    if isinstance(image, bytes):
        image_path.write_bytes(image)
    else:
        save(image, image_path)
    label_path = root / "labelsTr" / "BRATS_001.nii.gz"
    if label is not None:
        save(label, label_path)
    return image_path, label_path


def _decathlon_image(channels: int = 4) -> np.ndarray:
    volumes = list(modality_volumes().values())
    return np.stack([volumes[c % 4] for c in range(channels)], axis=-1)


@_spec()
def _decathlon_3_channels(root: Path) -> BrokenInput:
    image, _ = _decathlon(root, _decathlon_image(3), label_volume((0, 1, 2, 3)))
    return BrokenInput(
        "decathlon_3_channels", image, "nifti4d", "expected 4 channels", image.name, uploads=(image,)
    )


@_spec()
def _decathlon_nonfinite(root: Path) -> BrokenInput:
    data = _decathlon_image().astype(np.float32)
    data[2, 3, 4, 1], data[5, 6, 7, 3] = np.nan, np.inf
    image, _ = _decathlon(root, data, label_volume((0, 1, 2, 3)))
    return BrokenInput("decathlon_nonfinite", image, "nifti4d", "non-finite", image.name, uploads=(image,))


@_spec()
def _decathlon_unknown_label(root: Path) -> BrokenInput:
    image, _ = _decathlon(root, _decathlon_image(), label_volume((0, 1, 2, 5)))
    # A single uploaded file has no labelsTr/ sibling, so the page cannot see this label.
    return BrokenInput(
        "decathlon_unknown_label", image, "nifti4d", "unknown label values [5]", "labelsTr/BRATS_001"
    )


@_spec()
def _decathlon_label_shape(root: Path) -> BrokenInput:
    image, _ = _decathlon(root, _decathlon_image(), np.zeros((16, 16, 9), np.uint8))
    return BrokenInput("decathlon_label_shape", image, "nifti4d", "shape", "labelsTr/BRATS_001")


@_spec()
def _single_3d_nifti(root: Path) -> BrokenInput:
    path = save(modality_volumes()["flair"], root / f"{CASE_ID}_flair.nii.gz")
    # Uploaded alone, a file named like a modality is a case of that modality only (any subset may be
    # uploaded), so only the paths that take one file as a 4-D Decathlon image refuse it.
    return BrokenInput(
        "single_3d_nifti",
        path,
        "nifti4d",
        "expected a 4-d image",
        path.name,
        uploads=(path,),
        skip=("upload",),
    )


@_spec(memory=True)
def _decathlon_header_larger_than_file(root: Path) -> BrokenInput:
    image, _ = _decathlon(root, header_only_nifti((512, 512, 512, 4), np.float64))
    return BrokenInput(
        "decathlon_header_larger_than_file",
        image,
        "nifti4d",
        "truncated",
        image.name,
        uploads=(image,),
        memory=True,
    )


# ----------------------------------------------------------------------------------------- Kaggle


def _kaggle(root: Path, n_slices: int = 3) -> tuple[Path, list[Path]]:
    folder = root / "kaggle"
    folder.mkdir()
    rng = np.random.default_rng(5)
    paths = []
    for s in range(n_slices):
        mask = np.zeros((16, 16, 3), np.uint8)
        mask[4:8, 4:8, s % 3] = 1
        path = folder / f"volume_7_slice_{s}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("image", data=rng.normal(size=(16, 16, 4)) + 5.0)
            handle.create_dataset("mask", data=mask)
        paths.append(path)
    return folder, paths


def _kaggle_item(name: str, folder: Path, expected: str, blame: str) -> BrokenInput:
    # The Predict page takes NIfTI and zip uploads only; .h5 slices are refused by type.
    uploads = tuple(sorted(folder.iterdir()))
    return BrokenInput(
        name,
        folder,
        "kaggle",
        expected,
        blame,
        uploads=uploads,
        upload_expected="unsupported file type",
        upload_blame=uploads[0].name,
    )


@_spec()
def _h5_missing_image(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    with h5py.File(paths[1], "a") as handle:
        del handle["image"]
    return _kaggle_item("h5_missing_image", folder, "no dataset 'image'", paths[1].name)


@_spec()
def _h5_misshapen_mask(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    with h5py.File(paths[2], "a") as handle:
        del handle["mask"]
        handle.create_dataset("mask", data=np.zeros((16, 16, 2), np.uint8))
    return _kaggle_item("h5_misshapen_mask", folder, "dataset 'mask' has shape", paths[2].name)


@_spec()
def _h5_corrupt_bytes(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    raw = bytearray(paths[0].read_bytes())
    raw[0:512] = bytes(b ^ 0x5A for b in raw[0:512])  # superblock and root group header
    paths[0].write_bytes(bytes(raw))
    return _kaggle_item("h5_corrupt_bytes", folder, "not a readable hdf5", paths[0].name)


@_spec()
def _h5_truncated(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    truncate(paths[1], 0.4)
    return _kaggle_item("h5_truncated", folder, "not a readable hdf5", paths[1].name)


@_spec()
def _h5_nan_image(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    with h5py.File(paths[1], "a") as handle:
        handle["image"][3, 3, 0] = np.nan
    return _kaggle_item("h5_nan_image", folder, "non-finite", paths[1].name)


@_spec()
def _h5_mask_not_one_hot(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root)
    with h5py.File(paths[2], "a") as handle:
        handle["mask"][5, 5, :] = 1
    return _kaggle_item("h5_mask_not_one_hot", folder, "one-hot", paths[2].name)


@_spec()
def _kaggle_missing_slice(root: Path) -> BrokenInput:
    folder, paths = _kaggle(root, n_slices=4)
    paths[2].unlink()
    return _kaggle_item("kaggle_missing_slice", folder, "missing slice files [2]", "kaggle")


# ------------------------------------------------------------------------------------------- zips


@_spec()
def _zip_slip(root: Path) -> BrokenInput:
    member = raw_member(f"{CASE_ID}/../../{CASE_ID}_flair.nii.gz", b"x" * 100)
    path = write_raw_zip(root / "slip.zip", [member])
    return _zip_item("zip_slip", path, "zip slip")


@_spec()
def _zip_absolute_path(root: Path) -> BrokenInput:
    path = write_raw_zip(root / "absolute.zip", [raw_member(f"/tmp/{CASE_ID}_flair.nii.gz", b"x" * 100)])
    return _zip_item("zip_absolute_path", path, "absolute path")


@_spec()
def _zip_symlink(root: Path) -> BrokenInput:
    link = raw_member(f"{CASE_ID}/{CASE_ID}_t1.nii.gz", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)
    path = write_raw_zip(root / "symlink.zip", [link])
    return _zip_item("zip_symlink", path, "symbolic link")


@_spec(memory=True)
def _zip_bomb(root: Path) -> BrokenInput:
    """An honest bomb: 2.1 GB of zeros in ~2 MB (deflate's best ratio, under the ratio limit)."""
    total = ZIP_LIMIT + (100 << 20) - ZIP_LIMIT % (1 << 20)
    stream, crc = _zeros_deflate(total)
    member = RawMember(f"{CASE_ID}/{CASE_ID}_flair.nii", stream, crc, total)
    path = write_raw_zip(root / "bomb.zip", [member])
    return _zip_item("zip_bomb", path, "exceeds the limit", memory=True)


@_spec(memory=True)
def _zip_bomb_lying_size(root: Path) -> BrokenInput:
    """A bomb that declares 4 kB but inflates to 2.1 GB: only the stream itself tells."""
    total = ZIP_LIMIT + (100 << 20) - ZIP_LIMIT % (1 << 20)
    stream, crc = _zeros_deflate(total)
    member = RawMember(f"{CASE_ID}/{CASE_ID}_flair.nii", stream, crc, 4096)
    path = write_raw_zip(root / "lying.zip", [member])
    return _zip_item("zip_bomb_lying_size", path, "cannot be extracted", memory=True)


@_spec(memory=True)
def _zip_bomb_bzip2(root: Path) -> BrokenInput:
    """bzip2 squeezes 64 MB of zeros into ~100 bytes: the compression ratio gives it away."""
    import bz2

    payload_size = 64 << 20
    data = bz2.compress(bytes(payload_size))
    crc = zlib.crc32(bytes(payload_size))
    member = RawMember(f"{CASE_ID}/{CASE_ID}_flair.nii", data, crc, payload_size, method=zipfile.ZIP_BZIP2)
    path = write_raw_zip(root / "bzip2_bomb.zip", [member])
    return _zip_item("zip_bomb_bzip2", path, "compression ratio", memory=True)


@_spec()
def _zip_many_members(root: Path) -> BrokenInput:
    members = [raw_member(f"{CASE_ID}/junk_{i:05d}.txt", b"") for i in range(1500)]
    path = write_raw_zip(root / "many.zip", members)
    return _zip_item("zip_many_members", path, "members")


@_spec()
def _zip_encrypted(root: Path) -> BrokenInput:
    member = raw_member(f"{CASE_ID}/{CASE_ID}_flair.nii.gz", b"\x00" * 64, flags=0x1)
    path = write_raw_zip(root / "encrypted.zip", [member])
    return _zip_item("zip_encrypted", path, "encrypted")


@_spec()
def _zip_empty(root: Path) -> BrokenInput:
    path = write_raw_zip(root / "empty_archive.zip", [])
    return _zip_item("zip_empty", path, "no cases found")


@_spec()
def _zip_zero_bytes(root: Path) -> BrokenInput:
    path = root / "zero_bytes.zip"
    path.write_bytes(b"")
    return _zip_item("zip_zero_bytes", path, "empty")


@_spec()
def _zip_truncated(root: Path) -> BrokenInput:
    folder, _ = _case(root / "src")
    path = zip_folder(folder, root / "truncated.zip")
    truncate(path, 0.6)
    return _zip_item("zip_truncated", path, "not a readable zip")


@_spec()
def _zip_corrupt_member(root: Path) -> BrokenInput:
    folder, files = _case(root / "src")
    payload = files["t1"].read_bytes()
    good = [raw_member(f"{CASE_ID}/{p.name}", p.read_bytes()) for m, p in files.items() if m != "t1"]
    bad = raw_member(f"{CASE_ID}/{files['t1'].name}", payload)
    damaged = bytearray(bad.data)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 16] = bytes(16)
    bad = RawMember(bad.name, bytes(damaged), bad.crc, bad.file_size)
    path = write_raw_zip(root / "corrupt_member.zip", [*good, bad])
    return _zip_item("zip_corrupt_member", path, "cannot be extracted")


@_spec()
def _zip_lzma_corrupt(root: Path) -> BrokenInput:
    """An LZMA member whose bytes are really gzip: the LZMA properties header is nonsense."""
    folder, files = _case(root / "src")
    members = [raw_member(f"{CASE_ID}/{p.name}", p.read_bytes()) for m, p in files.items() if m != "flair"]
    payload = files["flair"].read_bytes()
    name = f"{CASE_ID}/{files['flair'].name}"
    members.append(RawMember(name, payload, zlib.crc32(payload), len(payload), zipfile.ZIP_LZMA))
    path = write_raw_zip(root / "lzma.zip", members)
    return _zip_item("zip_lzma_corrupt", path, "cannot be extracted")


@_spec()
def _zip_unsupported_version(root: Path) -> BrokenInput:
    """A valid case zip whose central directory says a member needs zip version 6.4 to extract."""
    folder, files = _case(root / "src")
    members = [raw_member(f"{CASE_ID}/{p.name}", p.read_bytes()) for p in files.values()]
    path = write_raw_zip(root / "version.zip", members)
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 6 : central + 8] = struct.pack("<H", 64)  # version needed to extract: 6.4
    path.write_bytes(bytes(raw))
    return _zip_item("zip_unsupported_version", path, "not a readable zip")


@_spec()
def _zip_broken_case_inside(root: Path) -> BrokenInput:
    folder, files = _case(root / "src")
    data = modality_volumes()["flair"].astype(np.float32)
    data[1, 2, 3] = np.nan
    save(data, files["flair"])
    path = zip_folder(folder, root / "nan_inside.zip")
    return _zip_item("zip_broken_case_inside", path, "non-finite", f"{CASE_ID}_flair.nii.gz")


@_spec()
def _zip_two_cases(root: Path) -> BrokenInput:
    _case(root / "src" / "a")
    write_valid_case(root / "src" / "b" / "Case_002", case_id="Case_002")
    path = root / "two_cases.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted((root / "src").rglob("*.nii.gz")):
            archive.write(file, f"{file.parent.name}/{file.name}")
    return _zip_item("zip_two_cases", path, "2 cases")


@_spec()
def _zip_nested_deep(root: Path) -> BrokenInput:
    """A zip of a zip of a zip ... 600 levels deep (stored, ~90 kB): no case ever needs this."""
    inner = raw_member("notes.txt", b"nothing here\n", method=zipfile.ZIP_STORED)
    data = write_raw_zip(root / "level.zip", [inner]).read_bytes()
    for level in range(600):
        member = raw_member(f"level_{level}.zip", data, zipfile.ZIP_STORED)
        data = write_raw_zip(root / "level.zip", [member]).read_bytes()
    path = root / "chain.zip"
    (root / "level.zip").rename(path)
    return _zip_item("zip_nested_deep", path, "nested")


# ------------------------------------------------------------------------------ other bad paths


@_spec()
def _folder_without_nifti(root: Path) -> BrokenInput:
    folder = root / "notes_only"
    folder.mkdir()
    (folder / "notes.txt").write_text("no images here\n")
    (folder / "scan.dcm").write_bytes(b"DICM" + bytes(200))
    return BrokenInput(
        "folder_without_nifti",
        folder,
        "folder",
        "no cases found",
        folder.name,
        uploads=(folder / "notes.txt",),
        upload_expected="unsupported file type",
        upload_blame="notes.txt",
    )


@_spec()
def _empty_folder(root: Path) -> BrokenInput:
    folder = root / "empty_dir"
    folder.mkdir()
    return BrokenInput("empty_folder", folder, "folder", "no cases found", folder.name)


@_spec()
def _nonexistent_path(root: Path) -> BrokenInput:
    path = root / "no_such_case"
    return BrokenInput("nonexistent_path", path, "missing", "does not exist", path.name)


@_spec()
def _png_file_input(root: Path) -> BrokenInput:
    path = root / "scan.png"
    path.write_bytes(png_bytes())
    return BrokenInput(
        "png_file_input",
        path,
        "file",
        "wrong extension",
        path.name,
        uploads=(path,),
        upload_expected="unsupported file type",
    )


@_spec()
def _single_h5_file_input(root: Path) -> BrokenInput:
    _, paths = _kaggle(root, n_slices=1)
    return BrokenInput(
        "single_h5_file_input",
        paths[0],
        "file",
        "not a case",
        paths[0].name,
        uploads=(paths[0],),
        upload_expected="unsupported file type",
    )
