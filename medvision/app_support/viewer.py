"""Everything the Predict page's viewer computes: rendered planes, per-slice Dice, scores, exports.

A redraw (move the slider, toggle a label) is :func:`render_plane` plus
:func:`medvision.app_support.figures.slice_figure` on arrays already in memory: a few milliseconds (see
bench/redraw_speed.py). Heavier results that do not change while scrolling (case scores, per-slice Dice,
windows, meshes) are computed once per case and prediction by the page, through the functions here.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medvision.app_support import render
from medvision.csv_cells import safe_row
from medvision.data.case import MODALITIES, REGION_LABELS, REGIONS, Case, label_to_regions


def display_frame(case: Case, convention: str = "radiological") -> render.DisplayFrame:
    """How ``case`` is drawn: its axes' directions from its affine, in the given display convention."""
    return render.DisplayFrame.from_affine(case.affine, convention)


def _frame(case: Case, frame: render.DisplayFrame | None) -> render.DisplayFrame:
    return display_frame(case) if frame is None else frame


def _gray(
    case: Case, view: str, index: int, modality: str, window: render.Window, frame: render.DisplayFrame
) -> np.ndarray:
    plane = render.take_slice(case.image[MODALITIES.index(modality)], view, index, frame)
    return render.to_gray(plane, window)


def auto_windows(case: Case) -> dict[str, render.Window]:
    """A display window per modality (0.5-99.5th percentile of the brain)."""
    return {m: render.auto_window(case.image[i]) for i, m in enumerate(MODALITIES)}


def intensity_range(case: Case, modality: str) -> tuple[float, float]:
    """Lowest and highest intensity of a modality (bounds for the window/level sliders)."""
    channel = case.image[MODALITIES.index(modality)]
    return float(channel.min()), float(channel.max())


def render_plane(
    case: Case,
    view: str,
    index: int,
    modality: str,
    window: render.Window,
    label: np.ndarray | None,
    *,
    labels_shown: Iterable[int] = (1, 2, 4),
    opacity: float = 0.45,
    frame: render.DisplayFrame | None = None,
) -> np.ndarray:
    """One display plane of ``case`` with an optional (D, H, W) label volume overlaid -> RGB uint8.

    ``frame`` defaults to the radiological convention read from the case's affine.
    """
    frame = _frame(case, frame)
    gray = _gray(case, view, index, modality, window, frame)
    label_plane = None if label is None else render.take_slice(label, view, index, frame)
    return render.overlay(gray, label_plane, labels_shown=labels_shown, opacity=opacity)


def can_show_single_slices(frame: render.DisplayFrame) -> bool:
    """Whether the model's 2-D planes (case axis 0) are the axial slices of this case.

    The engine predicts one case-axis-0 plane at a time; only when that axis is the patient's
    superior-inferior axis can such a plane be drawn as the axial slice on screen.
    """
    return frame.slice_axis("axial") == 0


def render_slice_label(
    case: Case,
    index: int,
    modality: str,
    window: render.Window,
    label_plane: np.ndarray | None,
    *,
    frame: render.DisplayFrame | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Axial plane with a single predicted label plane (H, W) of case axis 0 (before the whole volume is
    predicted); only for cases where ``can_show_single_slices``."""
    frame = _frame(case, frame)
    if not can_show_single_slices(frame):
        raise ValueError(f"case axis 0 of {case.case_id} is not axial ({frame.axis_codes()})")
    gray = _gray(case, "axial", index, modality, window, frame)
    plane = None if label_plane is None else frame.orient(label_plane, "axial")
    return render.overlay(gray, plane, **kwargs)


def render_error(
    case: Case,
    view: str,
    index: int,
    modality: str,
    window: render.Window,
    predicted: np.ndarray,
    truth: np.ndarray,
    region: str,
    *,
    frame: render.DisplayFrame | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Error map of one region on one plane: TP green, FP magenta, FN cyan."""
    frame = _frame(case, frame)
    values = REGION_LABELS[region]
    gray = _gray(case, view, index, modality, window, frame)
    pred = np.isin(render.take_slice(predicted, view, index, frame), values)
    true = np.isin(render.take_slice(truth, view, index, frame), values)
    return render.error_map(gray, pred, true)


def render_map(
    case: Case,
    view: str,
    index: int,
    modality: str,
    window: render.Window,
    values: np.ndarray,
    *,
    vmax: float | None = None,
    frame: render.DisplayFrame | None = None,
) -> np.ndarray:
    """A (D, H, W) map (uncertainty) as a heat overlay on one plane."""
    frame = _frame(case, frame)
    gray = _gray(case, view, index, modality, window, frame)
    return render.heatmap(gray, render.take_slice(values, view, index, frame), vmax=vmax)


def render_attention(
    case: Case,
    index: int,
    modality: str,
    window: render.Window,
    attention: np.ndarray,
    *,
    frame: render.DisplayFrame | None = None,
) -> np.ndarray:
    """A (H, W) attention-gate map of case-axis-0 plane ``index`` as a heat overlay on the axial view."""
    frame = _frame(case, frame)
    if not can_show_single_slices(frame):
        raise ValueError(f"case axis 0 of {case.case_id} is not axial ({frame.axis_codes()})")
    gray = _gray(case, "axial", index, modality, window, frame)
    return render.heatmap(gray, frame.orient(attention, "axial"), vmax=1.0)


def per_slice_dice(
    predicted: np.ndarray,
    truth: np.ndarray,
    view: str,
    region: str = "WT",
    *,
    frame: render.DisplayFrame,
) -> np.ndarray:
    """Dice of ``region`` on every slice along the view's axis (nan where both are empty)."""
    from medvision.metrics import per_slice_dice as dice_along_axis0

    axis = frame.slice_axis(view)
    values = REGION_LABELS[region]
    pred = np.moveaxis(np.isin(predicted, values), axis, 0)
    true = np.moveaxis(np.isin(truth, values), axis, 0)
    return dice_along_axis0(pred, true)


def case_scores(predicted: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> list[dict]:
    """Per-region Dice / HD95 / precision / recall rows for the scores table."""
    from medvision.metrics import case_scores as scores_of

    scores = scores_of(label_to_regions(predicted), label_to_regions(truth), spacing)
    rows = []
    for region in REGIONS:
        s = scores[region]
        rows.append(
            {
                "region": region,
                "Dice": s.get("dice"),
                "HD95 (mm)": s.get("hd95"),
                "precision": s.get("precision"),
                "recall": s.get("recall"),
            }
        )
    return rows


def volumetry_rows(volumes: dict[str, Any]) -> list[dict[str, Any]]:
    """The volumetry dict as table rows (cm³ per region first, then extent figures)."""
    names = {
        "WT_cm3": "Whole tumour (WT)",
        "TC_cm3": "Tumour core (TC)",
        "ET_cm3": "Enhancing tumour (ET)",
        "NCR_NET_cm3": "Necrotic core (NCR/NET)",
        "ED_cm3": "Edema (ED)",
        "NCR_cm3": "Necrotic core (NCR)",
        "islands_cm3": "Separate tumour pieces",
    }
    rows = [
        {"measure": names.get(k, k), "value": round(float(v), 3), "unit": "cm³"}
        for k, v in volumes.items()
        if k.endswith("_cm3")
    ]
    extra = {
        "largest_area_mm2": ("Largest axial area", "mm²"),
        "max_diameter_mm": ("Largest axial diameter (main lesion)", "mm"),
        "islands": ("Separate tumour pieces (not measured above)", "count"),
        "first_slice": ("First tumour slice", "index"),
        "last_slice": ("Last tumour slice", "index"),
    }
    for key, (name, unit) in extra.items():
        if volumes.get(key) is not None:
            rows.append({"measure": name, "value": round(float(volumes[key]), 3), "unit": unit})
    return rows


def report_csv(
    case_id: str,
    model: str,
    volumes: dict[str, Any],
    scores: list[dict[str, Any]] | None = None,
    uncertainty_score: float | None = None,
) -> str:
    """One-row CSV report of a prediction: volumetry, optional scores against the truth, uncertainty."""
    row: dict[str, Any] = {"case_id": case_id, "model": model}
    for key, value in volumes.items():
        row[key] = "" if value is None else (f"{value:.3f}" if isinstance(value, float) else value)
    for entry in scores or []:
        for metric in ("Dice", "HD95 (mm)"):
            value = entry.get(metric)
            column = f"{entry['region']}_{'dice' if metric == 'Dice' else 'hd95_mm'}"
            row[column] = "" if value is None or not np.isfinite(value) else f"{value:.4f}"
    if uncertainty_score is not None:
        row["uncertainty_score"] = f"{uncertainty_score:.5f}"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(safe_row(row))  # text cells never start a spreadsheet formula
    return buffer.getvalue()


def segmentation_nifti_bytes(label: np.ndarray, case: Case, scratch: Path) -> bytes:
    """The predicted label volume as .nii.gz bytes with the case's original affine and header."""
    from medvision.export import save_prediction_nifti

    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = save_prediction_nifti(label, case, Path(tmp) / f"{case.case_id}_pred.nii.gz")
        return Path(path).read_bytes()
