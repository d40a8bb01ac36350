"""Extract an uploaded .zip safely: no path escapes, no links, no decompression bombs.

Users upload a zipped case folder through the app, so the archive is untrusted. Every member is checked
from the central directory before anything is written, and the byte count is enforced again while
streaming (declared sizes can lie).
"""

from __future__ import annotations

import logging
import lzma
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from medvision.errors import InputDataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UNCOMPRESSED_BYTES: int = 2_000_000_000
# Deflate cannot exceed ~1032:1, and an uncompressed all-zero label NIfTI (a healthy case) legitimately
# gets close to that, so the ratio limit sits just above it: anything higher is bzip2/lzma bomb material
# or forged sizes. The absolute byte limit above is the main bomb defence.
DEFAULT_MAX_COMPRESSION_RATIO: float = 1100.0
# A case folder holds five files (plus perhaps a few extras); thousands of members is not a case.
DEFAULT_MAX_MEMBERS: int = 1000
_CHUNK = 1 << 20
_EXTRACT_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
)


def _is_ignorable(name: str) -> bool:
    """macOS Finder metadata that zips made on a Mac carry; never part of the data."""
    parts = PurePosixPath(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store")


def _safe_member_path(zip_path: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    if "\x00" in name:
        raise InputDataError(zip_path, f"member {name!r} has a NUL byte in its name")
    # Windows-made archives may use backslashes; treat them as separators so '..\\x' cannot slip through.
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise InputDataError(zip_path, f"member {name!r} has an absolute path (zip slip); not extracting")
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InputDataError(
            zip_path, f"member {name!r} would be written outside the extraction folder (zip slip)"
        )
    if not parts:
        raise InputDataError(zip_path, f"member {name!r} has an empty path")
    return PurePosixPath(*parts)


def _check_member(zip_path: Path, info: zipfile.ZipInfo, max_ratio: float) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputDataError(zip_path, f"member {info.filename!r} is a symbolic link; refusing to extract")
    # Many writers store permission bits only (no file type); only a stated non-regular type is refused.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InputDataError(zip_path, f"member {info.filename!r} is not a regular file")
    if info.flag_bits & 0x1:
        raise InputDataError(zip_path, f"member {info.filename!r} is encrypted")
    if info.file_size > 0 and info.file_size / max(info.compress_size, 1) > max_ratio:
        raise InputDataError(
            zip_path,
            f"member {info.filename!r} has a suspicious compression ratio "
            f"({info.file_size:,} bytes from {info.compress_size:,}): possible zip bomb",
        )


def _open_archive(zip_path: Path) -> zipfile.ZipFile:
    if zip_path.suffix.lower() != ".zip":
        raise InputDataError(zip_path, f"wrong extension: expected a .zip file, got {zip_path.name!r}")
    if not zip_path.is_file():
        raise InputDataError(zip_path, "file does not exist")
    if zip_path.stat().st_size == 0:
        raise InputDataError(zip_path, "file is empty (0 bytes)")
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise InputDataError(zip_path, f"not a readable zip archive: {exc}") from exc


Plan = list[tuple[zipfile.ZipInfo, PurePosixPath]]  # the files to write and where, relative to dest


def _plan_extraction(
    zip_path: Path, archive: zipfile.ZipFile, max_bytes: int, max_ratio: float, max_members: int
) -> Plan:
    """Check every member from the central directory before anything is written."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise InputDataError(zip_path, f"archive has {len(infos):,} members (limit {max_members:,})")
    plan: Plan = []
    seen: set[PurePosixPath] = set()
    total = 0
    for info in infos:
        rel = _safe_member_path(zip_path, info)
        _check_member(zip_path, info, max_ratio)
        if info.is_dir() or _is_ignorable(info.filename):
            continue
        if rel in seen:
            raise InputDataError(zip_path, f"member {info.filename!r} appears twice")
        seen.add(rel)
        total += info.file_size
        if total > max_bytes:
            raise InputDataError(
                zip_path, f"uncompressed size exceeds the limit of {max_bytes:,} bytes (zip bomb?)"
            )
        plan.append((info, rel))
    return plan


def _copy_member(
    zip_path: Path,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    written: int,
    max_bytes: int,
) -> int:
    """Stream one member to ``target``; returns ``written`` plus its bytes (the running archive total)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as out:
            member_bytes = 0
            while chunk := src.read(_CHUNK):
                member_bytes += len(chunk)
                written += len(chunk)
                # Declared sizes are only claims: stop as soon as the real stream exceeds them.
                if member_bytes > info.file_size or written > max_bytes:
                    raise InputDataError(
                        zip_path, f"member {info.filename!r} inflates beyond its declared size (zip bomb?)"
                    )
                out.write(chunk)
    except InputDataError:
        raise
    except _EXTRACT_ERRORS as exc:
        problem = f"member {info.filename!r} cannot be extracted: {exc}"
        raise InputDataError(zip_path, problem) from exc
    return written


def safe_extract(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
    max_compression_ratio: float = DEFAULT_MAX_COMPRESSION_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Extract ``zip_path`` into the existing folder ``dest``; returns the extracted file paths.

    Raises InputDataError (naming the archive and the member) for zip slip, absolute paths, symlinks,
    encrypted members, too many members, a total uncompressed size over ``max_uncompressed_bytes``,
    a compression ratio over ``max_compression_ratio``, and damaged archives.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    with _open_archive(zip_path) as archive:
        plan = _plan_extraction(zip_path, archive, max_uncompressed_bytes, max_compression_ratio, max_members)
        written = 0
        extracted: list[Path] = []
        for info, rel in plan:
            target = dest.joinpath(*rel.parts)
            written = _copy_member(zip_path, archive, info, target, written, max_uncompressed_bytes)
            extracted.append(target)
        logger.debug("extracted %d files (%d bytes) from %s", len(extracted), written, zip_path)
        return extracted
