"""Splits, SliceDataset, whole-selection loading and batched augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medvision.data.augment import AugmentConfig, augment_batch
from medvision.data.case import Case, label_to_regions
from medvision.data.dataset import (
    SliceDataset,
    centre_channels,
    fit_to_patch,
    gather_slices,
    labels_to_target,
    labels_to_target_torch,
    load_store_tensors,
    target_channels,
    tumour_weights,
)
from medvision.data.splits import load_splits, make_splits, save_splits
from medvision.data.store import SliceStore, prepare_store
from medvision.errors import InputDataError


def make_case(
    case_id: str, seed: int, shape: tuple[int, int, int] = (10, 36, 40), *, labelled: bool = True
) -> Case:
    """Brain ellipsoid with random integer intensities and a nested tumour (ED > ET > NCR) blob."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.mgrid[:depth, :height, :width]
    cz, cy, cx = depth / 2, height / 2 + 2, width / 2 - 1
    brain = (
        ((z - cz) / (0.45 * depth)) ** 2
        + ((y - cy) / (0.35 * height)) ** 2
        + ((x - cx) / (0.35 * width)) ** 2
    ) <= 1
    image = np.zeros((4, *shape), np.float32)
    for m in range(4):
        image[m][brain] = rng.integers(100, 900, int(brain.sum()))
    r = np.sqrt((2 * (z - cz - 1)) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)  # flat: tumour on ~half the slices
    label = np.zeros(shape, np.uint8)
    label[(r < 4.5) & brain] = 2
    label[(r < 3) & brain] = 4
    label[(r < 1.6) & brain] = 1
    return Case(case_id, image, np.eye(4), (1.0, 1.0, 1.0), label if labelled else None)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cases = [make_case(f"P{i}", i, (10 + i, 36, 40)) for i in range(4)] + [make_case("U", 9, labelled=False)]
    return prepare_store(cases, tmp_path_factory.mktemp("ds") / "s.h5", workers=1, progress=False)


CASES = ["P0", "P1", "P2", "P3"]

# ---------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [3, 4, 7, 20, 369])
def test_splits_disjoint_complete_nonempty(n: int) -> None:
    ids = [f"case_{i:03d}" for i in range(n)]
    splits = make_splits(ids)
    assert set(splits) == {"train", "val", "test"}
    together = splits["train"] + splits["val"] + splits["test"]
    assert sorted(together) == sorted(ids) and len(together) == n
    assert all(splits[name] for name in splits)
    if n == 369:
        assert [len(splits[s]) for s in ("train", "val", "test")] == [258, 56, 55]


def test_splits_deterministic_and_order_independent() -> None:
    ids = [f"c{i}" for i in range(30)]
    a = make_splits(ids, seed=88)
    assert make_splits(list(reversed(ids)), seed=88) == a
    assert make_splits(ids, seed=7) != a


def test_splits_save_load(tmp_path: Path) -> None:
    splits = make_splits([f"c{i}" for i in range(10)])
    assert load_splits(save_splits(tmp_path / "splits.json", splits)) == splits
    (tmp_path / "bad.json").write_text('{"train": ["a"], "val": ["a"]}')
    with pytest.raises(InputDataError, match="more than one split"):
        load_splits(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(InputDataError):
        load_splits(tmp_path / "junk.json")
    with pytest.raises(ValueError):
        make_splits(["a", "b"], fractions=(0.5, 0.6, 0.1))


# --------------------------------------------------------------------------------------------- dataset


@pytest.mark.parametrize("target, channels", [("regions", 3), ("wt", 1), ("necrotic", 1)])
def test_dataset_targets(store: Path, target: str, channels: int) -> None:
    ds = SliceDataset(store, CASES, target=target, patch_size=(32, 48))
    assert target_channels(target) == channels
    with SliceStore(store) as s:
        assert len(ds) == sum(s.n_slices(c) for c in CASES)
        for index in (0, len(ds) // 2, len(ds) - 1):
            item = ds[index]
            assert item["image"].shape == (4, 32, 48) and item["image"].dtype == torch.float32
            assert item["target"].shape == (channels, 32, 48) and item["target"].dtype == torch.float32
            _, label = s.read_slice(item["case_id"], item["slice_index"])
            fitted = fit_to_patch(label, (32, 48))
            if target == "regions":
                expected = label_to_regions(fitted)
            elif target == "wt":
                expected = (fitted > 0)[None]
            else:
                expected = (fitted == 1)[None]
            np.testing.assert_array_equal(item["target"].numpy(), expected.astype(np.float32))


def test_fit_to_patch_pads_and_crops_centred() -> None:
    array = np.arange(5 * 6).reshape(5, 6) + 1
    padded = fit_to_patch(array, (9, 8))
    assert padded.shape == (9, 8) and padded.sum() == array.sum()
    np.testing.assert_array_equal(padded[2:7, 1:7], array)
    cropped = fit_to_patch(array, (3, 2))
    np.testing.assert_array_equal(cropped, array[1:4, 2:4])


def test_dataset_neighbour_channels_replicate_edges(store: Path) -> None:
    ds = SliceDataset(store, ["P1"], neighbours=2, patch_size=(48, 48))
    assert ds.channels == 20
    depth = len(ds)
    with SliceStore(store) as s:

        def slice_image(k: int) -> np.ndarray:
            return fit_to_patch(s.read_slice("P1", k)[0], (48, 48))

        for index in (0, 1, depth - 1):
            image = ds[index]["image"].numpy()
            assert image.shape == (20, 48, 48)
            np.testing.assert_array_equal(image[centre_channels(2)], slice_image(index))
            for block, offset in enumerate(range(-2, 3)):
                expected = slice_image(min(max(index + offset, 0), depth - 1))
                np.testing.assert_array_equal(image[4 * block : 4 * block + 4], expected)


@pytest.mark.parametrize("fraction", [0.2, 0.8])
def test_oversampling_ratio(store: Path, fraction: float) -> None:
    ds = SliceDataset(store, CASES, tumour_fraction=fraction, patch_size=(32, 32))
    natural = ds.is_tumour.mean()
    assert 0.3 < natural < 0.6
    drawn = np.fromiter(ds.sampler(num_samples=20_000), dtype=np.int64)
    assert ds.is_tumour[drawn].mean() == pytest.approx(fraction, abs=0.02)
    # Reproducible for a seed and epoch.
    again = np.fromiter(ds.sampler(num_samples=20_000), dtype=np.int64)
    np.testing.assert_array_equal(drawn, again)


def test_tumour_weights_edge_cases() -> None:
    np.testing.assert_allclose(tumour_weights(np.array([True, False, False]), None), [1 / 3] * 3)
    np.testing.assert_allclose(tumour_weights(np.array([False, False]), 0.5), [0.5, 0.5])
    weights = tumour_weights(np.array([True, False, False, False]), 0.5)
    np.testing.assert_allclose(weights, [0.5, 1 / 6, 1 / 6, 1 / 6])


def test_dataloader_workers_match_inline(store: Path) -> None:
    ds = SliceDataset(store, CASES[:2], target="wt", patch_size=(32, 32), neighbours=1)
    inline = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    parallel = list(DataLoader(ds, batch_size=4, shuffle=False, num_workers=2))
    images = torch.cat([b["image"] for b in parallel])
    torch.testing.assert_close(images, inline["image"], rtol=0, atol=0)
    assert sum((b["case_id"] for b in parallel), []) == inline["case_id"]


def test_dataset_refuses_bad_selection(store: Path) -> None:
    with pytest.raises(InputDataError, match="without labels"):
        SliceDataset(store, ["P0", "U"], patch_size=(32, 32))
    with pytest.raises(InputDataError, match="not in the store"):
        SliceDataset(store, ["nope"], patch_size=(32, 32))
    with pytest.raises(ValueError):
        SliceDataset(store, CASES, target="tumour")
    with pytest.raises(ValueError):
        SliceDataset(store, CASES, tumour_fraction=1.5)


def test_dataset_default_patch_is_multiple_of_16(store: Path) -> None:
    ds = SliceDataset(store, CASES)
    assert all(p % 16 == 0 for p in ds.patch_size)
    with SliceStore(store) as s:
        stored = max(s.case_meta(c)["stored_shape"][1] for c in s.case_ids)
    assert ds.patch_size[0] >= stored


def test_dataset_with_augmentation_keeps_binary_targets(store: Path) -> None:
    cfg = AugmentConfig(p_flip=1.0, p_affine=1.0, p_elastic=1.0, p_intensity=1.0, p_noise=1.0)
    ds = SliceDataset(store, CASES, patch_size=(32, 48), augment=cfg)
    item = ds[int(np.flatnonzero(ds.is_tumour)[0])]
    assert item["image"].shape == (4, 32, 48)
    assert set(item["target"].unique().tolist()) <= {0.0, 1.0}


def test_load_store_tensors_matches_dataset(store: Path) -> None:
    images, labels, meta = load_store_tensors(store, ["P2", "P0"], (32, 48), neighbours=1)
    ds = SliceDataset(store, ["P2", "P0"], patch_size=(32, 48), neighbours=1, target="regions")
    assert images.shape == (len(ds), 4, 32, 48) and images.dtype == torch.float16
    assert labels.shape == (len(ds), 32, 48) and labels.dtype == torch.uint8
    assert meta["case_id"][0] == "P2" and meta["case_id"][-1] == "P0"
    rows = torch.tensor([0, 3, len(ds) - 1])
    batch = gather_slices(images, meta["neighbour_index"], rows)
    targets = labels_to_target_torch(labels[rows], "regions")
    for b, index in enumerate(rows.tolist()):
        item = ds[index]
        assert (item["case_id"], item["slice_index"]) == (meta["case_id"][index], meta["slice_index"][index])
        torch.testing.assert_close(batch[b], item["image"], rtol=0, atol=0)
        torch.testing.assert_close(targets[b], item["target"], rtol=0, atol=0)


def test_labels_to_target_numpy_and_torch_agree() -> None:
    label = np.array([[0, 1, 2], [4, 0, 1]], dtype=np.uint8)
    for target in ("regions", "wt", "necrotic"):
        expected = labels_to_target(label, target)
        got = labels_to_target_torch(torch.from_numpy(label)[None], target)[0]
        np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(labels_to_target(label, "necrotic")[0], label == 1)


# ---------------------------------------------------------------------------------------- augmentation


def _batch(seed: int = 0, n: int = 6, size: tuple[int, int] = (24, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 8, *size, generator=g)
    images[:, :, :3] = 0  # some background
    targets = (torch.rand(n, 3, *size, generator=g) > 0.7).float()
    return images, targets


def test_augment_off_is_identity() -> None:
    images, targets = _batch()
    out_images, out_targets = augment_batch(
        images, targets, AugmentConfig.off(), torch.Generator().manual_seed(1)
    )
    assert torch.equal(out_images, images) and torch.equal(out_targets, targets)


def test_flip_is_exact() -> None:
    images, targets = _batch()
    for dims in ((-2,), (-1,)):
        cfg = AugmentConfig(p_flip=1.0, flip_dims=dims, p_affine=0, p_intensity=0, p_noise=0)
        out_images, out_targets = augment_batch(images, targets, cfg)
        assert torch.equal(out_images, images.flip(dims[0]))
        assert torch.equal(out_targets, targets.flip(dims[0]))


def test_identity_affine_and_zero_elastic_change_nothing() -> None:
    images, targets = _batch()
    cfg = AugmentConfig(
        p_flip=0,
        p_affine=1.0,
        rotate_deg=0.0,
        scale=(1.0, 1.0),
        p_elastic=1.0,
        elastic_alpha=0.0,
        p_intensity=0,
        p_noise=0,
    )
    out_images, out_targets = augment_batch(images, targets, cfg)
    torch.testing.assert_close(out_images, images, atol=1e-5, rtol=0)
    assert torch.equal(out_targets, targets)


def test_full_augmentation_shapes_binarity_and_reproducibility() -> None:
    images, targets = _batch()
    cfg = AugmentConfig(p_flip=0.5, p_affine=1.0, p_elastic=1.0, p_intensity=1.0, p_noise=1.0)
    a = augment_batch(images, targets.to(torch.uint8), cfg, torch.Generator().manual_seed(5))
    b = augment_batch(images, targets.to(torch.uint8), cfg, torch.Generator().manual_seed(5))
    assert a[0].shape == images.shape and a[0].dtype == torch.float32
    assert a[1].shape == targets.shape and a[1].dtype == torch.uint8
    assert set(a[1].unique().tolist()) <= {0, 1}
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], images)
    # Rotation/scale moves pixels but keeps most of the tumour.
    kept = a[1].float().sum() / targets.sum()
    assert 0.6 < kept < 1.4


def test_intensity_changes_leave_background_zero() -> None:
    images, targets = _batch()
    cfg = AugmentConfig(p_flip=0, p_affine=0, p_intensity=1.0, p_noise=1.0)
    out, _ = augment_batch(images, targets, cfg, torch.Generator().manual_seed(2))
    background = (images == 0).all(dim=1, keepdim=True).expand_as(images)
    assert torch.all(out[background] == 0)
    assert not torch.equal(out[~background], images[~background])


def test_rotation_is_rigid_on_non_square_slices() -> None:
    # A centred disc stays a disc of the same size whatever the angle, also when H != W.
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(65.0), indexing="ij")
    disc = (((yy - 16) ** 2 + (xx - 32) ** 2) <= 64).float()
    targets = disc.expand(8, 1, 33, 65).clone()
    cfg = AugmentConfig(p_flip=0, p_affine=1.0, rotate_deg=90.0, scale=(1.0, 1.0), p_intensity=0, p_noise=0)
    _, out = augment_batch(targets.clone(), targets, cfg, torch.Generator().manual_seed(3))
    for sample in out[:, 0]:
        rows = torch.nonzero(sample.any(dim=1)).squeeze(1)
        cols = torch.nonzero(sample.any(dim=0)).squeeze(1)
        assert abs(len(rows) - 17) <= 1 and abs(len(cols) - 17) <= 1
        assert abs(rows.float().mean().item() - 16) <= 0.5 and abs(cols.float().mean().item() - 32) <= 0.5
        assert abs(sample.sum().item() - disc.sum().item()) <= 0.1 * disc.sum().item()


def test_augment_config_validation() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(scale=(1.2, 0.9))
    with pytest.raises(ValueError):
        AugmentConfig(flip_dims=(0,))
    with pytest.raises(ValueError):
        augment_batch(torch.zeros(2, 4, 8, 8), torch.zeros(2, 1, 8, 9), AugmentConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_cuda() -> None:
    images, targets = _batch()
    cfg = AugmentConfig(p_flip=0.5, p_affine=1.0, p_elastic=1.0, p_intensity=1.0, p_noise=1.0)
    out_images, out_targets = augment_batch(images.cuda().half(), targets.cuda(), cfg)
    assert out_images.is_cuda and out_images.dtype == torch.float32
    assert set(out_targets.unique().tolist()) <= {0.0, 1.0}
    flip = AugmentConfig(p_flip=1.0, p_affine=0, p_intensity=0, p_noise=0)
    assert torch.equal(augment_batch(images.cuda(), targets.cuda(), flip)[0].cpu(), images.flip(-2))
