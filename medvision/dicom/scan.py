"""Scan a folder of one DICOM study: headers only, grouped into series, each usable or skipped with why.

Every file under the folder whose first bytes say DICOM (``DICM`` at 128, or a preamble-less data set: see
:mod:`medvision.data.sniff`) is read with ``stop_before_pixels`` and grouped by SeriesInstanceUID (a series
holding several echoes is split per echo). A series is *skipped*, with a note, when it is no scan to
segment: a non-image object (SR, PR, SEG, RTSTRUCT, KO, a DICOMDIR), a secondary capture, a localizer or
scout (ImageType LOCALIZER, its name, or a few slices in several orientations), a derived series (ImageType
DERIVED/SECONDARY: reformats, maps), one named as a region of interest or mask (BRAINIX's ``FLAIR_ROI``
says ORIGINAL/PRIMARY but is a drawn mask), an enhanced multi-frame object, or one of under
:data:`MIN_SLICES` slices. Other series get their geometry checked (:mod:`medvision.dicom.geometry`) and
their transfer syntax matched to a decoder; a problem found there is kept with the series and becomes an
error only if the series is chosen (``study.py``), so a broken series nobody needs does not block a study.

Refused outright (InputDataError naming the folder): files of more than one patient, or of more than one
study. No patient name, ID or birth date is ever written into a message, a note or a log line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from medvision.confinement import Confinement
from medvision.data.sniff import sniff
from medvision.dicom.geometry import SeriesProblem, StackGeometry, stack_geometry
from medvision.errors import InputDataError

__all__ = ["MIN_SLICES", "DicomFile", "Series", "StudyScan", "scan_study"]

logger = logging.getLogger(__name__)

# A volume to segment has more slices than this; fewer is a localizer, a key image or a single shot.
MIN_SLICES: int = 4
# One study rarely holds more than a few thousand images; far more is a whole archive, not an upload.
MAX_FILES: int = 20_000
MAX_DEPTH: int = 6
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "PR", "SEG", "RTSTRUCT", "KO", "REG", "RTPLAN", "RTDOSE", "DOC", "RWV"}
)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_LOCALIZER_NAME = re.compile(r"locali[sz]er|scout|survey|3[ -]?plane|\b3pl\b|\bloc\b|aahead|autoalign|plan_")
_MASK_NAME = re.compile(r"\broi\b|_roi\b|roi_|\bmask\b|_mask|\bseg\b|segment|label|contour|\bvoi\b")
# Compressed syntaxes the GDCM inside SimpleITK decodes when pydicom has no decoder installed for them.
SIMPLEITK_SYNTAXES = frozenset(
    {
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGExtended12Bit,
        pydicom.uid.JPEGLossless,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEGLSLossless,
        pydicom.uid.JPEGLSNearLossless,
        pydicom.uid.JPEG2000Lossless,
        pydicom.uid.JPEG2000,
        pydicom.uid.RLELossless,
    }
)


@dataclass(frozen=True)
class DicomFile:
    path: Path  # where it is read from
    name: str  # as shown in messages: the path relative to the study folder
    header: Dataset  # read with stop_before_pixels


@dataclass(frozen=True)
class Series:
    """One series (or one echo of it): its files, why it is skipped (None: a candidate), its geometry."""

    key: str  # SeriesInstanceUID, "#echo N" appended when the series was split per echo
    uid: str
    number: int | None
    description: str
    files: tuple[DicomFile, ...]  # sorted along the slice normal when the geometry is known
    skip: str | None = None  # why it is not a scan to segment
    geometry: StackGeometry | None = None
    problem: str | None = None  # why it cannot be read as one volume (geometry, decoding)
    decoder: str = "pydicom"  # "pydicom", or "simpleitk" for syntaxes only GDCM decodes here

    @property
    def label(self) -> str:
        number = f"series {self.number}" if self.number is not None else "series"
        return f"{number} '{self.description}'" if self.description else number

    @property
    def header(self) -> Dataset:
        return self.files[0].header


@dataclass(frozen=True)
class StudyScan:
    root: Path
    series: tuple[Series, ...]  # every series found, skipped ones included, in series-number order
    notes: tuple[str, ...]  # files ignored, and the like
    study_key: str  # a short hash of the StudyInstanceUID: names the case without patient data

    @property
    def candidates(self) -> tuple[Series, ...]:
        return tuple(s for s in self.series if s.skip is None)


def _walk(root: Path, within: Confinement) -> Iterator[Path]:
    """Every regular file under ``root`` (hidden ones and macOS ``._`` forks left out), bounded in number."""
    count = 0
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX" and depth < MAX_DEPTH)
        for name in sorted(files):
            if name.startswith("."):
                continue
            count += 1
            if count > MAX_FILES:
                raise InputDataError(root, f"holds more than {MAX_FILES:,} files; upload one study")
            path = Path(folder) / name
            within.check(path)
            yield path


def _read_headers(root: Path, within: Confinement) -> tuple[list[DicomFile], list[str]]:
    files: list[DicomFile] = []
    other: list[str] = []
    unreadable: list[str] = []
    for path in _walk(root, within):
        name = path.relative_to(root).as_posix()
        if sniff(path, within=within) != "dicom":
            other.append(name)
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as exc:
            unreadable.append(f"{name} ({type(exc).__name__})")
            continue
        files.append(DicomFile(path, name, header))
    notes = []
    if other:
        notes.append(f"{len(other)} file(s) that are not DICOM were ignored (first: {other[0]})")
    if unreadable:
        notes.append(f"{len(unreadable)} damaged DICOM file(s) were ignored (first: {unreadable[0]})")
    return files, notes


def _check_one_patient(root: Path, files: Sequence[DicomFile]) -> None:
    """Refuse files of several patients (or studies); the message names series, never the patient."""
    first: dict[str, DicomFile] = {}
    for kind, key_of in (
        ("patient", _patient_key),
        ("study", lambda h: str(h.get("StudyInstanceUID") or "")),
    ):
        first.clear()
        for item in files:
            key = key_of(item.header)
            if key:
                first.setdefault(key, item)
        if len(first) > 1:
            a, b = list(first.values())[:2]
            raise InputDataError(
                root,
                f"holds files of {len(first)} different {kind}s ({a.name} and {b.name} differ in their "
                f"{kind} identity); upload one {kind} at a time",
            )


def _patient_key(header: Dataset) -> str:
    """Whom the file belongs to, for comparison only (hashed: the value never reaches a message): the
    PatientID, else the name (series anonymised apart may differ in what else they kept)."""
    text = str(header.get("PatientID") or "").strip() or str(header.get("PatientName") or "").strip()
    return hashlib.sha256(text.encode()).hexdigest() if text else ""


def _group(files: Sequence[DicomFile]) -> dict[str, list[DicomFile]]:
    """Files by SeriesInstanceUID, split per echo when one series holds several echo times (dual echo)."""
    by_uid: dict[str, list[DicomFile]] = {}
    for item in files:
        by_uid.setdefault(str(item.header.get("SeriesInstanceUID") or "(no series UID)"), []).append(item)
    groups: dict[str, list[DicomFile]] = {}
    for uid, members in by_uid.items():
        echoes = {str(m.header.get("EchoTime") or "") for m in members}
        if len(echoes) <= 1 or not all(m.header.get("Rows") for m in members):
            groups[uid] = members
            continue
        for echo in sorted(echoes):
            groups[f"{uid}#echo {echo}"] = [m for m in members if str(m.header.get("EchoTime") or "") == echo]
    return groups


def _object_skip(header: Dataset, count: int) -> str | None:
    """Why a series is no scan, from its first header alone (None: it may be one)."""
    modality = str(header.get("Modality") or "")
    sop_class = str(header.get("SOPClassUID") or "")
    if modality in NON_IMAGE_MODALITIES or sop_class == _MEDIA_DIRECTORY or not header.get("Rows"):
        return f"not an image (Modality {modality or '?'})"
    if sop_class.startswith(_SECONDARY_CAPTURE):
        return "a secondary capture (a screenshot or key image), not a scan"
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    text = " ".join(str(header.get(k) or "") for k in ("SeriesDescription", "ProtocolName")).lower()
    if "LOCALIZER" in image_type or _LOCALIZER_NAME.search(text):
        return "a localizer / scout, used to plan the scan"
    if image_type[:1] == ["DERIVED"] or image_type[1:2] == ["SECONDARY"]:
        return f"a derived series (ImageType {'/'.join(image_type[:2])}): reformats and maps are not scans"
    if _MASK_NAME.search(text):
        return "named like a region of interest or mask, not a scan"
    if int(header.get("NumberOfFrames") or 1) > 1:
        return "an enhanced multi-frame object, which this reader does not read yet"
    if count < MIN_SLICES:
        return f"only {count} slice{'s' if count > 1 else ''} (a localizer or single image)"
    return None


def _decoder(header: Dataset) -> tuple[str, str | None]:
    """How the pixels can be decoded here: ("pydicom" | "simpleitk", None) or ("", the problem)."""
    meta = getattr(header, "file_meta", None)
    syntax = pydicom.uid.UID(
        str(getattr(meta, "TransferSyntaxUID", "") or pydicom.uid.ImplicitVRLittleEndian)
    )
    if not syntax.is_compressed:
        return "pydicom", None
    try:
        if get_decoder(syntax).is_available:
            return "pydicom", None
    except NotImplementedError:  # pydicom knows no decoder for this syntax at all
        pass
    if syntax in SIMPLEITK_SYNTAXES:
        return "simpleitk", None
    return "", f"compressed as {syntax.name} ({syntax}), which nothing installed here can decode"


def _looks_three_plane(files: Sequence[DicomFile]) -> bool:
    """A 3-plane localizer: slices in three or more orientations, a handful in each."""
    groups: dict[tuple[float, ...], int] = {}
    for f in files:
        key = tuple(round(float(v), 2) for v in (f.header.get("ImageOrientationPatient") or ()))
        groups[key] = groups.get(key, 0) + 1
    return len(groups) >= 3 and max(groups.values()) <= 5


def _series(key: str, members: list[DicomFile]) -> Series:
    header = members[0].header
    number = header.get("SeriesNumber")
    base = Series(
        key=key,
        uid=key.split("#", 1)[0],
        number=int(number) if number not in (None, "") else None,
        description=str(header.get("SeriesDescription") or header.get("ProtocolName") or "").strip(),
        files=tuple(members),
    )
    skip = _object_skip(header, len(members))
    if skip is not None:
        return _replace(base, skip=skip)
    decoder, problem = _decoder(header)
    try:
        geometry = stack_geometry([m.header for m in members], [m.name for m in members])
    except SeriesProblem as exc:
        if _looks_three_plane(members):
            return _replace(base, skip=f"a localizer ({len(members)} slices in three or more orientations)")
        return _replace(base, problem=str(exc), decoder=decoder)
    ordered = tuple(members[i] for i in geometry.order)
    return _replace(base, files=ordered, geometry=geometry, problem=problem, decoder=decoder or "pydicom")


def _replace(series: Series, **changes: object) -> Series:
    return dataclasses.replace(series, **changes)  # type: ignore[arg-type]


def scan_study(folder: str | Path, *, within: Confinement | None = None) -> StudyScan:
    """Scan the DICOM files under ``folder`` (headers only); InputDataError when none is a DICOM image
    series, or when files of several patients or studies are mixed."""
    root = Path(folder)
    within = within or Confinement.around(root)
    within.check(root)
    if not root.is_dir():
        raise InputDataError(root, "not a folder (expected a folder or .zip of one DICOM study)")
    files, notes = _read_headers(root, within)
    if not files:
        raise InputDataError(root, "holds no DICOM files")
    _check_one_patient(root, files)
    series = [_series(key, members) for key, members in _group(files).items()]
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.description, s.key))
    if not any(s.geometry is not None or s.problem for s in series if s.skip is None):
        skipped = "; ".join(f"{s.label}: {s.skip}" for s in series[:5])
        raise InputDataError(root, f"holds no DICOM image series to segment ({skipped})")
    uid = str(files[0].header.get("StudyInstanceUID") or root.name)
    study_key = hashlib.sha256(uid.encode()).hexdigest()[:10]
    logger.debug("scanned %d DICOM files in %d series", len(files), len(series))
    return StudyScan(root, tuple(series), tuple(notes), study_key)
