"""DICOM studies as people have them: scan a folder or .zip, assign modalities, read series into volumes on
the reference series' grid, and write the prediction back as DICOM-SEG referencing that series.

Modules: ``scan`` (headers, series, what is skipped and why), ``geometry`` (slice order, spacing checks,
RAS+ affine), ``modality`` (flair/t1/t1ce/t2 from names and sequence parameters), ``volume`` (pixels),
``report`` (the table shown to a user), ``study`` (``load_study``, the entry point), ``seg_export``.
"""

from medvision.dicom.report import SeriesRow, StudyReport
from medvision.dicom.study import NativeGrid, NativeStudy, is_dicom_study, load_study, read_study

__all__ = [
    "NativeGrid",
    "NativeStudy",
    "SeriesRow",
    "StudyReport",
    "is_dicom_study",
    "load_study",
    "read_study",
]
