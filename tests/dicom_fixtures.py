"""Helpers for the DICOM tests: the BRAINIX study beside the project, and DICOM series written with
pydicom from a volume + RAS+ affine (a few slices of a real BraTS case), so refusals start from real data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
BRAINIX = REPO_ROOT.parent / "shared" / "data" / "brainix"
BRATS_CASE = REPO_ROOT.parent / "shared" / "data" / "brats2021_00006"


@pytest.fixture(scope="session")
def brainix_dir() -> Path:
    """The BRAINIX study (DICOM/ and the NIfTI conversions), kept beside the project, never copied in."""
    if not (BRAINIX / "DICOM" / "FLAIR").is_dir():
        pytest.skip(f"BRAINIX study not found at {BRAINIX}")
    return BRAINIX


def write_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    description: str = "t2_flair_tra",
    series_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    patient_id: str = "TEST-0001",
    series_number: int = 1,
    slices: Sequence[int] | None = None,
    positions_mm: Sequence[float] | None = None,
    tr_te_ti: tuple[float, float, float | None] = (9000.0, 100.0, 2500.0),
) -> list[Path]:
    """Write ``volume`` ((i, j, k), NIfTI axes) as MR Image Storage files ``folder/IM<k>.dcm``.

    ``slices``: which k to write (default all); ``positions_mm``: replace each written slice's distance
    along the slice direction (to make gaps or uneven spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid()
    frame_uid = "1.2.826.0.1.3680043.8.498.2"
    chosen = list(range(volume.shape[2])) if slices is None else list(slices)
    paths = []
    for n, k in enumerate(chosen):
        distance = k * spacing[2] if positions_mm is None else positions_mm[n]
        position = lps[:3, 3] + lps[:3, 2] / spacing[2] * distance
        ds = _slice_dataset(volume[:, :, k].T, series_uid, study_uid, frame_uid, patient_id)
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = n + 1
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.RepetitionTime, ds.EchoTime = tr_te_ti[0], tr_te_ti[1]
        if tr_te_ti[2] is not None:
            ds.InversionTime = tr_te_ti[2]
            ds.ScanningSequence = "IR"
        path = folder / f"IM{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(
    pixels: np.ndarray, series_uid: str, study_uid: str, frame_uid: str, patient_id: str
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.PatientName = "Test^Person"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = "20260101"
    ds.Manufacturer = "MedVision tests"
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.int16)).tobytes()
    return ds


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(path)
