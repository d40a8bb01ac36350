"""MRI contrast model of the synthetic phantoms: tissue maps -> four int16-valued modality images.

Intensities are drawn relative to white matter (WM = 1) per modality, with ranges taken from the
literature and checked against per-tissue means of a real BraTS 2021 case (oedema about 2x WM on
FLAIR and 1.8x on T2, enhancing tumour about 2x WM on T1ce, CSF about 0.3x on FLAIR and 3.8x on T2,
necrosis dark on T1/T1ce and bright on T2). Every case draws its own ratios, gamma, texture, bias
field, edge fall-off, noise level, blur and global scale/offset, so a model trained on phantoms sees
a wide range of scanners instead of one fixed look.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medvision.data.case import MODALITIES
from medvision.data.phantom_anatomy import Anatomy
from medvision.data.phantom_fields import smooth_noise, smoothstep
from medvision.data.phantom_tumour import TumourMaps

TISSUES: tuple[str, ...] = (
    "gm",
    "deep_gm",
    "csf",
    "oedema",
    "enhancing",
    "necrotic",
    "vessel",
    "choroid",
    "caps",
)

# (low, high) of each tissue's intensity relative to white matter, per modality.
CONTRAST_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "flair": {
        "gm": (1.0, 1.18),
        "deep_gm": (1.0, 1.12),
        "csf": (0.12, 0.45),
        "oedema": (1.5, 2.5),
        "enhancing": (1.4, 2.6),
        "necrotic": (0.8, 2.8),
        "vessel": (0.7, 1.2),
        "choroid": (1.0, 1.5),
        "caps": (1.1, 1.6),
    },
    "t1": {
        "gm": (0.6, 0.82),
        "deep_gm": (0.75, 0.92),
        "csf": (0.25, 0.55),
        "oedema": (0.7, 0.95),
        "enhancing": (0.8, 1.1),
        "necrotic": (0.4, 0.85),
        "vessel": (0.8, 1.2),
        "choroid": (0.8, 1.1),
        "caps": (0.9, 1.0),
    },
    "t1ce": {
        "gm": (0.62, 0.85),
        "deep_gm": (0.75, 0.92),
        "csf": (0.25, 0.5),
        "oedema": (0.7, 0.98),
        "enhancing": (1.5, 3.0),
        "necrotic": (0.35, 0.8),
        "vessel": (1.8, 4.0),
        "choroid": (1.5, 3.0),
        "caps": (0.9, 1.0),
    },
    "t2": {
        "gm": (1.02, 1.35),
        "deep_gm": (0.95, 1.2),
        "csf": (2.8, 4.5),
        "oedema": (1.5, 2.4),
        "enhancing": (1.4, 2.3),
        "necrotic": (1.8, 3.5),
        "vessel": (0.3, 0.8),
        "choroid": (1.0, 2.0),
        "caps": (1.1, 1.4),
    },
}
# White-matter level of each modality in scanner units (int16 images), before the random offset.
WM_LEVEL_RANGES: dict[str, tuple[float, float]] = {
    "flair": (400.0, 2500.0),
    "t1": (300.0, 2000.0),
    "t1ce": (400.0, 3000.0),
    "t2": (300.0, 1800.0),
}
INT16_MAX = 32767


@dataclass(frozen=True)
class ContrastParams:
    """Everything random about one case's appearance (relative to WM = 1 per modality)."""

    ratios: dict[str, dict[str, float]]
    gamma: dict[str, float]
    wm_level: dict[str, float]
    offset: dict[str, float]  # added to the relative image before scaling (fraction of WM)
    bias_strength: dict[str, float]
    noise_fraction: dict[str, float]  # Rician noise sigma / WM level
    texture: float  # amplitude of healthy-tissue texture
    tumour_texture: float  # amplitude of the (stronger) tumour heterogeneity
    edge_floor: float  # intensity factor at the brain surface (partial volume with the stripped skull)
    edge_width_mm: float
    blur_mm: tuple[float, float]  # Gaussian sigma (through-plane, in-plane); 0 = no blur


def sample_contrast(rng: np.random.Generator) -> ContrastParams:
    """Draw one case's appearance."""
    ratios = {m: {t: float(rng.uniform(*CONTRAST_RANGES[m][t])) for t in TISSUES} for m in MODALITIES}
    blur = (float(rng.uniform(0.0, 1.2)), float(rng.uniform(0.0, 0.6))) if rng.random() < 0.6 else (0.0, 0.0)
    return ContrastParams(
        ratios=ratios,
        gamma={m: float(rng.uniform(0.85, 1.2)) for m in MODALITIES},
        wm_level={m: float(rng.uniform(*WM_LEVEL_RANGES[m])) for m in MODALITIES},
        offset={m: float(rng.uniform(-0.05, 0.15)) for m in MODALITIES},
        bias_strength={m: float(rng.uniform(0.02, 0.12)) for m in MODALITIES},
        noise_fraction={m: float(rng.uniform(0.01, 0.05)) for m in MODALITIES},
        texture=float(rng.uniform(0.01, 0.04)),
        tumour_texture=float(rng.uniform(0.04, 0.15)),
        edge_floor=float(rng.uniform(0.35, 0.85)),
        edge_width_mm=float(rng.uniform(1.0, 3.5)),
        blur_mm=blur,
    )


def render_modalities(
    rng: np.random.Generator,
    anatomy: Anatomy,
    tumours: TumourMaps,
    params: ContrastParams,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """Paint the four modalities: (4, D, H, W) float32 of integer values, exactly 0 outside the brain."""
    index = anatomy.index
    n = index.size

    def field(cell_mm: float) -> np.ndarray:
        return smooth_noise(rng, anatomy.axes_mm, cell_mm).ravel()[index]

    fine = field(float(rng.uniform(2.0, 3.5)))
    coarse = field(float(rng.uniform(6.0, 10.0)))
    tumour_tex = field(float(rng.uniform(2.5, 5.0)))
    # Bias fields come mostly from the receive coil, so the modalities share two smooth components.
    bias_fields = (field(float(rng.uniform(45.0, 90.0))), field(float(rng.uniform(45.0, 90.0))))
    edge = params.edge_floor + (1.0 - params.edge_floor) * smoothstep(
        anatomy.depth, 0.0, params.edge_width_mm
    )
    wm, gm, deep, csf = anatomy.wm, anatomy.gm, anatomy.deep_gm, anatomy.csf
    blur = params.blur_mm[0] > 0 or params.blur_mm[1] > 0
    full_index = anatomy.full_index(shape)
    image = np.zeros((len(MODALITIES),) + tuple(shape), dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        r = params.ratios[modality]
        rel = wm + gm * r["gm"] + deep * r["deep_gm"] + csf * r["csf"]
        rel *= 1.0 + anatomy.periventricular * np.float32(r["caps"] - 1.0)
        for overlay, name in ((anatomy.vessel, "vessel"), (anatomy.choroid, "choroid")):
            rel += overlay * (np.float32(r[name]) - rel)
        # Texture: a per-modality mix of a fine and a coarse field (modalities correlated, not equal).
        angle = rng.uniform(0, 2 * np.pi)
        rel *= 1.0 + np.float32(params.texture) * (
            np.float32(np.cos(angle)) * fine + np.float32(np.sin(angle)) * coarse
        )

        tumour_rel = 1.0 + np.float32(params.tumour_texture) * tumour_tex
        oedema_value = np.float32(r["oedema"]) * tumour_rel
        rel += tumours.oedema * (oedema_value - rel)
        core_value = (
            np.float32(r["enhancing"]) + tumours.necrotic * np.float32(r["necrotic"] - r["enhancing"])
        ) * tumour_rel
        rel += tumours.core * (core_value - rel)

        np.maximum(rel, 0.01, out=rel)
        rel **= np.float32(params.gamma[modality])
        rel *= edge
        angle = rng.uniform(0, 2 * np.pi)
        bias = np.float32(np.cos(angle)) * bias_fields[0] + np.float32(np.sin(angle)) * bias_fields[1]
        rel *= np.exp(np.float32(params.bias_strength[modality]) * bias)
        rel += np.float32(params.offset[modality])

        level = np.float32(params.wm_level[modality])
        sigma = np.float32(params.noise_fraction[modality])
        # Rician magnitude noise: |signal + complex Gaussian|.
        real = rel + sigma * rng.standard_normal(n, dtype=np.float32)
        imag = sigma * rng.standard_normal(n, dtype=np.float32)
        values = np.sqrt(real * real + imag * imag) * level

        if blur:
            # Through-plane / in-plane resolution loss; the brain edge blends with the zero background.
            sigma_vox = [
                params.blur_mm[0] / spacing[0],
                params.blur_mm[1] / spacing[1],
                params.blur_mm[1] / spacing[2],
            ]
            values = ndimage.gaussian_filter(anatomy.to_crop(values), sigma_vox, truncate=2.5).ravel()[index]
        np.rint(values, out=values)
        np.clip(values, 1, INT16_MAX, out=values)
        image[channel].reshape(-1)[full_index] = values
    return image
