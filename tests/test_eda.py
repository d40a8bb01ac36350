"""EDA report numbers against counts computed directly on the source Cases; cache; samples; CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvision.commands import eda as eda_command
from medvision.data.case import Case, case_to_nifti_axes
from medvision.data.store import SliceStore, prepare_store
from medvision.eda import compute_eda, eda_cache_path, load_sample, pick_sample_slices

REGION_VALUES = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,), "NCR": (1,), "ED": (2,)}


def make_case(case_id: str, seed: int, *, tumour: bool = True, spacing=(1.0, 1.0, 1.0)) -> Case:
    """Brain ellipsoid in a 12 x 40 x 40 volume, tumour blob of random size and place (or none)."""
    rng = np.random.default_rng(seed)
    shape = (12, 40, 40)
    z, y, x = np.mgrid[:12, :40, :40]
    cz, cy, cx = 6 + rng.uniform(-0.5, 0.5), 20 + rng.uniform(-3, 3), 19 + rng.uniform(-3, 3)
    brain = (((z - cz) / 5.2) ** 2 + ((y - cy) / 14) ** 2 + ((x - cx) / 12) ** 2) <= 1
    image = np.zeros((4, *shape), np.float32)
    for m in range(4):
        image[m][brain] = rng.integers(10, 300 * (m + 1), int(brain.sum()))
    label = np.zeros(shape, np.uint8)
    if tumour:
        tz, ty, tx = cz + rng.uniform(-2, 2), cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4)
        r = np.sqrt((1.6 * (z - tz)) ** 2 + (y - ty) ** 2 + (x - tx) ** 2)
        radius = rng.uniform(3, 6)
        label[(r < radius) & brain] = 2
        label[(r < 0.6 * radius) & brain] = 4
        label[(r < 0.3 * radius) & brain] = 1
    return Case(case_id, image, np.diag([*spacing, 1.0]), spacing, label)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [
        make_case("A", 1),
        make_case("B", 2, spacing=(2.0, 0.9, 1.1)),
        make_case("C", 3, tumour=False),
        make_case("D", 4),
        make_case("E", 5, spacing=(1.5, 1.0, 1.0)),
    ]


@pytest.fixture()
def store(cases: list[Case], tmp_path: Path) -> Path:
    return prepare_store(cases, tmp_path / "s.h5", workers=1, progress=False)


def _brain_slices(case: Case) -> range:
    """Axial slices inside the brain's bounding box (the ones the store keeps)."""
    hits = np.flatnonzero(np.any(case.image != 0, axis=(0, 2, 3)))
    return range(int(hits[0]), int(hits[-1]) + 1)


def test_slice_counts_match_cases(cases: list[Case], store: Path) -> None:
    report = compute_eda(store)
    json.dumps(report, allow_nan=False)  # strictly serialisable
    tumour = sum(int((c.label[k] > 0).any()) for c in cases for k in _brain_slices(c))
    total = sum(len(_brain_slices(c)) for c in cases)
    assert report["n_cases"] == report["n_labelled_cases"] == 5
    assert report["n_slices"] == total
    assert report["slices"]["tumour"] == tumour
    assert report["slices"]["healthy"] == total - tumour
    assert report["slices_per_case"]["values"] == {c.case_id: len(_brain_slices(c)) for c in cases}
    assert report["tumour_slices_per_case"]["C"] == 0
    for case in cases:
        expected = sum(int((case.label[k] > 0).any()) for k in _brain_slices(case))
        assert report["tumour_slices_per_case"][case.case_id] == expected


@pytest.mark.parametrize("region", ["WT", "TC", "ET", "NCR", "ED"])
def test_region_sizes_match_cases(cases: list[Case], store: Path, region: str) -> None:
    report = compute_eda(store)
    per_slice = np.array(
        [
            n
            for c in cases
            for k in range(c.shape[0])
            if (n := int(np.isin(c.label[k], REGION_VALUES[region]).sum()))
        ]
    )
    sizes = report["tumour_pixels_per_slice"][region]
    assert sizes["n_slices"] == len(per_slice)
    assert sizes["summary"]["median"] == pytest.approx(np.median(per_slice))
    assert sizes["summary"]["max"] == per_slice.max() and sizes["summary"]["min"] == per_slice.min()
    assert sum(sizes["histogram"]["counts"]) == len(per_slice)
    volumes = report["tumour_volume_cm3"][region]["values"]
    for case in cases:
        voxels = np.isin(case.label, REGION_VALUES[region]).sum()
        assert volumes[case.case_id] == pytest.approx(voxels * np.prod(case.spacing) / 1000.0)


def test_probability_by_slice(cases: list[Case], store: Path) -> None:
    report = compute_eda(store)["tumour_probability_by_slice"]
    absolute = report["absolute"]
    for s, n, t, p in zip(
        absolute["slice"], absolute["n"], absolute["tumour"], absolute["probability"], strict=True
    ):
        in_brain = [c for c in cases if s in _brain_slices(c)]
        assert n == len(in_brain)
        assert t == sum(int((c.label[s] > 0).any()) for c in in_brain)
        assert p == pytest.approx(t / n)
    relative = report["relative"]
    assert sum(relative["n"]) == sum(len(_brain_slices(c)) for c in cases)
    assert sum(relative["tumour"]) == compute_eda(store)["slices"]["tumour"]
    # First and last slice of every brain sit in the first and last bins.
    assert relative["n"][0] >= len(cases) and relative["n"][-1] >= len(cases)


def test_class_balance_and_intensity(cases: list[Case], store: Path) -> None:
    report = compute_eda(store)
    voxels = report["class_balance"]["voxels"]
    assert voxels["NCR/NET"] == sum(int((c.label == 1).sum()) for c in cases)
    assert voxels["ED"] == sum(int((c.label == 2).sum()) for c in cases)
    assert voxels["ET"] == sum(int((c.label == 4).sum()) for c in cases)
    brain = sum(int(np.any(c.image != 0, axis=0).sum()) for c in cases)
    tumour = sum(int((c.label > 0).sum()) for c in cases)
    assert voxels["background_brain"] == brain - tumour
    for m, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        entry = report["intensity"][modality]
        values = np.concatenate([c.image[m][np.any(c.image != 0, axis=0)] for c in cases])
        assert entry["total"] == sum(entry["counts"]) == values.size
        assert entry["edges"][0] <= values.min() and entry["edges"][-1] > values.max()
        assert entry["percentiles"]["p50"] == pytest.approx(np.median(values), rel=0.05)


def test_cache_reused_until_store_changes(cases: list[Case], store: Path) -> None:
    report = compute_eda(store)
    cache = eda_cache_path(store)
    assert cache.is_file()
    marked = json.loads(cache.read_text())
    marked["n_cases"] = -1  # a marker: only a cache hit returns it
    cache.write_text(json.dumps(marked))
    assert compute_eda(store)["n_cases"] == -1
    assert compute_eda(store, use_cache=False)["n_cases"] == report["n_cases"]
    prepare_store(cases[:2], store, workers=1, progress=False)  # the store changes -> recomputed
    fresh = compute_eda(store)
    assert fresh["n_cases"] == 2 and fresh["fingerprint"] != report["fingerprint"]


def test_cache_dir(store: Path, tmp_path: Path) -> None:
    report = compute_eda(store, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()
    assert json.loads(cached.read_text())["fingerprint"] == report["fingerprint"]
    assert not eda_cache_path(store).exists()


def test_pick_sample_slices(store: Path) -> None:
    with SliceStore(store) as s:
        table = s.slice_table().set_index(["case_id", "slice_index"])
    picks = pick_sample_slices(store, 4, region="ET", seed=1, min_pixels=3)
    assert len(picks) == 4 and len({c for c, _ in picks}) == 4  # spread over the 4 tumour patients
    assert all(table.loc[p, "pixels_et"] > 3 for p in picks)
    assert pick_sample_slices(store, 4, region="ET", seed=1, min_pixels=3) == picks
    healthy = pick_sample_slices(store, 6, region="healthy", seed=0)
    assert len(healthy) == 6 and all(table.loc[p, "pixels_wt"] == 0 for p in healthy)
    everything = pick_sample_slices(store, 10_000, region="WT")
    assert len(everything) == int((table["pixels_wt"] > 0).sum())
    with pytest.raises(ValueError):
        pick_sample_slices(store, 2, region="XX")


def test_load_sample(cases: list[Case], store: Path) -> None:
    sample = load_sample(store, "B", 3)
    case = cases[1]
    k = sample["slice_original"]
    assert k == _brain_slices(case)[3]
    assert sample["image"].shape[0] == 4 and sample["regions"].shape == (3, *sample["label"].shape)
    assert (sample["label"] > 0).sum() == (case.label[k] > 0).sum()
    np.testing.assert_array_equal(sample["regions"][0], sample["label"] > 0)


def _run_eda(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eda_command.register(parser.add_subparsers())
    args = parser.parse_args(["eda", *argv])
    return args.func(args)


def test_eda_command_on_store_and_on_dataset(cases: list[Case], store: Path, tmp_path: Path) -> None:
    assert _run_eda([str(store), "--out", str(tmp_path / "r1.json")]) == 0
    assert json.loads((tmp_path / "r1.json").read_text())["n_cases"] == 5

    source = tmp_path / "dataset"
    for case in cases[:2]:
        folder = source / case.case_id
        folder.mkdir(parents=True)
        for m, name in enumerate(("flair", "t1", "t1ce", "t2")):
            volume = case_to_nifti_axes(case.image[m]).astype(np.int16)
            nib.save(nib.Nifti1Image(volume, case.affine), folder / f"{case.case_id}_{name}.nii.gz")
        nib.save(
            nib.Nifti1Image(case_to_nifti_axes(case.label), case.affine),
            folder / f"{case.case_id}_seg.nii.gz",
        )
    out = tmp_path / "reports" / "r2.json"
    assert _run_eda([str(source), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["n_cases"] == 2
    assert report["slices"]["tumour"] == sum(
        int((c.label[k] > 0).any()) for c in cases[:2] for k in _brain_slices(c)
    )
    cached_store = out.parent / "r2.store.h5"
    assert Path(report["store"]) == cached_store
    before = cached_store.stat().st_mtime_ns
    assert _run_eda([str(source), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert cached_store.stat().st_mtime_ns == before  # reused, not prepared again


def test_report_of_unlabelled_store(cases: list[Case], tmp_path: Path) -> None:
    unlabelled = [Case(c.case_id, c.image, c.affine, c.spacing) for c in cases[:2]]
    report = compute_eda(prepare_store(unlabelled, tmp_path / "u.h5", workers=1, progress=False))
    assert report["n_labelled_cases"] == 0 and report["slices"]["tumour"] == 0
    assert report["slices"]["unlabelled"] == report["n_slices"] > 0
    assert report["tumour_volume_cm3"]["WT"]["summary"]["count"] == 0
    assert report["intensity"]["flair"]["total"] > 0
