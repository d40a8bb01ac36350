"""Modality dropout: train one network for every subset of FLAIR/T1/T1ce/T2.

Each training slice, with probability ``p``, keeps only a random non-empty subset of its modalities,
drawn from the 15 by the ``weighting``: "uniform" (each subset equally likely) or "inverse-size" (a subset
of k modalities weighted 1/k, so single modalities are 47% of the dropped slices instead of 27%), or one
named subset ("t1ce", "flair+t1ce") alone: with ``p = 1`` a network trained only for that input. The
dropped channels, in every neighbour block, become zeros, and the four availability planes of
``medvision.data.modality_sets`` are appended. With ``p = 0`` nothing is dropped but the planes are still
appended (all ones), so the same network can be given a subset later.
"""

from __future__ import annotations

import torch

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import SUBSETS, parse_subset
from medvision.train.config import SUBSET_WEIGHTINGS

N_MODALITIES = len(MODALITIES)


def _subset_masks(device: torch.device) -> torch.Tensor:
    """(15, 4) float: row s is 1 for the modalities of SUBSETS[s]."""
    rows = [[1.0 if m in subset else 0.0 for m in MODALITIES] for subset in SUBSETS]
    return torch.tensor(rows, device=device)


def subset_weights(weighting: str) -> torch.Tensor:
    """(15,) drawing weights of SUBSETS (summing to 1) for a ``weighting`` of SUBSET_WEIGHTINGS or a subset
    name (all the weight on that subset)."""
    if weighting not in SUBSET_WEIGHTINGS:
        try:
            only = parse_subset(weighting)
        except ValueError:
            raise ValueError(
                f"weighting must be one of {SUBSET_WEIGHTINGS} or a subset name, got {weighting!r}"
            ) from None
        return torch.tensor([1.0 if subset == only else 0.0 for subset in SUBSETS])
    sizes = torch.tensor([float(len(subset)) for subset in SUBSETS])
    weights = torch.ones_like(sizes) if weighting == "uniform" else 1.0 / sizes
    return weights / weights.sum()


def draw_availability(
    batch: int, p: float, generator: torch.Generator, device: torch.device, weighting: str = "uniform"
) -> torch.Tensor:
    """(batch, 4) 0/1 availability: all ones, or with probability ``p`` a subset drawn by ``weighting``."""
    masks = _subset_masks(device)
    if weighting == "uniform":  # randint, as before weightings existed: the same draws for the same seed
        choice = torch.randint(len(SUBSETS), (batch,), generator=generator, device=device)
    else:
        weights = subset_weights(weighting).to(device)
        choice = torch.multinomial(weights, batch, replacement=True, generator=generator)
    dropped = torch.rand(batch, generator=generator, device=device) < p
    full = torch.ones(batch, N_MODALITIES, device=device)
    return torch.where(dropped[:, None], masks[choice], full)


def apply_availability(images: torch.Tensor, availability: torch.Tensor) -> torch.Tensor:
    """(B, 4*(1+2n), H, W) images and (B, 4) availability -> (B, 4*(1+2n) + 4, H, W) network input."""
    blocks = images.shape[1] // N_MODALITIES
    if blocks * N_MODALITIES != images.shape[1]:
        raise ValueError(f"image channels {images.shape[1]} are not a multiple of {N_MODALITIES}")
    keep = availability.to(images.dtype).repeat(1, blocks)[:, :, None, None]
    planes = availability.to(images.dtype)[:, :, None, None].expand(-1, -1, *images.shape[-2:])
    return torch.cat([images * keep, planes], dim=1)


def drop_modalities(
    images: torch.Tensor, p: float, generator: torch.Generator, weighting: str = "uniform"
) -> torch.Tensor:
    """One training batch through modality dropout (see the module docstring)."""
    availability = draw_availability(images.shape[0], p, generator, images.device, weighting)
    return apply_availability(images, availability)
