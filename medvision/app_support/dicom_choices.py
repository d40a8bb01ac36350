"""The series table of an uploaded DICOM study and the four modality selectboxes that override its mapping.

    rows = series_rows(upload)  # st.dataframe(rows)
    options = modality_options(upload)  # modality -> ["none", "series 401 'sT2W/FLAIR'", ...]
    picked = {m: st.selectbox(m, o, index=o.index(current_choice(upload, m))) for m, o in options.items()}
    overrides = overrides_from_choices(upload, picked)  # for DicomOptions(overrides=...), then read again

Options are named as the report names series (``series 401 'sT2W/FLAIR'``) and passed to
``medvision.dicom.load_study`` as the series number (the description when a series has no number).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from medvision.data.case import MODALITIES
from medvision.dicom.report import SeriesRow

if TYPE_CHECKING:
    from medvision.app_support.dicom_upload import DicomUpload

__all__ = ["NONE", "current_choice", "modality_options", "overrides_from_choices", "series_rows"]

NONE = "none"  # the selectbox option that leaves a modality out


def _grid_parts(grid: str) -> tuple[str, str]:
    """The report's grid text split: "288x288x22 at 0.80 x 0.80 x 6.00 mm" -> ("288x288x22",
    "0.80 x 0.80 x 6.00"); ("", "") for a series without a grid."""
    size, _, spacing = grid.partition(" at ")
    return size, spacing.removesuffix(" mm")


def series_rows(upload: DicomUpload) -> list[dict[str, str | int]]:
    """One plain row per series found (for ``st.dataframe``): number, description, size, slices, spacing,
    the modality assigned, whether it is used, and why."""
    rows: list[dict[str, str | int]] = []
    for row in upload.report.rows:
        size, spacing = _grid_parts(row.grid)
        rows.append(
            {
                "series": row.series,
                "description": row.description,
                "size": size,
                "slices": row.slices,
                "spacing (mm)": spacing,
                "modality": row.modality,
                "status": row.status,
                "reason": row.reason,
            }
        )
    return rows


def _option(row: SeriesRow) -> str:
    return f"series {row.series} '{row.description}'" if row.description else f"series {row.series}"


def modality_options(upload: DicomUpload) -> dict[str, list[str]]:
    """Modality -> the options of its selectbox: "none", then every series that is not skipped."""
    candidates = [_option(r) for r in upload.report.rows if r.status != "skipped"]
    return {m: [NONE, *candidates] for m in MODALITIES}


def current_choice(upload: DicomUpload, modality: str) -> str:
    """The option of ``modality``'s selectbox that the study was read with ("none" when it is absent)."""
    used = [r for r in upload.report.used if r.modality == modality]
    return _option(used[0]) if used else NONE


def overrides_from_choices(upload: DicomUpload, picked: Mapping[str, str]) -> dict[str, str | None]:
    """The overrides for :class:`DicomOptions` once the user picked ``picked`` (modality -> option): the
    upload's own, plus each modality whose pick differs from what it was read with."""
    values = {
        _option(r): (r.series if r.series != "?" else r.description)
        for r in upload.report.rows
        if r.status != "skipped"
    }
    overrides = dict(upload.options.overrides)
    for modality, option in picked.items():
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; use {MODALITIES}")
        if option == current_choice(upload, modality):
            continue
        if option != NONE and option not in values:
            raise ValueError(f"{option!r} is not a series of this upload")
        overrides[modality] = None if option == NONE else values[option]
    return overrides
