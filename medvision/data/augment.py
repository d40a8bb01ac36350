"""Batched data augmentation for 2-D slices that runs on whatever device the batch is on.

The trainer's GPU fast path keeps the whole store on the GPU, so augmentation must not go through
NumPy or PIL: everything here is torch (plus kornia's Gaussian smoothing for the elastic field).
Each sample gets its own random flip, rotation, scale and elastic field; the spatial part is folded
into ONE sampling grid per sample so images are interpolated once (bilinear) and targets with the
very same grid (nearest, so they stay binary). Intensity changes touch images only, and only the
brain (non-zero voxels), so the zero background the model sees at inference is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.filters
import torch
import torch.nn.functional as F

from medvision.data.case import MODALITIES


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per sample) and ranges of each augmentation. ``AugmentConfig.off()`` does nothing.

    flip_dims: tensor dims flipped (each with p_flip, independently). The default (-2,) is the H axis,
    which is NIfTI axis i: left-right in BraTS orientation, the anatomically plausible flip.
    elastic_alpha: standard deviation of the elastic displacement in pixels; elastic_sigma: its
    smoothness (Gaussian sigma in pixels).
    intensity_scale/shift: brain voxels of each modality become x * (1 + U(-s, s)) + U(-t, t).
    """

    p_flip: float = 0.5
    flip_dims: tuple[int, ...] = (-2,)
    p_affine: float = 0.5
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    p_elastic: float = 0.0
    elastic_alpha: float = 2.0
    elastic_sigma: float = 8.0
    p_intensity: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    p_noise: float = 0.2
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("p_flip", "p_affine", "p_elastic", "p_intensity", "p_noise"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not set(self.flip_dims) <= {-2, -1}:
            raise ValueError(f"flip_dims must be a subset of (-2, -1), got {self.flip_dims}")
        if self.rotate_deg < 0:
            raise ValueError(f"rotate_deg must be >= 0, got {self.rotate_deg}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")
        if self.elastic_alpha < 0 or self.elastic_sigma <= 0:
            raise ValueError("elastic_alpha must be >= 0 and elastic_sigma > 0")
        if not 0 <= self.intensity_scale < 1 or self.intensity_shift < 0:
            raise ValueError("intensity_scale must be in [0, 1) and intensity_shift >= 0")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @classmethod
    def off(cls) -> AugmentConfig:
        """A config that leaves every batch unchanged."""
        return cls(p_flip=0.0, p_affine=0.0, p_elastic=0.0, p_intensity=0.0, p_noise=0.0)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U(0, 1) numbers on `device`, drawn from `generator` (on its own device) when one is given."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _spatial_grid(
    cfg: AugmentConfig,
    n: int,
    height: int,
    width: int,
    use_affine: torch.Tensor,
    use_elastic: torch.Tensor,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(n, H, W, 2) sampling grid (normalised, align_corners=False): rotation + scale, plus elastic."""
    angle = (_uniform((n,), generator, device) * 2 - 1) * math.radians(cfg.rotate_deg)
    lo, hi = cfg.scale
    scale = lo + _uniform((n,), generator, device) * (hi - lo)
    angle = torch.where(use_affine, angle, torch.zeros_like(angle))
    scale = torch.where(use_affine, scale, torch.ones_like(scale))
    # The grid maps output -> source, so the source offset is the inverse: rotate back, divide by scale.
    # Work in pixel units (diag(W/2, H/2) converts from normalised) so rotation stays rigid on
    # non-square slices.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * height / width
    theta[:, 1, 0] = sin * width / height
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    if bool(use_elastic.any()):
        sigma = cfg.elastic_sigma
        ksize = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(height, width) // 2) - 1)
        ksize = max(ksize, 3)
        # A Gaussian with unit-sum weights shrinks white noise to std 1 / (2 sqrt(pi) sigma) in 2-D;
        # undo that so elastic_alpha is the displacement std in pixels.
        noise = _normal((n, 2, height, width), generator, device) * (2 * math.sqrt(math.pi) * sigma)
        field = kornia.filters.gaussian_blur2d(noise, (ksize, ksize), (sigma, sigma), border_type="reflect")
        field = field * cfg.elastic_alpha * use_elastic.float()[:, None, None, None]
        pixels_to_norm = torch.tensor([2.0 / width, 2.0 / height], device=device)
        grid = grid + field.permute(0, 2, 3, 1) * pixels_to_norm
    return grid


def _modality_factors(
    n: int, channels: int, amount: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(n, C, 1, 1) U(-amount, amount); neighbour-slice channels of one modality share a value."""
    groups = len(MODALITIES) if channels % len(MODALITIES) == 0 else channels
    values = (_uniform((n, groups), generator, device) * 2 - 1) * amount
    return values.repeat(1, channels // groups)[:, :, None, None]


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly augment a batch: images (B, C, H, W) -> float32, targets (B, T, H, W) keep their dtype.

    Channels are expected in the dataset's order (blocks of the 4 modalities, one block per slice),
    so intensity changes treat a modality the same in every neighbouring slice. `generator` makes the
    draw reproducible; without one the global torch RNG is used (seeded per DataLoader worker).
    """
    if images.ndim != 4 or targets.ndim != 4 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"expected (B, C, H, W) and (B, T, H, W), got {images.shape} and {targets.shape}")
    if images.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"image and target sizes differ: {images.shape[-2:]} vs {targets.shape[-2:]}")
    device = images.device
    n, channels, height, width = images.shape
    images = images.float()
    target_dtype = targets.dtype

    for dim in cfg.flip_dims:
        if cfg.p_flip > 0:
            flip = (_uniform((n,), generator, device) < cfg.p_flip)[:, None, None, None]
            images = torch.where(flip, images.flip(dim), images)
            targets = torch.where(flip, targets.flip(dim), targets)

    use_affine = _uniform((n,), generator, device) < cfg.p_affine
    use_elastic = _uniform((n,), generator, device) < cfg.p_elastic
    warp = use_affine | use_elastic
    if bool(warp.any()):
        # Only warped samples are resampled: the others stay bit-exact.
        index = torch.nonzero(warp).squeeze(1)
        grid = _spatial_grid(
            cfg, len(index), height, width, use_affine[index], use_elastic[index], generator, device
        )
        images = images.clone()
        images[index] = F.grid_sample(images[index], grid, mode="bilinear", align_corners=False)
        warped_targets = F.grid_sample(targets[index].float(), grid, mode="nearest", align_corners=False)
        targets = targets.clone()
        targets[index] = warped_targets.to(target_dtype)

    brain = (images != 0).any(dim=1, keepdim=True)
    if cfg.p_intensity > 0:
        use = (_uniform((n,), generator, device) < cfg.p_intensity)[:, None, None, None]
        scale = 1 + _modality_factors(n, channels, cfg.intensity_scale, generator, device)
        shift = _modality_factors(n, channels, cfg.intensity_shift, generator, device)
        images = torch.where(use & brain, images * scale + shift, images)
    if cfg.p_noise > 0 and cfg.noise_std > 0:
        use = (_uniform((n,), generator, device) < cfg.p_noise)[:, None, None, None]
        noise = _normal((n, channels, height, width), generator, device) * cfg.noise_std
        images = torch.where(use & brain, images + noise, images)
    return images, targets
