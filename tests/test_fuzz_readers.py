"""Property-based fuzzing of the NIfTI and zip readers (hypothesis, fixed and derandomised budget).

Property: whatever bytes arrive, a reader either returns a valid Case or raises InputDataError naming
the file. Never another exception, never a hang (pytest-timeout), never a file written outside the
reader's own temporary folder.

The byte strings come from random data, from mutations of a valid (gzipped and plain) NIfTI, from
random header fields, from mutations of a valid case zip and from zips with random member names,
modes, flags and sizes. Examples whose header claims between 64 MiB and the readers' size limit are
skipped (``assume``): such a header in a small file makes the reader allocate the claimed size before
noticing the file is short, a known finding covered (under an address-space limit) by
tests/test_bad_inputs.py::header_larger_than_file; fuzzing it here would only allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import broken_inputs as bi
import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from medvision.data.case import BRATS_LABELS, Case
from medvision.data.readers import load_case, read_nifti_files, read_zip
from medvision.errors import InputDataError

# MEDVISION_FUZZ_EXAMPLES=N runs a longer, randomised campaign (the default run is fixed and repeatable).
EXAMPLES = int(os.environ.get("MEDVISION_FUZZ_EXAMPLES", "60"))
TIMEOUT_S = 60 * max(1, EXAMPLES // 60)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="MEDVISION_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
BIG_CLAIM = 64 * 2**20
SMALL_SHAPE = (8, 8, 4)  # NIfTI (i, j, k): the fuzzed volumes are tiny so every example is milliseconds


# ----------------------------------------------------------------------------------------- helpers


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis reuses function-scoped fixtures across examples)."""
    folder = Path(tempfile.mkdtemp(prefix="mv-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _valid_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 500, SMALL_SHAPE).astype(np.int16)


VALID_NII = nib.Nifti1Image(_valid_volume(), bi.AFFINE).to_bytes()
VALID_GZ = gzip.compress(VALID_NII, mtime=0)


def _claimed_bytes(raw: bytes) -> int | None:
    """Voxel bytes a NIfTI-1 header at the start of ``raw`` (gzipped or not) claims; None if unparsable."""
    try:
        if raw[:2] == b"\x1f\x8b":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = inflater.decompress(raw, 352)
        if len(raw) < 348:
            return None
        header = nib.Nifti1Header(raw[:348], check=False)
        ndim = int(header["dim"][0])
        dims = [int(d) for d in header["dim"][1 : 1 + min(max(ndim, 0), 7)]]
        voxels = int(np.prod([max(d, 0) for d in dims], dtype=np.float64))
        return int(voxels * max(int(header["bitpix"]), 8) // 8)
    except Exception:  # noqa: BLE001 - the guard must never be the thing that fails
        return None


def _skip_big_claims(raw: bytes) -> None:
    claimed = _claimed_bytes(raw)
    # Above 4 * 512^3 * 16 bytes the readers refuse from the header alone, so those stay in.
    assume(claimed is None or claimed <= BIG_CLAIM or claimed > 4 * 512**3 * 16)


def _check_case(case: Case) -> None:
    """What a reader may return: a well-formed Case."""
    assert case.image.dtype == np.float32 and case.image.ndim == 4 and case.image.shape[0] == 4
    assert np.isfinite(case.image).all()
    assert case.affine.shape == (4, 4) and np.isfinite(case.affine).all()
    assert len(case.spacing) == 3 and all(s > 0 and np.isfinite(s) for s in case.spacing)
    if case.label is not None:
        assert case.label.dtype == np.uint8 and case.label.shape == case.image.shape[1:]
        assert set(np.unique(case.label).tolist()) <= set(BRATS_LABELS)


def _read_or_refuse(call, *names: str) -> Case | None:
    try:
        case = call()
    except InputDataError as error:
        message = str(error)
        assert any(name in message for name in names), message
        _note("refused: " + " ".join(error.problem.split(":")[0].split()[:4]))
        return None
    _check_case(case)
    _note("accepted")
    return case


def _note(text: str) -> None:
    """Outcome statistics for ``pytest --hypothesis-show-statistics`` (no-op outside a hypothesis test)."""
    with contextlib.suppress(Exception):  # hypothesis refuses events outside @given
        event(text)


def _as_flair(folder: Path, raw: bytes, suffix: str) -> Case | None:
    """``raw`` as the FLAIR file of an otherwise valid upload of four files (read_nifti_files)."""
    files = {}
    for i, modality in enumerate(bi.MODALITY_NAMES[1:], start=1):
        files[modality] = folder / f"Fz_{modality}.nii.gz"
        files[modality].write_bytes(gzip.compress(nib.Nifti1Image(_valid_volume(i), bi.AFFINE).to_bytes()))
    files["flair"] = folder / f"Fz_flair{suffix}"
    files["flair"].write_bytes(raw)
    return _read_or_refuse(lambda: read_nifti_files(files), files["flair"].name)


mutation = st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255))


def _mutate(raw: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    data = bytearray(raw)
    for where, value in edits:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    return bytes(data)


# ------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    raw=st.binary(min_size=0, max_size=2048), suffix=st.sampled_from([".nii", ".nii.gz"]), wrap=st.booleans()
)
def test_random_bytes_as_a_nifti_file(raw: bytes, suffix: str, wrap: bool) -> None:
    if wrap:  # random content inside a valid gzip stream, so it reaches the NIfTI parser
        raw = gzip.compress(raw, mtime=0)
    _skip_big_claims(raw)
    with scratch() as folder:
        _as_flair(folder, raw, suffix)
        path = folder / f"single{suffix}"  # a single file: read as a Decathlon 4-D image by load_case
        path.write_bytes(raw)
        _read_or_refuse(lambda: load_case(path), path.name)


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    edits=st.lists(mutation, min_size=1, max_size=8), cut=st.none() | st.floats(0.0, 1.0, exclude_max=True)
)
def test_mutated_gzipped_nifti(edits: list[tuple[float, int]], cut: float | None) -> None:
    raw = _mutate(VALID_GZ, edits, cut)
    _skip_big_claims(raw)
    with scratch() as folder:
        _as_flair(folder, raw, ".nii.gz")


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=12
    ),
    cut=st.none() | st.floats(0.3, 1.0, exclude_max=True),
    compress=st.booleans(),
)
def test_mutated_nifti_header_bytes(
    edits: list[tuple[float, int]], cut: float | None, compress: bool
) -> None:
    """Byte edits inside the 352-byte header (dims, datatype, offsets, scaling, transforms, magic)."""
    header = bytearray(VALID_NII[:352])
    for where, value in edits:
        header[int(where * 352)] = value
    raw = bytes(header) + VALID_NII[352:]
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    _skip_big_claims(raw)
    with scratch() as folder:
        _as_flair(folder, gzip.compress(raw, mtime=0) if compress else raw, ".nii.gz" if compress else ".nii")


def _mostly(valid, *odd):
    """Mostly the valid value (so the example gets past the first check), sometimes an odd one."""
    return st.sampled_from([valid] * 3 + list(odd))


odd_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    ndim=_mostly(3, 4, 2, 5, 0, -1, 8),
    dims=st.lists(_mostly(8, 4, 1, 0, -2, 3, 12, 32767, 4096), min_size=7, max_size=7),
    dtype_bits=_mostly(
        (4, 16),
        (16, 32),
        (2, 8),
        (64, 64),
        (512, 16),
        (2, 16),
        (32, 64),
        (128, 24),
        (1536, 128),
        (1, 1),
        (2304, 32),
        (0, 0),
        (77, 16),
    ),
    vox_offset=_mostly(352.0, 0.0, 351.0, 1e9, -4.0, float("nan"), 4000.0),
    pixdim=st.lists(
        _mostly(1.0, 0.0, -1.5, 1e-30, float("nan"), float("inf")) | odd_float, min_size=3, max_size=3
    ),
    scaling=_mostly(
        (1.0, 0.0), (0.0, 0.0), (float("nan"), 0.0), (1e38, 1e38), (float("inf"), 1.0), (-1.0, float("nan"))
    ),
    codes=st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
    srow=st.none() | st.lists(odd_float, min_size=12, max_size=12),
    payload=st.integers(0, 4096),
)
def test_random_nifti_header_fields(
    ndim, dims, dtype_bits, vox_offset, pixdim, scaling, codes, srow, payload
) -> None:
    header = nib.Nifti1Header()
    fields = header.structarr
    fields["dim"] = [ndim, *dims]
    fields["datatype"], fields["bitpix"] = dtype_bits
    fields["vox_offset"] = vox_offset
    fields["pixdim"][:4] = [1.0, *pixdim]
    fields["scl_slope"], fields["scl_inter"] = scaling
    fields["qform_code"], fields["sform_code"] = codes
    if srow is not None:
        fields["srow_x"], fields["srow_y"], fields["srow_z"] = srow[:4], srow[4:8], srow[8:]
    raw = header.binaryblock + b"\0" * 4 + np.random.default_rng(payload).bytes(payload)
    _skip_big_claims(raw)
    with scratch() as folder:
        # Alone (a single file is read as a Decathlon 4-D image) and as the FLAIR of a four-file upload.
        path = folder / "single.nii"
        path.write_bytes(raw)
        _read_or_refuse(lambda: load_case(path), path.name)
        _as_flair(folder, gzip.compress(raw, mtime=0), ".nii.gz")


# --------------------------------------------------------------------------------------------- zip


def _valid_case_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i, modality in enumerate(bi.MODALITY_NAMES):
            payload = gzip.compress(nib.Nifti1Image(_valid_volume(i), bi.AFFINE).to_bytes(), mtime=0)
            archive.writestr(f"Zc_001/Zc_001_{modality}.nii.gz", payload)
    return buffer.getvalue()


VALID_ZIP = _valid_case_zip()


def _read_zip_sandboxed(folder: Path, raw: bytes, monkeypatch_tempdir: Path) -> Case | None:
    """read_zip with its temporary folder inside ``folder``: afterwards nothing but the archive is there."""
    path = folder / "upload.zip"
    path.write_bytes(raw)
    saved = tempfile.tempdir
    tempfile.tempdir = str(monkeypatch_tempdir)
    try:
        case = _read_or_refuse(lambda: read_zip(path), path.name)
    finally:
        tempfile.tempdir = saved
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == ["sandbox", "upload.zip"], left  # no escaped file, no temporary folder left behind
    return case


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(raw=st.binary(min_size=0, max_size=4096))
def test_random_bytes_as_a_zip(raw: bytes) -> None:
    with scratch() as folder:
        (folder / "sandbox").mkdir()
        _read_zip_sandboxed(folder, raw, folder / "sandbox")


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    edits=st.lists(mutation, min_size=1, max_size=8), cut=st.none() | st.floats(0.0, 1.0, exclude_max=True)
)
def test_mutated_case_zip(edits: list[tuple[float, int]], cut: float | None) -> None:
    with scratch() as folder:
        (folder / "sandbox").mkdir()
        _read_zip_sandboxed(folder, _mutate(VALID_ZIP, edits, cut), folder / "sandbox")


def _modality_payloads() -> list[bytes]:
    return [gzip.compress(nib.Nifti1Image(_valid_volume(i), bi.AFFINE).to_bytes(), mtime=0) for i in range(4)]


CASE_NAMES = [f"Zc_001/Zc_001_{m}.nii.gz" for m in bi.MODALITY_NAMES]
member_name = st.one_of(
    st.sampled_from(CASE_NAMES + ["Zc_001/", "Zc_001/Zc_001_seg.nii.gz", "Zc_001_t2.nii.gz"]),
    st.text(min_size=0, max_size=40),
    st.lists(
        st.sampled_from(
            [
                "..",
                ".",
                "",
                "Zc_001",
                "Zc_001_flair.nii.gz",
                "Zc_001_t1.nii.gz",
                "a\\..\\b",
                "C:",
                "/",
                "__MACOSX",
                "._x",
                "x\x00y",
                "\u00e9\u4e2d",
            ]
        ),
        min_size=1,
        max_size=5,
    ).map("/".join),
)
member = st.tuples(
    member_name,
    st.sampled_from(_modality_payloads()) | st.binary(max_size=300),
    _mostly(zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, 12, 14, 99),  # 12 bzip2, 14 lzma, 99 unknown
    _mostly(
        stat.S_IFREG | 0o644,
        0,
        stat.S_IFLNK | 0o777,
        stat.S_IFDIR | 0o755,
        stat.S_IFIFO | 0o644,
        stat.S_IFCHR | 0o644,
    ),
    _mostly(0, 0x1, 0x8, 0x40),  # encrypted, data descriptor, strong encryption
    st.none() | st.none() | st.integers(0, 2**32 - 1),  # declared size (None: the true one)
)


@pytest.mark.timeout(TIMEOUT_S)
@FUZZ
@given(
    members=st.lists(member, min_size=0, max_size=6)
    | st.permutations(CASE_NAMES).flatmap(
        lambda names: st.tuples(*[member.map(lambda m, n=n: (n, *m[1:])) for n in names]).map(list)
    )
)
def test_zip_with_random_members(members) -> None:
    raws = []
    for name, payload, method, mode, flags, declared in members:
        if method == zipfile.ZIP_DEFLATED:
            entry = bi.raw_member(name, payload, mode=mode, flags=flags)
        elif method == zipfile.ZIP_LZMA:
            # Real LZMA data: an LZMA member with garbage bytes raises a raw LZMAError today (a known
            # finding, tests/broken_inputs.py::zip_lzma_corrupt); store garbage here once that is fixed.
            compressor = zipfile.LZMACompressor()
            data = compressor.compress(payload) + compressor.flush()
            entry = bi.RawMember(name, data, zlib.crc32(payload), len(payload), method, mode, flags)
        else:  # stored bytes, whatever the method says (bzip2 and unknown methods get garbage)
            entry = bi.RawMember(name, payload, zlib.crc32(payload), len(payload), method, mode, flags)
        if declared is not None:
            entry = dataclasses.replace(entry, file_size=declared)
        raws.append(entry)
    with scratch() as folder:
        (folder / "sandbox").mkdir()
        bi.write_raw_zip(folder / "built.zip", raws)
        raw = (folder / "built.zip").read_bytes()
        (folder / "built.zip").unlink()
        _read_zip_sandboxed(folder, raw, folder / "sandbox")


def test_fuzz_inputs_are_valid_when_untouched(tmp_path: Path) -> None:
    """The seeds the mutations start from are accepted, so refusals above are about the damage."""
    case = _as_flair(tmp_path, VALID_GZ, ".nii.gz")
    assert case is not None and case.image.shape == (4, 4, 8, 8)
    (tmp_path / "zip" / "sandbox").mkdir(parents=True)
    zipped = _read_zip_sandboxed(tmp_path / "zip", VALID_ZIP, tmp_path / "zip" / "sandbox")
    assert zipped is not None and zipped.case_id == "Zc_001"
    assert struct.unpack("<i", VALID_NII[:4])[0] == 348
