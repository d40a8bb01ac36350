"""Where the trainer's batches come from: a sampling plan over slice rows, and two ways to load them.

The plan (which rows make up each step of an epoch) is a pure function of (seed, epoch, rank), so a
resumed run replays the exact same batches and every DDP rank draws its own share. Loading is either

- in memory (:class:`MemorySlices`): the selected slices as float16 tensors on the training device,
  gathered by index (the GPU fast path: loading never starves the GPU; also fast on CPU for small stores),
- or streamed (:class:`LoaderSlices`): a DataLoader over SliceDataset with workers and pinned memory,
  fed the same plan through ``batch_sampler``.

Both yield ``(images float32 (B, C, H, W), targets float32 (B, T, H, W))`` on the device, unaugmented:
the trainer augments whole batches there with ``augment_batch`` (one code path, reproducible generator).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medvision.data.augment import AugmentConfig
from medvision.data.case import MODALITIES
from medvision.data.dataset import (
    TUMOUR_COLUMN,
    SliceDataset,
    default_patch_size,
    gather_slices,
    labels_to_target_torch,
    load_store_tensors,
    tumour_weights,
)
from medvision.data.store import SliceStore

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def augment_config(level: str) -> AugmentConfig:
    """The AugmentConfig behind TrainConfig.augment ('none' | 'light' | 'strong')."""
    if level == "none":
        return AugmentConfig.off()
    if level == "light":
        return AugmentConfig(
            p_flip=0.5,
            p_affine=0.3,
            rotate_deg=10.0,
            scale=(0.95, 1.05),
            p_elastic=0.0,
            p_intensity=0.3,
            intensity_scale=0.1,
            intensity_shift=0.1,
            p_noise=0.1,
            noise_std=0.05,
        )
    if level == "strong":
        return AugmentConfig(
            p_flip=0.5,
            p_affine=0.6,
            rotate_deg=20.0,
            scale=(0.85, 1.15),
            p_elastic=0.2,
            elastic_alpha=2.0,
            elastic_sigma=8.0,
            p_intensity=0.5,
            intensity_scale=0.15,
            intensity_shift=0.15,
            p_noise=0.3,
            noise_std=0.05,
        )
    raise ValueError(f"augment must be none, light or strong, got {level!r}")


class EpochPlan:
    """Row indices for every step of an epoch on one rank: ``rows(epoch) -> (steps, batch)`` int64.

    With ``tumour_fraction`` None each epoch is one shuffled pass (shared permutation, rank r takes
    every world-th batch slot, like DistributedSampler), cycled when more steps are asked for; otherwise
    rows are drawn with replacement so tumour slices make up ``tumour_fraction`` of the draws.
    """

    def __init__(
        self,
        candidates: np.ndarray,
        is_tumour: np.ndarray,
        *,
        batch_size: int,
        steps_per_epoch: int,
        tumour_fraction: float | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(candidates) == 0:
            raise ValueError("no training slices to sample from")
        self.candidates = np.asarray(candidates, dtype=np.int64)
        self.weights = tumour_weights(np.asarray(is_tumour)[self.candidates], tumour_fraction)
        self.tumour_fraction = tumour_fraction
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def rows(self, epoch: int) -> np.ndarray:
        steps, batch = self.steps_per_epoch, self.batch_size
        if self.tumour_fraction is None:
            shared = np.random.default_rng([self.seed, epoch, 7])
            need = steps * batch * self.world_size
            passes = math.ceil(need / len(self.candidates))
            order = np.concatenate([shared.permutation(self.candidates) for _ in range(passes)])[:need]
            return order.reshape(steps, self.world_size, batch)[:, self.rank]
        rng = np.random.default_rng([self.seed, epoch, self.rank, 11])
        return rng.choice(self.candidates, size=(steps, batch), replace=True, p=self.weights)


def random_crop(
    images: torch.Tensor, targets: torch.Tensor, size: tuple[int, int], generator: torch.Generator
) -> Batch:
    """A random (H, W) window per sample of (B, C, H0, W0) images and targets, in one gather."""
    b, _, h0, w0 = images.shape
    h, w = size
    if (h0, w0) == (h, w):
        return images, targets
    if h > h0 or w > w0:
        raise ValueError(f"crop {size} larger than the slices {(h0, w0)}")
    device = images.device
    top = torch.randint(0, h0 - h + 1, (b,), generator=generator, device=generator.device).to(device)
    left = torch.randint(0, w0 - w + 1, (b,), generator=generator, device=generator.device).to(device)
    rows = (top[:, None] + torch.arange(h, device=device))[:, :, None]  # (B, h, 1)
    cols = (left[:, None] + torch.arange(w, device=device))[:, None, :]  # (B, 1, w)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (B, h, w, C) -> (B, C, h, w).
    crop_images = images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    crop_targets = targets.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    return crop_images, crop_targets


def load_size(store_path: Path, patch_size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Slices are held at the store's largest slice size (rounded up to ``multiple``), at least the patch:
    training takes random patch-size crops of them, validation sees them whole."""
    stored = default_patch_size(store_path, multiple)
    return max(patch_size[0], stored[0]), max(patch_size[1], stored[1])


def estimate_bytes(n_slices: int, patch_size: tuple[int, int]) -> int:
    """Memory of n slices held as float16 images (4 channels) + uint8 labels."""
    h, w = patch_size
    return n_slices * h * w * (2 * len(MODALITIES) + 1)


def fits_in_memory(
    n_slices: int, patch_size: tuple[int, int], device: torch.device, budget_gb: float
) -> bool:
    """Whether the in-memory path fits: half the free GPU memory on CUDA, ``budget_gb`` of RAM on CPU."""
    need = estimate_bytes(n_slices, patch_size)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need < 0.5 * free
    return need < budget_gb * 1024**3


class MemorySlices:
    """Every slice of some cases as tensors on ``device``; ``batch(rows)`` gathers them and builds the
    targets there."""

    def __init__(
        self,
        store_path: Path,
        case_ids: Sequence[str],
        *,
        target: str,
        patch_size: tuple[int, int],
        neighbours: int,
        device: torch.device,
    ) -> None:
        images, labels, meta = load_store_tensors(store_path, case_ids, patch_size, neighbours)
        non_blocking = device.type == "cuda"
        self.images = images.to(device, non_blocking=non_blocking)
        self.labels = labels.to(device, non_blocking=non_blocking)
        self.neighbour_index = meta["neighbour_index"].to(device)
        table = meta["table"]
        self.is_tumour = table[TUMOUR_COLUMN[target]].to_numpy() > 0
        self.brain = table["brain_pixels"].to_numpy() > 0
        self.wt_pixels = table["pixels_wt"].to_numpy()
        self.case_id = list(meta["case_id"])
        self.slice_index = np.asarray(meta["slice_index"])
        self.target = target
        self.device = device

    def __len__(self) -> int:
        return len(self.case_id)

    def batch(self, rows: np.ndarray | torch.Tensor) -> Batch:
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.device)
        images = gather_slices(self.images, self.neighbour_index, index)
        targets = labels_to_target_torch(self.labels[index], self.target)
        return images, targets

    def iterate(self, plan: np.ndarray) -> Iterator[Batch]:
        for rows in plan:
            yield self.batch(rows)


class LoaderSlices:
    """The same interface streamed from the store by a DataLoader (workers + pinned memory)."""

    def __init__(
        self,
        store_path: Path,
        case_ids: Sequence[str],
        *,
        target: str,
        patch_size: tuple[int, int],
        neighbours: int,
        device: torch.device,
        workers: int,
    ) -> None:
        # Sampling and augmentation happen in the trainer, so the dataset reads exactly the rows asked for.
        self.dataset = SliceDataset(
            store_path,
            case_ids,
            target=target,
            patch_size=patch_size,
            neighbours=neighbours,
            tumour_fraction=None,
            augment=None,
        )
        rows = self.dataset.rows
        self.is_tumour = self.dataset.is_tumour
        self.brain = rows["brain_pixels"].to_numpy() > 0
        self.wt_pixels = rows["pixels_wt"].to_numpy()
        self.case_id = rows["case_id"].tolist()
        self.slice_index = rows["slice_index"].to_numpy()
        self.device = device
        self.workers = workers

    def __len__(self) -> int:
        return len(self.dataset)

    def _to_device(self, item: dict) -> Batch:
        non_blocking = self.device.type == "cuda"
        return (
            item["image"].to(self.device, non_blocking=non_blocking),
            item["target"].to(self.device, non_blocking=non_blocking),
        )

    def batch(self, rows: np.ndarray | torch.Tensor) -> Batch:
        items = [self.dataset[int(r)] for r in np.asarray(rows)]
        images = torch.stack([it["image"] for it in items])
        targets = torch.stack([it["target"] for it in items])
        return self._to_device({"image": images, "target": targets})

    def iterate(self, plan: np.ndarray) -> Iterator[Batch]:
        if len(plan) == 0:
            return
        loader = DataLoader(
            self.dataset,
            batch_sampler=[[int(r) for r in rows] for rows in plan],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.workers > 0 else None,
            # Its own generator: a DataLoader otherwise draws its base seed from the global torch RNG,
            # which would shift dropout masks and break exact resume.
            generator=torch.Generator().manual_seed(0),
        )
        for item in loader:
            yield self._to_device(item)


def make_slices(
    store_path: Path,
    case_ids: Sequence[str],
    *,
    target: str,
    patch_size: tuple[int, int],
    neighbours: int,
    device: torch.device,
    workers: int,
    in_memory: str,
    budget_gb: float,
) -> MemorySlices | LoaderSlices:
    """In-memory slices when asked to or when they fit ('auto'), else a streaming DataLoader."""
    kwargs = dict(target=target, patch_size=patch_size, neighbours=neighbours, device=device)
    if in_memory == "never":
        use_memory = False
    elif in_memory == "always":
        use_memory = True
    else:
        with SliceStore(store_path) as store:
            table = store.slice_table()
        n = int(table["case_id"].isin(set(case_ids)).sum())
        use_memory = fits_in_memory(n, patch_size, device, budget_gb)
    if use_memory:
        slices: MemorySlices | LoaderSlices = MemorySlices(store_path, case_ids, **kwargs)
    else:
        slices = LoaderSlices(store_path, case_ids, workers=workers, **kwargs)
    logger.info(
        "%d slices of %d cases %s",
        len(slices),
        len(case_ids),
        "held in memory on " + str(device) if use_memory else f"streamed by {workers} DataLoader workers",
    )
    return slices
