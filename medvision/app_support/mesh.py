"""3-D surfaces of segmented regions for the rotatable viewer (marching cubes -> plotly Mesh3d).

Marching cubes runs on a downsampled mask so a full 240x240x155 case gives a few tens of thousands of
triangles (interactive in a browser) and takes well under a second on a laptop CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
from skimage.measure import marching_cubes

from medvision.data.case import CASE_AXIS_TO_VOXEL, REGION_LABELS

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


def to_world(case_voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 3) points in case array voxel coordinates (D, H, W order) -> world RAS+ mm through the affine."""
    voxels = np.empty_like(case_voxels, dtype=np.float64)
    voxels[:, list(CASE_AXIS_TO_VOXEL)] = case_voxels  # back to the file's (i, j, k) order
    affine = np.asarray(affine, dtype=np.float64)
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def surface(mask: np.ndarray, affine: np.ndarray, *, step: int = 2) -> tuple[np.ndarray, np.ndarray] | None:
    """Triangle surface of a (D, H, W) mask, None if empty: vertices (N, 3) in world mm (x toward the
    patient's right, y anterior, z superior, read from the affine whatever the array's order) and
    faces (M, 3)."""
    small = downsample_mask(mask, step)
    if small.sum() == 0:
        return None
    # A one-voxel zero border closes surfaces that touch the volume edge.
    padded = np.pad(small.astype(np.float32), 1)
    verts, faces, _normals, _values = marching_cubes(padded, level=0.5, spacing=(float(step),) * 3)
    verts -= float(step)  # undo the border offset: now voxel indices of the full-size array
    return to_world(verts, affine), faces


def region_meshes(
    label: np.ndarray,
    affine: np.ndarray,
    *,
    regions: tuple[str, ...] = ("WT", "TC", "ET"),
    step: int = 2,
) -> list[go.Mesh3d]:
    """BraTS label volume (D,H,W) -> one Mesh3d trace per non-empty region."""
    traces: list[go.Mesh3d] = []
    for region in regions:
        if region not in REGION_STYLE:
            raise ValueError(f"unknown region {region!r}; expected one of {tuple(REGION_STYLE)}")
        result = surface(np.isin(label, REGION_LABELS[region]), affine, step=step)
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


def brain_mesh(image: np.ndarray, affine: np.ndarray, *, step: int = 4) -> go.Mesh3d | None:
    """Faint outline of the brain (any modality non-zero) to give the tumour surfaces context."""
    result = surface(np.any(np.asarray(image) != 0, axis=0), affine, step=step)
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
        scene=dict(
            aspectmode="data",
            xaxis_title="x (mm): L → R",
            yaxis_title="y (mm): P → A",
            zaxis_title="z (mm): I → S",
        ),
        legend=dict(orientation="h"),
    )
    return fig
