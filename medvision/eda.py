"""Dataset statistics for the EDA dashboards, computed from a prepared store's slice table.

Everything comes from the per-slice pixel counts and intensity histograms written by `prepare_store`,
so a report over BraTS 2020 (57k slices) needs no image reads. Reports are plain JSON-serialisable
dicts, cached on disk keyed by the store fingerprint: a changed store is recomputed, an unchanged
one is read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medvision.atomic import write_text_atomic
from medvision.data.case import REGIONS, label_to_regions
from medvision.data.store import PIXEL_COLUMNS, SliceStore

log = logging.getLogger(__name__)

EDA_VERSION = 1  # bump when the report layout changes, so old caches are not reused
SIZE_REGIONS: tuple[str, ...] = ("WT", "TC", "ET", "NCR", "ED")
RELATIVE_BINS = 20
SIZE_HISTOGRAM_BINS = 30


def _summary(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {
            "count": 0,
            "mean": None,
            "std": None,
            "min": None,
            "p25": None,
            "median": None,
            "p75": None,
            "max": None,
        }
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p25": float(p25),
        "median": float(median),
        "p75": float(p75),
        "max": float(values.max()),
    }


def _histogram(values: np.ndarray, bins: int) -> dict[str, list[float]]:
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins, range=(0.0, float(values.max()) or 1.0))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _intensity_report(histograms: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per modality: bins trimmed to the occupied range, plus percentiles read off the cumulative counts."""
    report = {}
    for modality, hist in histograms.items():
        counts, edges = hist["counts"], hist["edges"]
        occupied = np.flatnonzero(counts)
        total = int(counts.sum())
        entry: dict[str, Any] = {"total": total, "edges": [], "counts": [], "percentiles": {}}
        if occupied.size:
            lo, hi = int(occupied[0]), int(occupied[-1]) + 1
            entry["edges"] = edges[lo : hi + 1].tolist()
            entry["counts"] = counts[lo:hi].tolist()
            cumulative = np.cumsum(counts) / total
            for p in (1, 50, 99):
                i = int(np.searchsorted(cumulative, p / 100))
                entry["percentiles"][f"p{p}"] = float(edges[min(i + 1, len(edges) - 1)])  # bin upper edge
        report[modality] = entry
    return report


def _probability_by_slice(labelled: pd.DataFrame) -> dict[str, Any]:
    tumour = labelled["pixels_wt"] > 0
    by_index = (
        pd.DataFrame({"slice": labelled["slice_original"], "tumour": tumour})
        .groupby("slice")["tumour"]
        .agg(["size", "sum"])
    )
    # Relative position 0..1 from the first to the last slice of each case's brain extent (= stored range).
    depth = labelled.groupby("case_id")["slice_index"].transform("max").clip(lower=1)
    relative = (labelled["slice_index"] / depth).to_numpy()
    edges = np.linspace(0.0, 1.0, RELATIVE_BINS + 1)
    which = np.clip(np.digitize(relative, edges) - 1, 0, RELATIVE_BINS - 1)
    n_rel = np.bincount(which, minlength=RELATIVE_BINS)
    t_rel = np.bincount(which, weights=tumour.to_numpy().astype(float), minlength=RELATIVE_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_rel = np.where(n_rel > 0, t_rel / np.maximum(n_rel, 1), np.nan)
    return {
        "absolute": {
            "slice": by_index.index.astype(int).tolist(),
            "n": by_index["size"].astype(int).tolist(),
            "tumour": by_index["sum"].astype(int).tolist(),
            "probability": (by_index["sum"] / by_index["size"]).astype(float).tolist(),
        },
        "relative": {
            "bin_edges": edges.tolist(),
            "n": n_rel.astype(int).tolist(),
            "tumour": t_rel.astype(int).tolist(),
            "probability": [None if np.isnan(p) else float(p) for p in p_rel],
        },
    }


def _build_report(store: SliceStore) -> dict[str, Any]:
    table = store.slice_table()
    labelled = table[table["labelled"]]
    metas = {c: store.case_meta(c) for c in store.case_ids}
    tumour = labelled["pixels_wt"] > 0

    sizes: dict[str, Any] = {}
    for region in SIZE_REGIONS:
        values = labelled[PIXEL_COLUMNS[region]].to_numpy()
        values = values[values > 0]
        sizes[region] = {
            "n_slices": int(values.size),
            "summary": _summary(values),
            "histogram": _histogram(values, SIZE_HISTOGRAM_BINS),
        }

    volumes: dict[str, Any] = {}
    per_case = labelled.groupby("case_id")[[PIXEL_COLUMNS[r] for r in SIZE_REGIONS]].sum()
    voxel_cm3 = pd.Series({c: metas[c]["voxel_volume_mm3"] / 1000.0 for c in per_case.index})
    for region in SIZE_REGIONS:
        cm3 = per_case[PIXEL_COLUMNS[region]] * voxel_cm3
        volumes[region] = {
            "values": {c: float(v) for c, v in cm3.items()},
            "summary": _summary(cm3.to_numpy()),
        }

    slices_per_case = table.groupby("case_id", sort=False).size()
    tumour_per_case = labelled.assign(t=tumour).groupby("case_id", sort=False)["t"].sum()
    crop_pixels = {c: metas[c]["stored_shape"][1] * metas[c]["stored_shape"][2] for c in store.case_ids}
    area = labelled["case_id"].map(crop_pixels)
    brain = int(labelled["brain_pixels"].sum())
    wt = int(labelled["pixels_wt"].sum())
    voxels = {
        "background_outside_brain": int((area - labelled["brain_pixels"]).sum()),
        "background_brain": max(brain - wt, 0),
        "NCR/NET": int(labelled["pixels_ncr"].sum()),
        "ED": int(labelled["pixels_ed"].sum()),
        "ET": int(labelled["pixels_et"].sum()),
    }

    return {
        "eda_version": EDA_VERSION,
        "store": str(store.path),
        "source": store.source,
        "fingerprint": store.fingerprint,
        "modalities": list(store.modalities),
        "n_cases": len(store.case_ids),
        "n_labelled_cases": int(labelled["case_id"].nunique()),
        "n_slices": len(table),
        "slices": {
            "tumour": int(tumour.sum()),
            "healthy": int((~tumour).sum()),
            "unlabelled": int((~table["labelled"]).sum()),
            "tumour_fraction": float(tumour.mean()) if len(labelled) else None,
        },
        "slices_per_case": {
            "values": {c: int(v) for c, v in slices_per_case.items()},
            "summary": _summary(slices_per_case.to_numpy()),
        },
        "tumour_slices_per_case": {c: int(v) for c, v in tumour_per_case.items()},
        "tumour_pixels_per_slice": sizes,
        "tumour_volume_cm3": volumes,
        "tumour_probability_by_slice": _probability_by_slice(labelled),
        "class_balance": {
            "voxels": voxels,
            "fraction_of_brain": {
                k: (v / brain if brain else None)
                for k, v in voxels.items()
                if k != "background_outside_brain"
            },
        },
        "intensity": _intensity_report(store.intensity_histograms()),
    }


def eda_cache_path(store_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the report of `store_path` is cached: beside the store, or in `cache_dir`."""
    store_path = Path(store_path).resolve()
    if cache_dir is None:
        return store_path.with_name(store_path.name + ".eda.json")
    digest = hashlib.sha1(str(store_path).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"eda-{store_path.stem}-{digest}.json"


def compute_eda(
    store_path: str | Path, *, cache_dir: str | Path | None = None, use_cache: bool = True
) -> dict[str, Any]:
    """The EDA report of a store (JSON-serialisable dict), from the cache when the store is unchanged."""
    cache = eda_cache_path(store_path, cache_dir)
    with SliceStore(store_path) as store:
        fingerprint = store.fingerprint
        if use_cache and cache.is_file():
            try:
                cached = json.loads(cache.read_text())
                if cached.get("fingerprint") == fingerprint and cached.get("eda_version") == EDA_VERSION:
                    log.debug("EDA report of %s read from cache %s", store_path, cache)
                    return cached
            except (OSError, json.JSONDecodeError):
                log.warning("ignoring unreadable EDA cache %s", cache)
        report = _build_report(store)
    text = json.dumps(report, allow_nan=False)
    if use_cache:
        try:
            write_text_atomic(cache, text)
        except OSError as error:  # a read-only data folder must not stop the report
            log.warning("cannot cache EDA report at %s: %s", cache, error)
    return json.loads(text)


def pick_sample_slices(
    store_path: str | Path, n: int, *, region: str = "WT", seed: int = 0, min_pixels: int = 0
) -> list[tuple[str, int]]:
    """Up to `n` (case_id, stored slice index) pairs whose `region` has more than `min_pixels` pixels.

    region: WT, TC, ET, NCR or ED; "healthy" (labelled slices without tumour) or "any". Picks are
    spread over patients (one per case before a second from any case) and deterministic in `seed`.
    """
    with SliceStore(store_path) as store:
        table = store.slice_table()
    if region in PIXEL_COLUMNS:
        keep = table["labelled"] & (table[PIXEL_COLUMNS[region]] > min_pixels)
    elif region == "healthy":
        keep = table["labelled"] & (table["pixels_wt"] == 0) & (table["brain_pixels"] > min_pixels)
    elif region == "any":
        keep = table["brain_pixels"] > min_pixels
    else:
        raise ValueError(f"region must be one of {list(PIXEL_COLUMNS)}, 'healthy' or 'any', got {region!r}")
    candidates = table[keep]
    order = np.random.default_rng(seed).permutation(len(candidates))
    shuffled = candidates.iloc[order]
    first = ~shuffled["case_id"].duplicated()
    ranked = pd.concat([shuffled[first], shuffled[~first]])
    return [(str(c), int(k)) for c, k in zip(ranked["case_id"][:n], ranked["slice_index"][:n], strict=True)]


def load_sample(store_path: str | Path, case_id: str, k: int) -> dict[str, Any]:
    """One stored slice for the gallery: z-scored image (4, h, w), label (h, w), regions (3, h, w) and
    the case's affine (None in stores written without one)."""
    with SliceStore(store_path) as store:
        image, label = store.read_slice(case_id, k)
        meta = store.case_meta(case_id)
        modalities = list(store.modalities)
    return {
        "case_id": case_id,
        "slice_index": int(k),
        "slice_original": int(meta["crop_box"][0] + k),
        "modalities": modalities,
        "image": image,
        "label": label,
        "regions": None if label is None else label_to_regions(label),
        "region_names": list(REGIONS),
        "affine": meta.get("affine"),  # the viewer orients the slice from it
    }
