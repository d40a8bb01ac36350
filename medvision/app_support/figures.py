"""Plotly figures the pages show: slice viewer, per-slice Dice strip, training curves.

Figures are built from plain data (arrays, metrics records); pages only place them. The slice figure
carries the rendered slice as one PNG (``go.Image(source=...)``) rather than a float matrix, which is
what keeps a redraw fast: the browser receives ~20-60 kB instead of ~1 MB of JSON numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from medvision.app_support.plain_text import plain, plotly_text
from medvision.app_support.render import png_data_uri

REGION_LINE_COLOURS = {"WT": "#d4a800", "TC": "#e62828", "ET": "#1e78ff", "NCR": "#e62828"}


# Black -> red -> yellow, the ramp ``render.heatmap`` blends onto the grey image.
HEAT_SCALE: list[list[Any]] = [[0.0, "rgb(0,0,0)"], [0.5, "rgb(255,0,0)"], [1.0, "rgb(255,255,0)"]]
# Where each anatomical edge letter sits in the plot area (paper coordinates) and how it is anchored.
_EDGE_PLACES: dict[str, dict[str, Any]] = {
    "top": dict(x=0.5, y=1.0, xanchor="center", yanchor="top"),
    "bottom": dict(x=0.5, y=0.0, xanchor="center", yanchor="bottom"),
    "left": dict(x=0.0, y=0.5, xanchor="left", yanchor="middle"),
    "right": dict(x=1.0, y=0.5, xanchor="right", yanchor="middle"),
}


def _edge_annotations(edges: dict[str, str]) -> list[dict[str, Any]]:
    """Anatomical letters on the panel's edges; paper-anchored so they stay put while panning."""
    return [
        dict(
            text=f"<b>{plotly_text(letter)}</b>",
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=16, color="white"),
            bgcolor="rgba(0,0,0,0.55)",
            borderpad=2,
            **_EDGE_PLACES[edge],
        )
        for edge, letter in edges.items()
    ]


def _colour_bar(vmax: float, name: str) -> go.Scatter:
    """An invisible trace whose only job is to draw the heat map's colour scale beside the image."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        hoverinfo="skip",
        showlegend=False,
        marker=dict(
            colorscale=HEAT_SCALE,
            cmin=0.0,
            cmax=float(vmax),
            color=[0.0],
            showscale=True,
            colorbar=dict(title=dict(text=plotly_text(name), side="right"), thickness=12, len=0.8),
        ),
    )


def slice_figure(
    rgb: np.ndarray,
    *,
    pixel_mm: tuple[float, float] = (1.0, 1.0),
    title: str | None = None,
    height: int = 420,
    edges: dict[str, str] | None = None,
    colour_scale: tuple[float, str] | None = None,
) -> go.Figure:
    """A zoomable figure of one rendered slice, drawn with its real pixel aspect (row, column mm).

    ``edges`` maps "top"/"bottom"/"left"/"right" to the anatomical letter drawn on that edge;
    ``colour_scale`` is (top value, name) of a heat overlay, drawn as a colour bar. A ``title`` is
    kept for callers outside the Predict page, which shows its titles above the chart so the
    toolbar never covers them.
    """
    row_mm, col_mm = (float(v) for v in pixel_mm)
    fig = go.Figure(go.Image(source=png_data_uri(rgb), dx=col_mm, dy=row_mm, hoverinfo="skip"))
    if colour_scale is not None:
        fig.add_trace(_colour_bar(*colour_scale))
    fig.update_layout(
        height=height,
        margin=dict(l=0, r=0, t=28 if title else 4, b=0),
        title=dict(text=title, font=dict(size=14)) if title else None,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False, scaleanchor="x"),
        dragmode="pan",
        annotations=_edge_annotations(edges or {}),
    )
    return fig


def dice_strip(per_slice: np.ndarray, current: int, *, height: int = 130) -> go.Figure:
    """Per-slice Dice along the slice axis (gaps where prediction and truth are both empty)."""
    values = np.asarray(per_slice, dtype=np.float64)
    x = np.arange(values.size)
    colours = [
        "#bbbbbb" if math.isnan(v) else f"rgb({int(255 * (1 - v))},{int(180 * v)},60)"
        for v in values.tolist()
    ]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=np.nan_to_num(values, nan=0.0),
            marker_color=colours,
            customdata=np.where(np.isnan(values), -1, values),
            hovertemplate="slice %{x}: Dice %{customdata:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=current, line_color="black", line_width=2)
    fig.update_layout(
        height=height,
        margin=dict(l=40, r=10, t=6, b=28),
        yaxis=dict(range=[0, 1], title="Dice"),
        xaxis=dict(title="slice", range=[-0.5, values.size - 0.5]),
        bargap=0,
        showlegend=False,
    )
    return fig


# ------------------------------------------------------------------------------------------------
# Training curves from metrics.jsonl records


def _records(metrics: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in metrics if m.get("kind") == kind]


def _val_dice(record: dict[str, Any]) -> dict[str, float]:
    """{"WT": 0.8, ...} from an epoch record's "val" block (tolerates {"WT": {"dice": ..}} or floats)."""
    val = record.get("val") or {}
    out: dict[str, float] = {}
    for region, scores in val.items():
        if isinstance(scores, dict) and "dice" in scores:
            out[region] = float(scores["dice"])
        elif isinstance(scores, (int, float)) and region.upper() in REGION_LINE_COLOURS:
            out[region] = float(scores)
    return out


def empty_regions(val: dict[str, Any] | None) -> list[str]:
    """Regions of a validation block whose Dice is 1.0 only because truth and prediction were empty in
    every validation slice (BraTS counts empty-vs-empty as a perfect score).

    The trainer's and the evaluator's "dice_slice" averages over slices where truth or prediction has
    tumour and is missing (NaN, None in JSON) when there was none, which is what tells such a 1.0 from a
    perfect segmentation.
    """
    regions = []
    for region, scores in (val or {}).items():
        if not isinstance(scores, dict) or "dice_slice" not in scores:
            continue
        dice, per_slice = scores.get("dice"), scores["dice_slice"]
        empty = per_slice is None or (isinstance(per_slice, float) and math.isnan(per_slice))
        if empty and _finite(dice) and dice >= 1.0:
            regions.append(region)
    return regions


def empty_regions_note(regions: Sequence[str]) -> str:
    """The sentence shown beside a Dice that contains empty-vs-empty regions (Markdown-safe: the region
    names come from checkpoint metadata and metrics files)."""
    return (
        f"{plain(', '.join(regions))}: no tumour of this kind in the validation data and none predicted; "
        "counted as 1.000 by the BraTS convention."
    )


# A run of one or two logged steps must still show something: a lone point draws no line.
_MARKERS = dict(mode="lines+markers", marker=dict(size=5))


def loss_figure(metrics: Sequence[dict[str, Any]], *, height: int = 300) -> go.Figure:
    """Training loss per logged step, with validation loss per epoch when the log has it."""
    fig = go.Figure()
    steps = [m for m in _records(metrics, "step") if m.get("loss") is not None]
    if steps:
        fig.add_scatter(
            x=[m["step"] for m in steps], y=[m["loss"] for m in steps], name="train loss", **_MARKERS
        )
    epochs = [m for m in _records(metrics, "epoch") if m.get("val_loss") is not None]
    if epochs:
        fig.add_scatter(
            x=[m.get("step") for m in epochs],
            y=[m["val_loss"] for m in epochs],
            name="val loss",
            **_MARKERS,
        )
    fig.update_layout(height=height, margin=dict(l=40, r=10, t=30, b=30), title="Loss", xaxis_title="step")
    return fig


def dice_figure(metrics: Sequence[dict[str, Any]], *, height: int = 300) -> go.Figure:
    """Validation Dice per region per epoch."""
    fig = go.Figure()
    epochs = _records(metrics, "epoch")
    regions: dict[str, list[tuple[int, float]]] = {}
    for record in epochs:
        for region, dice in _val_dice(record).items():
            regions.setdefault(region, []).append((record.get("epoch"), dice))
    for region, points in regions.items():
        fig.add_scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            name=f"{plotly_text(region)} Dice",  # region names come from the run's metrics file
            **_MARKERS,
            line=dict(color=REGION_LINE_COLOURS.get(region)),
        )
    fig.update_layout(
        height=height,
        margin=dict(l=40, r=10, t=30, b=30),
        title="Validation Dice",
        xaxis=dict(title="epoch", dtick=1),
        yaxis=dict(range=[0, 1]),
    )
    return fig


def lr_figure(metrics: Sequence[dict[str, Any]], *, height: int = 240) -> go.Figure:
    steps = [m for m in _records(metrics, "step") if m.get("lr") is not None]
    fig = go.Figure()
    if steps:
        fig.add_scatter(x=[m["step"] for m in steps], y=[m["lr"] for m in steps], name="lr", **_MARKERS)
    fig.update_layout(
        height=height,
        margin=dict(l=40, r=10, t=30, b=30),
        title="Learning rate",
        xaxis_title="step",
        yaxis=dict(exponentformat="e"),
    )
    return fig


def throughput_figure(metrics: Sequence[dict[str, Any]], *, height: int = 240) -> go.Figure:
    steps = [m for m in _records(metrics, "step") if m.get("slices_per_s") is not None]
    fig = go.Figure()
    if steps:
        fig.add_scatter(
            x=[m["step"] for m in steps], y=[m["slices_per_s"] for m in steps], name="slices/s", **_MARKERS
        )
    fig.update_layout(
        height=height, margin=dict(l=40, r=10, t=30, b=30), title="Throughput (slices/s)", xaxis_title="step"
    )
    return fig


def latest_progress(metrics: Sequence[dict[str, Any]], status: dict[str, Any] | None) -> dict[str, Any]:
    """Numbers for the progress bar and headline metrics: fraction done, ETA, last loss, best Dice.

    ``best_epoch``, ``best_val`` (per-region Dice) and ``best_empty`` (its empty-vs-empty regions, see
    :func:`empty_regions`) describe the validation that gave the best mean Dice.
    """
    status = status or {}
    steps = _records(metrics, "step")
    last = steps[-1] if steps else {}
    step = status.get("step", last.get("step")) or 0
    total = status.get("total_steps") or last.get("total_steps")
    fraction = min(max(float(step) / float(total), 0.0), 1.0) if total else 0.0
    best: dict[str, float] = {}
    best_mean = status.get("best_val_mean_dice")
    best_record: dict[str, Any] | None = None
    for record in _records(metrics, "epoch"):
        for region, dice in _val_dice(record).items():
            best[region] = max(best.get(region, 0.0), dice)
        mean = record.get("val_mean_dice")
        if _finite(mean):
            # Strictly better, as the trainer decides which epoch's weights become the best checkpoint.
            if best_record is None or mean > best_record["val_mean_dice"]:
                best_record = record
            best_mean = max(best_mean or 0.0, float(mean))
    return {
        "step": int(step),
        "total_steps": int(total) if total else None,
        "fraction": fraction,
        "epoch": status.get("epoch", last.get("epoch")),
        "eta_s": last.get("eta_s"),
        "loss": last.get("loss"),
        "lr": last.get("lr"),
        "slices_per_s": last.get("slices_per_s"),
        "best_dice": best,
        "best_mean_dice": best_mean if _finite(best_mean) else None,
        "best_epoch": best_record.get("epoch") if best_record else None,
        "best_val": _val_dice(best_record) if best_record else {},
        "best_empty": empty_regions(best_record.get("val")) if best_record else [],
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(float(seconds)):
        return "–"
    seconds = int(round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
