"""Data behind the Explore page: the store's slice table filtered by split, and the dashboard figures.

``medvision.eda.compute_eda`` reports on a whole store. The page also filters by patient split and by
tumour region, so the per-slice statistics are recomputed here from the same slice table (a few
pandas group-bys, milliseconds even for BraTS 2020's 57k slices); per-modality intensity histograms
(which need the raw images) come from the report, which covers all cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from medvision.data.splits import make_splits
from medvision.data.store import PIXEL_COLUMNS, SliceStore

SMALL_TUMOUR_PIXELS = 500  # the original project's "small tumour" threshold (pixels per 240x240 slice)
SPLIT_SEED = 88  # the trainer's default patient split (TrainConfig.split_seed)
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
REGION_CHOICES: tuple[str, ...] = ("WT", "TC", "ET", "NCR", "ED")
REGION_NAMES = {
    "WT": "whole tumour",
    "TC": "tumour core",
    "ET": "enhancing tumour",
    "NCR": "necrotic core",
    "ED": "edema",
}
REGION_COLOURS = {"WT": "#d4a800", "TC": "#e62828", "ET": "#1e78ff", "NCR": "#b51c1c", "ED": "#ffd700"}
MODALITY_COLOURS = {"flair": "#636efa", "t1": "#ef553b", "t1ce": "#00cc96", "t2": "#ab63fa"}
_MARGIN = dict(l=40, r=10, t=40, b=40)


def slice_frame(store_path: str) -> pd.DataFrame:
    """The store's slice table plus the patient split and voxel volume of each slice's case."""
    with SliceStore(store_path) as store:
        table = store.slice_table()
        voxel = {c: float(store.case_meta(c)["voxel_volume_mm3"]) for c in store.case_ids}
        case_ids = list(store.case_ids)
    splits = make_splits(case_ids, fractions=SPLIT_FRACTIONS, seed=SPLIT_SEED)
    split_of = {c: name for name, ids in splits.items() for c in ids}
    table["split"] = table["case_id"].map(split_of).fillna("train")
    table["voxel_mm3"] = table["case_id"].map(voxel)
    depth = table.groupby("case_id")["slice_index"].transform("max").clip(lower=1)
    table["relative"] = table["slice_index"] / depth
    return table


def filter_split(table: pd.DataFrame, split: str) -> pd.DataFrame:
    return table if split == "all" else table[table["split"] == split]


def headline(table: pd.DataFrame, region: str) -> dict[str, Any]:
    labelled = table[table["labelled"]]
    tumour = labelled[PIXEL_COLUMNS[region]] > 0
    return {
        "cases": int(table["case_id"].nunique()),
        "slices": len(table),
        "tumour_slices": int(tumour.sum()),
        "healthy_slices": int((~tumour).sum()),
        "small_slices": int(
            (
                (labelled[PIXEL_COLUMNS[region]] > 0)
                & (labelled[PIXEL_COLUMNS[region]] < SMALL_TUMOUR_PIXELS)
            ).sum()
        ),
    }


def tumour_vs_healthy_figure(table: pd.DataFrame, region: str) -> go.Figure:
    labelled = table[table["labelled"]]
    tumour = labelled[PIXEL_COLUMNS[region]] > 0
    counts = pd.DataFrame(
        {"split": labelled["split"], "tumour": np.where(tumour, f"with {region}", "healthy")}
    )
    grouped = counts.groupby(["split", "tumour"]).size().unstack(fill_value=0)
    grouped = grouped.reindex([s for s in ("train", "val", "test") if s in grouped.index])
    fig = go.Figure()
    for column, colour in ((f"with {region}", REGION_COLOURS[region]), ("healthy", "#9e9e9e")):
        if column in grouped:
            fig.add_bar(
                x=grouped.index.tolist(), y=grouped[column].tolist(), name=column, marker_color=colour
            )
    fig.update_layout(
        barmode="stack",
        title=f"Slices with {REGION_NAMES[region]} vs healthy slices",
        yaxis_title="slices",
        margin=_MARGIN,
        height=330,
    )
    return fig


def size_figure(table: pd.DataFrame, region: str) -> go.Figure:
    """Pixels per tumour slice, with the small-tumour threshold marked."""
    values = table.loc[table["labelled"], PIXEL_COLUMNS[region]]
    values = values[values > 0]
    fig = go.Figure(
        go.Histogram(x=values.tolist(), nbinsx=40, marker_color=REGION_COLOURS[region], name=region)
    )
    fig.add_vline(
        x=SMALL_TUMOUR_PIXELS,
        line_dash="dash",
        line_color="black",
        annotation_text=f"small tumour < {SMALL_TUMOUR_PIXELS} px",
        annotation_position="top right",
    )
    share = float((values < SMALL_TUMOUR_PIXELS).mean()) if len(values) else 0.0
    fig.update_layout(
        title=f"{region} size per slice ({share:.0%} of {len(values)} slices are small)",
        xaxis_title="pixels per slice",
        yaxis_title="slices",
        margin=_MARGIN,
        height=330,
    )
    return fig


def volume_figure(table: pd.DataFrame) -> go.Figure:
    """Tumour volume per case (cm^3) for every region, one box per region."""
    labelled = table[table["labelled"]]
    fig = go.Figure()
    for region in REGION_CHOICES:
        per_case = (
            (labelled[PIXEL_COLUMNS[region]] * labelled["voxel_mm3"] / 1000.0)
            .groupby(labelled["case_id"])
            .sum()
        )
        fig.add_box(
            y=per_case.tolist(),
            name=region,
            marker_color=REGION_COLOURS[region],
            boxpoints="all",
            text=per_case.index.tolist(),
        )
    fig.update_layout(
        title="Tumour volume per patient", yaxis_title="cm³", margin=_MARGIN, height=330, showlegend=False
    )
    return fig


def probability_figure(table: pd.DataFrame, region: str, bins: int = 20) -> go.Figure:
    """P(slice contains the region) against the slice's relative position in the brain (0 = lowest)."""
    labelled = table[table["labelled"]]
    tumour = (labelled[PIXEL_COLUMNS[region]] > 0).astype(float)
    which = np.clip((labelled["relative"].to_numpy() * bins).astype(int), 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=tumour.to_numpy(), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        probability = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    centres = (np.arange(bins) + 0.5) / bins
    fig = go.Figure(
        go.Scatter(
            x=centres,
            y=probability,
            mode="lines+markers",
            line_color=REGION_COLOURS[region],
            customdata=n,
            hovertemplate="position %{x:.2f}: p=%{y:.2f} (%{customdata} slices)",
        )
    )
    fig.update_layout(
        title=f"Probability of {region} by slice position (inferior → superior)",
        xaxis_title="relative slice position in the brain",
        yaxis=dict(range=[0, 1], title="P(tumour)"),
        margin=_MARGIN,
        height=330,
    )
    return fig


def slices_per_patient_figure(table: pd.DataFrame, region: str) -> go.Figure:
    per_case = table.groupby("case_id").agg(
        slices=("slice_index", "size"), tumour=(PIXEL_COLUMNS[region], lambda s: int((s > 0).sum()))
    )
    fig = go.Figure()
    fig.add_bar(
        x=per_case.index.tolist(),
        y=(per_case["slices"] - per_case["tumour"]).tolist(),
        name="healthy",
        marker_color="#9e9e9e",
    )
    fig.add_bar(
        x=per_case.index.tolist(),
        y=per_case["tumour"].tolist(),
        name=f"with {region}",
        marker_color=REGION_COLOURS[region],
    )
    fig.update_layout(
        barmode="stack",
        title="Brain slices per patient",
        yaxis_title="slices",
        margin=_MARGIN,
        height=330,
        xaxis=dict(showticklabels=len(per_case) <= 40),
    )
    return fig


def class_balance_figure(table: pd.DataFrame) -> go.Figure:
    labelled = table[table["labelled"]]
    brain = float(labelled["brain_pixels"].sum())
    parts = {
        "healthy brain": max(brain - float(labelled["pixels_wt"].sum()), 0.0),
        "NCR/NET": float(labelled["pixels_ncr"].sum()),
        "ED": float(labelled["pixels_ed"].sum()),
        "ET": float(labelled["pixels_et"].sum()),
    }
    colours = ["#bdbdbd", REGION_COLOURS["NCR"], REGION_COLOURS["ED"], REGION_COLOURS["ET"]]
    fig = go.Figure(
        go.Pie(
            labels=list(parts),
            values=list(parts.values()),
            marker_colors=colours,
            hole=0.45,
            sort=False,
            textinfo="percent",
            textposition="inside",
        )
    )
    fig.update_layout(title="Class balance (voxels inside the brain)", margin=_MARGIN, height=330)
    return fig


def intensity_figure(report: dict[str, Any]) -> go.Figure:
    """Per-modality histograms of raw intensities inside the brain (to check a dataset's channel order)."""
    fig = go.Figure()
    for modality, entry in (report.get("intensity") or {}).items():
        edges, counts = entry.get("edges") or [], entry.get("counts") or []
        if not counts:
            continue
        total = float(sum(counts)) or 1.0
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fig.add_scatter(
            x=centres,
            y=[c / total for c in counts],
            name=modality,
            mode="lines",
            line=dict(color=MODALITY_COLOURS.get(modality)),
        )
    fig.update_layout(
        title="Raw intensity inside the brain, per modality (all cases)",
        xaxis_title="intensity",
        yaxis_title="fraction of brain voxels",
        margin=_MARGIN,
        height=330,
    )
    return fig


def gallery_picks(
    store_path: str, table: pd.DataFrame, region: str, n: int, seed: int
) -> list[tuple[str, int]]:
    """Sample (case, slice) pairs showing ``region``, restricted to the cases in ``table``."""
    from medvision.eda import pick_sample_slices

    allowed = set(table["case_id"].unique())
    picks = pick_sample_slices(store_path, max(4 * n, 24), region=region, seed=seed)
    return [p for p in picks if p[0] in allowed][:n]


def render_sample(sample: dict[str, Any], modality: str = "flair", opacity: float = 0.45) -> np.ndarray:
    """A gallery tile: one stored (z-scored) slice of ``modality``, label overlaid, oriented from the
    case's affine like the Predict viewer (radiological; as stored when the store holds no affine)."""
    from medvision.app_support.orientation import DisplayFrame
    from medvision.app_support.render import auto_window, overlay, to_gray

    modalities = list(sample["modalities"])
    plane = np.asarray(sample["image"][modalities.index(modality) if modality in modalities else 0])
    label = None if sample["label"] is None else np.asarray(sample["label"])
    if sample.get("affine") is not None:
        frame = DisplayFrame.from_affine(np.asarray(sample["affine"], dtype=np.float64))
        if frame.slice_axis("axial") == 0:  # stored slices are case-axis-0 planes
            plane = frame.orient(plane, "axial")
            label = None if label is None else frame.orient(label, "axial")
    gray = to_gray(plane, auto_window(plane))
    return overlay(gray, None if label is None else np.ascontiguousarray(label), opacity=opacity)
