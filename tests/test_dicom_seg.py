"""DICOM-SEG export, tried as a new user would: a real BraTS label on a few slices written as DICOM goes out
as a SEG that pydicom reads back, references the source series, and whose frames give the label again."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_fixtures import BRATS_CASE, write_series

from medvision.dicom import read_study
from medvision.dicom.seg_export import write_dicom_seg


@pytest.fixture(scope="module")
def study_and_label(tmp_path_factory: pytest.TempPathFactory):
    flair = nib.load(BRATS_CASE / "BraTS2021_00006_flair.nii.gz")
    seg = nib.load(BRATS_CASE / "BraTS2021_00006_seg.nii.gz")
    affine = flair.affine.copy()
    affine[:3, 3] += affine[:3, 2] * 70
    folder = tmp_path_factory.mktemp("seg") / "study"
    write_series(folder, np.asarray(flair.dataobj)[:, :, 70:76], affine)
    label = np.transpose(np.asarray(seg.dataobj)[:, :, 70:76], (2, 0, 1)).astype(np.uint8)  # Case axes
    return read_study(folder), label


def _label_from_seg(ds: pydicom.Dataset, sources: list[pydicom.Dataset]) -> np.ndarray:
    """Rebuild (D, H, W) BraTS labels from the SEG frames, through each frame's source image and segment."""
    slice_of = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
    label_of = {}
    for item in ds.SegmentSequence:
        name = str(item.SegmentLabel)
        label_of[int(item.SegmentNumber)] = 1 if name.startswith("NCR") else 2 if name.startswith("ED") else 4
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    out = np.zeros((len(sources), ds.Columns, ds.Rows), dtype=np.uint8)
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[slice_of[str(source)]][frame.T > 0] = label_of[segment]
    return out


def test_seg_reads_back_references_the_series_and_reproduces_the_label(
    tmp_path: Path, study_and_label
) -> None:
    study, label = study_and_label
    assert set(np.unique(label)) == {0, 1, 2, 4}
    path = write_dicom_seg(label, study.reference_datasets, tmp_path / "out" / "pred_seg.dcm")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == study.reference_datasets[0].SeriesInstanceUID
    assert [str(s.SegmentAlgorithmType) for s in ds.SegmentSequence] == ["AUTOMATIC"] * 3
    assert {str(s.SegmentAlgorithmName) for s in ds.SegmentSequence} == {"MedVision"}
    np.testing.assert_array_equal(_label_from_seg(ds, list(study.reference_datasets)), label)
    assert [p.name for p in path.parent.iterdir()] == ["pred_seg.dcm"]  # no temporary file left behind


def test_seg_of_a_label_that_does_not_fit_the_series_is_refused(tmp_path: Path, study_and_label) -> None:
    study, label = study_and_label
    with pytest.raises(ValueError, match="one slice per source image"):
        write_dicom_seg(label[:3], study.reference_datasets, tmp_path / "x.dcm")
    bad = label.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="not BraTS labels"):
        write_dicom_seg(bad, study.reference_datasets, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
