"""Smooth random fields and small geometry helpers for the synthetic phantoms.

Every smooth field is iid normal noise on a coarse grid (one node per ``cell_mm``) interpolated to the
voxels with separable cubic B-spline weights. The interpolation is three small matrix products, which
is much faster than ``scipy.ndimage.zoom`` with splines on a 9-million-voxel volume and has no creases
(linear interpolation would leave visible grid-aligned kinks in tissue boundaries drawn from the field).
"""

from __future__ import annotations

import numpy as np


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline kernel (support |t| < 2)."""
    a = np.abs(t)
    out = np.zeros_like(a)
    near = a < 1
    far = (a >= 1) & (a < 2)
    out[near] = (4 - 6 * a[near] ** 2 + 3 * a[near] ** 3) / 6
    out[far] = (2 - a[far]) ** 3 / 6
    return out


def _interp_matrix(coords_mm: np.ndarray, cell_mm: float) -> np.ndarray:
    """(n_out, n_nodes) weights from coarse nodes to ``coords_mm``, rows scaled to unit sum of squares.

    With iid unit-normal nodes the interpolated field then has variance exactly 1 at every voxel
    (plain B-spline weights would make the variance ripple with the grid phase).
    """
    lo = float(coords_mm.min()) - 2 * cell_mm
    n_nodes = int(np.ceil((float(coords_mm.max()) + 2 * cell_mm - lo) / cell_mm)) + 1
    nodes = lo + cell_mm * np.arange(n_nodes)
    weights = _bspline3((coords_mm[:, None] - nodes[None, :]) / cell_mm)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def smooth_noise(
    rng: np.random.Generator,
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    cell_mm: float | tuple[float, float, float],
) -> np.ndarray:
    """Unit-variance smooth random field (float32) sampled on the grid ``axes_mm`` (one 1-D array per axis).

    ``cell_mm`` sets the correlation length (about one cell); a tuple gives one per axis.
    """
    cells = (cell_mm,) * 3 if np.isscalar(cell_mm) else tuple(cell_mm)  # type: ignore[arg-type]
    mats = [
        _interp_matrix(np.asarray(ax, dtype=np.float64), float(c))
        for ax, c in zip(axes_mm, cells, strict=True)
    ]
    grid = rng.standard_normal(tuple(m.shape[1] for m in mats), dtype=np.float32)
    (g0, g1, g2), (n0, n1, n2) = grid.shape, (m.shape[0] for m in mats)
    # Three plain 2-D products (one BLAS call each): a batched matmul makes one call per slab, and
    # multithreaded BLAS start-up on many tiny products was 100x slower on a busy 2-core machine.
    field = grid.reshape(g0 * g1, g2) @ mats[2].T  # (g0*g1, n2)
    field = field.reshape(g0, g1, n2).transpose(1, 0, 2).reshape(g1, g0 * n2)
    field = mats[1] @ field  # (n1, g0*n2)
    field = field.reshape(n1, g0, n2).transpose(1, 0, 2).reshape(g0, n1 * n2)
    return np.ascontiguousarray((mats[0] @ field).reshape(n0, n1, n2), dtype=np.float32)


def smoothstep(x: np.ndarray | float, edge0: float | np.ndarray, edge1: float | np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1`` (or reversed if edge0 > edge1), smooth cubic in between (float32).

    Written with in-place operations: it is the most called function of the phantom generator.
    """
    t = np.subtract(x, edge0, dtype=np.float32)
    t *= np.float32(1.0) / np.subtract(edge1, edge0, dtype=np.float32)
    np.clip(t, 0.0, 1.0, out=t)
    s = np.multiply(t, -2.0, dtype=np.float32)
    s += 3.0
    s *= t
    s *= t
    return s


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation matrix (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def ellipsoid_depth(
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float | np.ndarray, float, float],
    wobble: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Approximate signed depth in mm (positive inside) below the surface of a deformed ellipsoid.

    The surface is ``rho = 1 + wobble`` with ``rho`` the normalised ellipsoidal radius; depth is
    ``(1 + wobble - rho) / |grad rho|``, the first-order distance to that surface, so a cortical
    ribbon drawn at a fixed depth has about the same thickness on the short and long axes.
    """
    # The first semi-axis may vary along axis 0 (e.g. a brain flatter below its equator).
    semi0 = np.broadcast_to(np.asarray(semi_axes_mm[0], dtype=np.float64), axes_mm[0].shape)[:, None, None]
    semi1, semi2 = float(semi_axes_mm[1]), float(semi_axes_mm[2])
    # 1-D pieces in float32 so the broadcast full-volume arithmetic stays float32.
    dz = ((axes_mm[0] - centre_mm[0])[:, None, None] / semi0).astype(np.float32)
    dy = ((axes_mm[1] - centre_mm[1]) / semi1)[None, :, None].astype(np.float32)
    dx = ((axes_mm[2] - centre_mm[2]) / semi2)[None, None, :].astype(np.float32)
    rho = np.sqrt(dz**2 + dy**2 + dx**2)
    gz, gy, gx = (dz / semi0).astype(np.float32), dy / np.float32(semi1), dx / np.float32(semi2)
    grad = np.sqrt(gz**2 + gy**2 + gx**2)
    # grad(rho) = (dz/a, dy/b, dx/c) / rho; guard the centre where both vanish.
    grad_norm = grad / np.maximum(rho, 1e-3)
    return ((1.0 + wobble - rho) / np.maximum(grad_norm, 1e-4)).astype(np.float32)


def noise_at_points(
    rng: np.random.Generator, points_mm: tuple[np.ndarray, np.ndarray, np.ndarray], cell_mm: float
) -> np.ndarray:
    """Unit-variance smooth random field evaluated at scattered points (1-D coordinate arrays, mm).

    The field is drawn on a regular grid at a quarter of ``cell_mm`` covering the points' bounding box
    and read with trilinear interpolation (smooth enough at that sampling; eight reads per point).
    """
    step = np.float32(cell_mm / 4.0)
    lows = [np.float32(p.min()) - step for p in points_mm]
    sizes = [int(np.ceil((float(p.max()) - lo) / step)) + 3 for p, lo in zip(points_mm, lows, strict=True)]
    axes = tuple(lo + step * np.arange(n) for lo, n in zip(lows, sizes, strict=True))
    grid = smooth_noise(rng, axes, cell_mm).ravel()  # type: ignore[arg-type]
    base = np.zeros(points_mm[0].shape, dtype=np.intp)
    fracs = []
    for axis, (p, lo) in enumerate(zip(points_mm, lows, strict=True)):
        position = (p - lo) / step
        cell = np.minimum(position.astype(np.intp), sizes[axis] - 2)
        fracs.append((position - cell).astype(np.float32))
        stride = int(np.prod(sizes[axis + 1 :]))
        base += cell * stride
    strides = (sizes[1] * sizes[2], sizes[2], 1)
    out = np.zeros(points_mm[0].shape, dtype=np.float32)
    for corner in range(8):
        bits = [(corner >> (2 - a)) & 1 for a in range(3)]
        weight = np.ones_like(out)
        for a in range(3):
            weight *= fracs[a] if bits[a] else 1.0 - fracs[a]
        out += weight * grid[base + sum(b * st for b, st in zip(bits, strides, strict=True))]
    return out
