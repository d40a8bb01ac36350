"""Training data from a prepared store: a torch Dataset of slices, and a whole-selection loader.

`SliceDataset` reads one slice (plus optional neighbours) per item through an HDF5 handle opened
lazily in each DataLoader worker (h5py handles must not cross a fork). `load_store_tensors` loads a
whole selection at once for the trainer's GPU fast path, which then samples and augments on the GPU
(`gather_slices` builds the same channels there as the Dataset does here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from medvision.data.augment import AugmentConfig, augment_batch
from medvision.data.case import MODALITIES
from medvision.data.regions import TARGET_TABLE, labels_to_masks, target_spec
from medvision.data.store import SliceStore
from medvision.errors import InputDataError

log = logging.getLogger(__name__)

# Slice-table column that says whether a slice holds tumour for the target (drives oversampling).
TUMOUR_COLUMN: dict[str, str] = {name: spec.tumour_column for name, spec in TARGET_TABLE.items()}


def _check_target(target: str) -> None:
    target_spec(target)  # ValueError naming the known targets


def target_channels(target: str) -> int:
    """Number of target channels: 3 for regions (WT, TC, ET), 1 for wt and necrotic."""
    return target_spec(target).channels


def labels_to_target(label: np.ndarray, target: str) -> np.ndarray:
    """BraTS labels (..., H, W) -> float32 target (T, ..., H, W) of 0/1 (channels: data.regions)."""
    return labels_to_masks(label, target).astype(np.float32)


def labels_to_target_torch(labels: torch.Tensor, target: str) -> torch.Tensor:
    """(B, H, W) integer BraTS labels on any device -> float32 target (B, T, H, W)."""
    channels = []
    for values in target_spec(target).labels:
        hit = torch.zeros_like(labels, dtype=torch.bool)
        for v in values:
            hit |= labels == v
        channels.append(hit)
    return torch.stack(channels, dim=1).float()


def neighbour_offsets(neighbours: int) -> list[int]:
    """Slice offsets stacked as channel blocks, in order: -n, ..., 0, ..., +n."""
    return list(range(-neighbours, neighbours + 1))


def centre_channels(neighbours: int) -> slice:
    """The channels of the centre slice (4 modalities) in an image with `neighbours` neighbours."""
    start = len(MODALITIES) * neighbours
    return slice(start, start + len(MODALITIES))


def fit_to_patch(array: np.ndarray, patch_size: tuple[int, int]) -> np.ndarray:
    """Zero-pad and/or centre-crop the last two axes to `patch_size` (zero is the background)."""
    out_h, out_w = patch_size
    h, w = array.shape[-2:]
    result = np.zeros(array.shape[:-2] + (out_h, out_w), dtype=array.dtype)
    # Offsets of the source window and of its place in the output: crop when larger, pad when smaller.
    sh, dh = max((h - out_h) // 2, 0), max((out_h - h) // 2, 0)
    sw, dw = max((w - out_w) // 2, 0), max((out_w - w) // 2, 0)
    ch, cw = min(h, out_h), min(w, out_w)
    result[..., dh : dh + ch, dw : dw + cw] = array[..., sh : sh + ch, sw : sw + cw]
    return result


def default_patch_size(store_path: str | Path, multiple: int = 16) -> tuple[int, int]:
    """Largest stored (h, w) over ALL cases of the store, rounded up to `multiple` (U-Net friendly).

    Taken over the whole store, not a selection, so train and validation sets agree.
    """
    with SliceStore(store_path) as store:
        sizes = np.array([store.case_meta(c)["stored_shape"][1:] for c in store.case_ids])
    h, w = sizes.max(axis=0)
    return int(-(-h // multiple) * multiple), int(-(-w // multiple) * multiple)


def _select_rows(table: pd.DataFrame, case_ids: Sequence[str], store_path: Path) -> pd.DataFrame:
    known = set(table["case_id"])
    missing = [c for c in case_ids if c not in known]
    if missing:
        raise InputDataError(store_path, f"cases not in the store: {missing[:5]}")
    rows = table[table["case_id"].isin(set(case_ids))]
    unlabelled = sorted(set(rows.loc[~rows["labelled"], "case_id"]))
    if unlabelled:
        problem = f"cases without labels cannot be used for training: {unlabelled[:5]}"
        raise InputDataError(store_path, problem)
    # Keep the caller's case order, slices ascending, so indices are reproducible.
    order = {c: i for i, c in enumerate(case_ids)}
    rows = rows.assign(_order=rows["case_id"].map(order)).sort_values(["_order", "slice_index"])
    return rows.drop(columns="_order").reset_index(drop=True)


class SliceDataset(Dataset):
    """Slices of the given cases of a store, as dict(image (C, H, W) float32, target (T, H, W) float32,
    case_id, slice_index), C = 4 * (1 + 2 * neighbours) in `neighbour_offsets` order.

    tumour_fraction: expected fraction of samples drawn from slices containing the target's tumour
    when sampling with `sampler()` / `sample_weights()`; None keeps the natural frequency.
    """

    def __init__(
        self,
        store_path: str | Path,
        case_ids: Sequence[str],
        *,
        target: str = "regions",
        patch_size: tuple[int, int] | None = None,
        neighbours: int = 0,
        tumour_fraction: float | None = 0.5,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        _check_target(target)
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}")
        if tumour_fraction is not None and not 0.0 <= tumour_fraction <= 1.0:
            raise ValueError(f"tumour_fraction must be in [0, 1] or None, got {tumour_fraction}")
        if patch_size is not None and (len(patch_size) != 2 or min(patch_size) < 1):
            raise ValueError(f"patch_size must be (H, W) of positive ints, got {patch_size}")
        if not case_ids:
            raise ValueError("case_ids is empty")
        self.store_path = Path(store_path)
        self.target = target
        self.neighbours = neighbours
        self.tumour_fraction = tumour_fraction
        self.augment = augment
        self.seed = seed
        self.patch_size = tuple(patch_size) if patch_size else default_patch_size(self.store_path)
        with SliceStore(self.store_path) as store:
            self.rows = _select_rows(store.slice_table(), list(case_ids), self.store_path)
            self._depth = {c: store.n_slices(c) for c in set(self.rows["case_id"])}
        self.case_ids = list(dict.fromkeys(self.rows["case_id"]))
        self.is_tumour = self.rows[TUMOUR_COLUMN[target]].to_numpy() > 0
        # Plain arrays: a pandas row lookup per item would cost more than the slice read.
        self._case_of = self.rows["case_id"].to_numpy(dtype=object)
        self._slice_of = self.rows["slice_index"].to_numpy(dtype=np.int64)
        self._store: SliceStore | None = None  # opened lazily, once per process (DataLoader worker)
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def channels(self) -> int:
        return len(MODALITIES) * (1 + 2 * self.neighbours)

    def _open(self) -> SliceStore:
        # A handle inherited through fork is not safe to use: reopen in every new process.
        if self._store is None or self._pid != os.getpid():
            self._store = SliceStore(self.store_path)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        state["_pid"] = None
        return state

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` without augmentation: (image (C, H, W) float32, label (H, W) uint8)."""
        case_id, k = str(self._case_of[index]), int(self._slice_of[index])
        store = self._open()
        depth = self._depth[case_id]
        blocks = []
        label = None
        for offset in neighbour_offsets(self.neighbours):
            j = min(max(k + offset, 0), depth - 1)  # edge slices repeat at the volume's ends
            image, lab = store.read_slice(case_id, j)
            blocks.append(image)
            if offset == 0:
                label = lab
        if label is None:
            raise InputDataError(self.store_path, f"case {case_id!r} slice {k} has no label")
        image = np.concatenate(blocks, axis=0)
        if not np.isfinite(image).all():
            raise InputDataError(self.store_path, f"case {case_id!r} slice {k} has non-finite values")
        return fit_to_patch(image, self.patch_size), fit_to_patch(label, self.patch_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.read(index)
        image_t = torch.from_numpy(image)
        target_t = torch.from_numpy(labels_to_target(label, self.target))
        if self.augment is not None:
            augmented, target_aug = augment_batch(image_t[None], target_t[None], self.augment)
            image_t, target_t = augmented[0], target_aug[0]
        return {
            "image": image_t,
            "target": target_t,
            "case_id": str(self._case_of[index]),
            "slice_index": int(self._slice_of[index]),
        }

    def sample_weights(self) -> np.ndarray:
        """Per-item weights (sum 1) giving tumour slices `tumour_fraction` of the draws."""
        return tumour_weights(self.is_tumour, self.tumour_fraction)

    def sampler(self, num_samples: int | None = None, epoch: int = 0) -> WeightedRandomSampler:
        """A WeightedRandomSampler (with replacement) over this dataset, seeded by (seed, epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return WeightedRandomSampler(
            torch.as_tensor(self.sample_weights(), dtype=torch.double),
            num_samples=num_samples or len(self),
            replacement=True,
            generator=generator,
        )


def tumour_weights(is_tumour: np.ndarray, tumour_fraction: float | None) -> np.ndarray:
    """Weights (sum 1) so that a weighted draw hits a tumour slice with probability `tumour_fraction`.

    Uniform when `tumour_fraction` is None or when one of the two groups is empty.
    """
    is_tumour = np.asarray(is_tumour, dtype=bool)
    n = len(is_tumour)
    n_tumour = int(is_tumour.sum())
    if tumour_fraction is None or n_tumour in (0, n):
        return np.full(n, 1.0 / n)
    return np.where(is_tumour, tumour_fraction / n_tumour, (1.0 - tumour_fraction) / (n - n_tumour))


def load_store_tensors(
    store_path: str | Path,
    case_ids: Sequence[str],
    patch_size: tuple[int, int] | None = None,
    neighbours: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Load every slice of `case_ids` at once: (images float16 (N, 4, H, W), labels uint8 (N, H, W), meta).

    Images hold the 4 modalities of each slice only; neighbour channels are gathered on the fly
    with `gather_slices(images, meta["neighbour_index"], rows)`, which avoids storing each slice
    (1 + 2 * neighbours) times. meta: "case_id" (list[str]), "slice_index" (int64 array),
    "neighbour_index" (LongTensor (N, 1 + 2n), row of each offset in `neighbour_offsets` order,
    clamped at the volume ends), "table" (the slice-table rows, pandas), "patch_size".
    """
    store_path = Path(store_path)
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    patch = tuple(patch_size) if patch_size else default_patch_size(store_path)
    with SliceStore(store_path) as store:
        rows = _select_rows(store.slice_table(), list(case_ids), store_path)
        n = len(rows)
        images = torch.empty((n, len(MODALITIES), *patch), dtype=torch.float16)
        labels = torch.empty((n, *patch), dtype=torch.uint8)
        neighbour_index = torch.empty((n, 1 + 2 * neighbours), dtype=torch.long)
        start = 0
        for case_id in dict.fromkeys(rows["case_id"]):
            image = store.read_image(case_id)  # (4, D, h, w) float16: one read per case
            label = store.read_label(case_id)
            depth = image.shape[1]
            if not np.isfinite(image).all():
                raise InputDataError(store_path, f"case {case_id!r} has non-finite values")
            images[start : start + depth] = torch.from_numpy(fit_to_patch(image.transpose(1, 0, 2, 3), patch))
            labels[start : start + depth] = torch.from_numpy(fit_to_patch(label, patch))
            k = np.arange(depth)[:, None] + np.array(neighbour_offsets(neighbours))[None, :]
            neighbour_index[start : start + depth] = torch.from_numpy(start + np.clip(k, 0, depth - 1))
            start += depth
    if start != n:
        raise InputDataError(store_path, "slice table and stored volumes disagree")
    meta = {
        "case_id": rows["case_id"].tolist(),
        "slice_index": rows["slice_index"].to_numpy(dtype=np.int64),
        "neighbour_index": neighbour_index,
        "table": rows,
        "patch_size": patch,
    }
    log.info("loaded %d slices of %d cases from %s", n, len(set(meta["case_id"])), store_path)
    return images, labels, meta


def gather_slices(images: torch.Tensor, neighbour_index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Batch (B, 4 * (1 + 2n), H, W) float32 for slice rows `rows`, channels as in SliceDataset."""
    index = neighbour_index.to(images.device)[rows.to(images.device)]  # (B, 1 + 2n)
    batch = images[index]  # (B, 1 + 2n, 4, H, W)
    return batch.flatten(1, 2).float()
