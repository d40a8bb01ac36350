"""Modality dropout: train one network for every subset of FLAIR/T1/T1ce/T2.

Each training slice, with probability ``p``, keeps only a random non-empty subset of its modalities (drawn
uniformly from the 15); the dropped channels, in every neighbour block, become zeros, and the four
availability planes of ``medvision.data.modality_sets`` are appended. With ``p = 0`` nothing is dropped
but the planes are still appended (all ones), so the same network can be given a subset later.
"""

from __future__ import annotations

import torch

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import SUBSETS

N_MODALITIES = len(MODALITIES)


def _subset_masks(device: torch.device) -> torch.Tensor:
    """(15, 4) float: row s is 1 for the modalities of SUBSETS[s]."""
    rows = [[1.0 if m in subset else 0.0 for m in MODALITIES] for subset in SUBSETS]
    return torch.tensor(rows, device=device)


def draw_availability(batch: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(batch, 4) 0/1 availability: all ones, or with probability ``p`` a uniformly drawn subset."""
    masks = _subset_masks(device)
    choice = torch.randint(len(SUBSETS), (batch,), generator=generator, device=device)
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


def drop_modalities(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """One training batch through modality dropout (see the module docstring)."""
    availability = draw_availability(images.shape[0], p, generator, images.device)
    return apply_availability(images, availability)
