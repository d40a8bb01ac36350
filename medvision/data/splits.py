"""Patient-wise train/validation/test splits.

Slices of one patient are strongly correlated, so a split is made over case ids, never over slices:
every case lands in exactly one split. The split depends only on the set of ids and the seed (ids are
sorted before the seeded permutation), so the same data always gives the same split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medvision.atomic import write_json_atomic
from medvision.errors import InputDataError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions, then every split with a positive fraction gets >= 1 case
    (taken from the largest split) whenever n allows it."""
    raw = [n * f for f in fractions]
    sizes = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - sizes[i], reverse=True)
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if sizes[i] == 0:
                donor = max(range(len(sizes)), key=lambda j: sizes[j])
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def make_splits(
    case_ids: Iterable[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 88,
) -> dict[str, list[str]]:
    """Split case ids into {"train", "val", "test"} (each list sorted). Deterministic in (ids, seed).

    With n >= 3 cases (and all fractions positive) every split is non-empty.
    """
    ids = sorted(set(case_ids))
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"fractions must have {len(SPLIT_NAMES)} entries, got {fractions}")
    if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    if not ids:
        raise ValueError("no case ids to split")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    splits: dict[str, list[str]] = {}
    start = 0
    for name, size in zip(SPLIT_NAMES, _split_sizes(len(ids), fractions), strict=True):
        splits[name] = sorted(shuffled[start : start + size])
        start += size
    return splits


def save_splits(path: str | Path, splits: dict[str, list[str]]) -> Path:
    """Write splits as JSON (tmp file + rename, so a reader never sees half a file)."""
    return write_json_atomic(path, {k: list(v) for k, v in splits.items()}, indent=2)


def load_splits(path: str | Path) -> dict[str, list[str]]:
    """Read splits written by `save_splits`; refuses files that are not a split (InputDataError)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(path, f"cannot read splits ({error})") from error
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise InputDataError(path, "not a splits file (expected {name: [case ids]})")
    seen: set[str] = set()
    for ids in data.values():
        overlap = seen.intersection(ids)
        if overlap:
            raise InputDataError(path, f"cases in more than one split: {sorted(overlap)[:5]}")
        seen.update(ids)
    return data


def make_folds(
    case_ids: Iterable[str], k: int, seed: int = 0, train_only: Iterable[str] = ()
) -> list[dict[str, list[str]]]:
    """Patient-wise k-fold cross-validation: fold i validates on the i-th of k near-equal parts of the
    (shuffled) ``case_ids`` and trains on the rest plus ``train_only`` (e.g. phantoms, which are never
    held out). ``test`` is empty: a fold is scored on its held-out (``val``) cases, with the last epoch's
    weights, so nothing is chosen on them.
    """
    ids = sorted(set(case_ids) - set(train_only))
    extra = sorted(set(train_only))
    if k < 2 or k > len(ids):
        raise ValueError(f"need 2 <= k <= {len(ids)} (the cases that can be held out), got k={k}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(np.array([ids[i] for i in order]), k)
    folds = []
    for i, held_out in enumerate(parts):
        rest = [c for j, part in enumerate(parts) if j != i for c in part]
        folds.append({"train": sorted(rest + extra), "val": sorted(held_out), "test": []})
    return folds
