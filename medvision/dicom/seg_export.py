"""A BraTS label volume -> DICOM-SEG (highdicom) referencing the reference series it was predicted on.

One segment per label present: 1 NCR/NET (necrosis), 2 ED (edema), 4 ET (enhancing tumour), each
AUTOMATIC by the algorithm "MedVision"; frames follow the reference series' slices (frame k is slice k
of the label, transposed from Case axes (k, i, j) to the DICOM (row = j, column = i) layout), and empty
frames are left out, as highdicom does by default. The SEG carries the source series' patient and study
(that is what lets a PACS file it beside the scan) and is written atomically (``medvision.atomic``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import medvision
from medvision.atomic import atomic_path
from medvision.data.case import LABEL_NAMES

__all__ = ["SEGMENT_CODES", "write_dicom_seg"]

logger = logging.getLogger(__name__)

# BraTS label -> (segment label, SNOMED CT property type); all in category "morphologically abnormal".
SEGMENT_CODES: dict[int, tuple[str, Code]] = {
    1: (f"{LABEL_NAMES[1]} (necrotic / non-enhancing tumour core)", codes.SCT.Necrosis),
    2: (f"{LABEL_NAMES[2]} (peritumoral edema)", codes.SCT.Edema),
    4: (f"{LABEL_NAMES[4]} (GD-enhancing tumour)", codes.SCT.Neoplasm),
}
_BRAIN = Code("12738006", "SCT", "Brain")
# The algorithm family in a private coding scheme ("99" prefix, as DICOM allows): what the model is.
_FAMILY = Code("ATTN-UNET-2D", "99MEDVISION", "2-D attention U-Net on axial slices")
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _segments(labels: Sequence[int]) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MedVision", family=_FAMILY, version=medvision.__version__
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=SEGMENT_CODES[label][0],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=SEGMENT_CODES[label][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_BRAIN],
        )
        for number, label in enumerate(labels, start=1)
    ]


def write_dicom_seg(
    label: np.ndarray, reference_datasets: Sequence[Dataset], path: str | Path, *, series_number: int = 9901
) -> Path:
    """Write ``label`` ((D, H, W) BraTS labels 0/1/2/4 on the reference series' grid, Case axes) as a
    DICOM-SEG referencing ``reference_datasets`` (the reference series' headers in slice order k).

    ValueError when the label does not match the series (slice count, rows and columns) or holds values
    other than BraTS labels. A label with no tumour still gives a valid SEG (one empty NCR/NET segment)."""
    label = np.asarray(label)
    if label.ndim != 3 or label.shape[0] != len(reference_datasets):
        raise ValueError(
            f"label {label.shape} does not have one slice per source image ({len(reference_datasets)})"
        )
    rows, columns = int(reference_datasets[0].Rows), int(reference_datasets[0].Columns)
    if label.shape[1:] != (columns, rows):
        raise ValueError(f"label slices {label.shape[1:]} are not (columns, rows) = ({columns}, {rows})")
    unknown = sorted(set(np.unique(label).tolist()) - {0, *SEGMENT_CODES})
    if unknown:
        raise ValueError(f"label holds values {unknown} that are not BraTS labels 1, 2, 4")
    present = [v for v in SEGMENT_CODES if (label == v).any()] or [1]
    frames = np.zeros((label.shape[0], rows, columns), dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        frames[np.transpose(label, (0, 2, 1)) == value] = number  # Case (k, i, j) -> frame (row j, column i)
    # highdicom warns about odd person names quoting the name itself: no patient data in logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(_sanitised(reference_datasets), frames, present, series_number, bool(label.any()))
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    logger.debug("wrote DICOM-SEG with %d segment(s)", len(present))
    return path


def _sanitised(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers that highdicom accepts: values it refuses blanked (BRAINIX has PatientSex
    '0000'; allowed are M, F, O) and the patient/study attributes it copies (type 2: present, maybe empty)
    added empty where a writer left them out."""
    out = []
    for ds in datasets:
        copy = Dataset(ds)
        copy.file_meta = ds.file_meta
        if str(copy.get("PatientSex") or "") not in ("", "M", "F", "O"):
            copy.PatientSex = ""
        for keyword in _TYPE2_COPIED:
            if keyword not in copy:
                setattr(copy, keyword, "")
        out.append(copy)
    return out


def _segmentation(
    sources: list[Dataset], frames: np.ndarray, present: list[int], series_number: int, omit_empty: bool
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segments(present),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedVision",
        manufacturer_model_name="MedVision research demo, not for clinical use",
        software_versions=medvision.__version__,
        device_serial_number="0",
        series_description="MedVision tumour segmentation",
        omit_empty_frames=omit_empty,
    )
