"""3-D surfaces of segmented regions for the rotatable viewer (marching cubes -> plotly Mesh3d).

Marching cubes runs on a downsampled mask so a full 240x240x155 case gives a few tens of thousands of
triangles (interactive in a browser) and takes well under a second on a laptop CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
from skimage.measure import marching_cubes

from medvision.data.case import REGION_LABELS

log = logging.getLogger(__name__)

# Nested regions drawn from the outside in: the translucent whole tumour shows the core and ET inside it.
REGION_STYLE: dict[str, tuple[str, float]] = {
    "WT": ("rgb(255,215,0)", 0.25),
    "TC": ("rgb(230,40,40)", 0.45),
    "ET": ("rgb(30,120,255)", 0.85),
}


def downsample_mask(mask: np.ndarray, step: int) -> np.ndarray:
    """Boolean (D,H,W) -> boolean block-max downsampled by ``step`` (small regions do not vanish)."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    mask = np.asarray(mask, dtype=bool)
    if step == 1:
        return mask
    pad = [(0, (-s) % step) for s in mask.shape]
    padded = np.pad(mask, pad)
    d, h, w = (s // step for s in padded.shape)
    return padded.reshape(d, step, h, step, w, step).any(axis=(1, 3, 5))


def surface(
    mask: np.ndarray, spacing: tuple[float, float, float], *, step: int = 2
) -> tuple[np.ndarray, np.ndarray] | None:
    """Triangle surface (vertices (N,3) in mm as (x=i, y=j, z=k), faces (M,3)) of a mask, None if empty."""
    small = downsample_mask(mask, step)
    if small.sum() == 0:
        return None
    # A one-voxel zero border closes surfaces that touch the volume edge.
    padded = np.pad(small.astype(np.float32), 1)
    verts, faces, _normals, _values = marching_cubes(
        padded, level=0.5, spacing=tuple(float(s) * step for s in spacing)
    )
    verts -= np.asarray([float(s) * step for s in spacing])  # undo the border offset
    # Case axes are (k, i, j); plot x=i, y=j, z=k so "up" is superior.
    return verts[:, [1, 2, 0]], faces


def region_meshes(
    label: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    regions: tuple[str, ...] = ("WT", "TC", "ET"),
    step: int = 2,
) -> list[go.Mesh3d]:
    """BraTS label volume (D,H,W) -> one Mesh3d trace per non-empty region."""
    traces: list[go.Mesh3d] = []
    for region in regions:
        if region not in REGION_STYLE:
            raise ValueError(f"unknown region {region!r}; expected one of {tuple(REGION_STYLE)}")
        result = surface(np.isin(label, REGION_LABELS[region]), spacing, step=step)
        if result is None:
            continue
        verts, faces = result
        colour, opacity = REGION_STYLE[region]
        traces.append(
            go.Mesh3d(
                x=verts[:, 0],
                y=verts[:, 1],
                z=verts[:, 2],
                i=faces[:, 0],
                j=faces[:, 1],
                k=faces[:, 2],
                color=colour,
                opacity=opacity,
                name=region,
                showlegend=True,
                flatshading=False,
            )
        )
    return traces


def brain_mesh(image: np.ndarray, spacing: tuple[float, float, float], *, step: int = 4) -> go.Mesh3d | None:
    """Faint outline of the brain (any modality non-zero) to give the tumour surfaces context."""
    result = surface(np.any(np.asarray(image) != 0, axis=0), spacing, step=step)
    if result is None:
        return None
    verts, faces = result
    return go.Mesh3d(
        x=verts[:, 0],
        y=verts[:, 1],
        z=verts[:, 2],
        i=faces[:, 0],
        j=faces[:, 1],
        k=faces[:, 2],
        color="rgb(180,180,180)",
        opacity=0.08,
        name="brain",
        showlegend=True,
        hoverinfo="skip",
    )


def volume_figure(traces: list[go.Mesh3d], *, height: int = 520) -> go.Figure:
    fig = go.Figure(data=traces)
    fig.update_layout(
        height=height,
        margin=dict(l=0, r=0, t=30, b=0),
        scene=dict(aspectmode="data", xaxis_title="x (mm)", yaxis_title="y (mm)", zaxis_title="z (mm)"),
        legend=dict(orientation="h"),
    )
    return fig
