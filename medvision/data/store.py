"""The prepared store: a whole dataset, brain-cropped and z-scored, in one chunked HDF5 file.

Training reads random slices many times per epoch; reading them from NIfTI means decompressing whole
volumes every time. `prepare_store` does that work once: each case is cropped to its brain box and
z-scored per modality (the same `normalise_case_image` inference uses), stored as float16 with one
chunk per axial slice so a random slice costs one small read.

Layout (attrs ``format="medvision-store"``, ``version=1``, ``modalities``, ``source``, ``uuid``,
``view``: "axial" unless the cases were resliced, see medvision.data.views; absent = "axial"):

- ``case_ids``: 1-D string dataset, case order = ``case_index`` in the slice table.
- ``cases/<case_id>/image`` float16 (4, D, h, w), chunks (4, 1, h, w); ``label`` uint8 (D, h, w),
  chunks (1, h, w), absent for unlabelled cases. Group attrs: ``case_index``, ``crop_box``
  (d0, d1, h0, h1, w0, w1 in the original volume), ``original_shape``, ``spacing``, ``affine`` (of the
  original volume), ``voxel_volume_mm3``, ``labelled``, ``raw_mean``/``raw_std``/``raw_min``/``raw_max``
  (per modality, raw intensities within the brain), ``source_paths``.
- ``slices/<column>``: one row per stored slice: ``case_index``, ``slice_index`` (in the stored,
  cropped volume), ``slice_original`` (in the source volume), ``brain_pixels``, ``pixels_ncr``,
  ``pixels_ed``, ``pixels_et``, ``pixels_wt``, ``pixels_tc``, ``labelled``.
- ``intensity/<modality>``: int64 counts of RAW intensities within the brain in ``INTENSITY_BINS``
  equal bins over ``[attrs lo, attrs hi)``. Each case is histogrammed on its own power-of-two range
  (``[0, 2**e)`` or ``[-2**e, 2**e)``); such grids nest exactly, so merging into the widest range is
  exact (every fine bin lies inside one coarse bin), whatever the intensity scale of the source.

A store named by a user may have been written by anyone, so :class:`SliceStore` reaches every group and
dataset one name at a time through :mod:`medvision.data.h5_checks`: a dataset with external storage, a
virtual dataset, or a soft or external link is refused (InputDataError naming the store and the object)
before any of its data is read, so a store cannot make the app read other files.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medvision.data.case import BRATS_LABELS, MODALITIES, Case
from medvision.data.h5_checks import member_dataset, member_group
from medvision.data.preprocess import brain_mask, normalise_case_image
from medvision.data.views import VIEWS, check_view, reslice_case
from medvision.errors import InputDataError
from medvision.parallel import spawn_pool

log = logging.getLogger(__name__)

STORE_FORMAT = "medvision-store"
STORE_VERSION = 1
INTENSITY_BINS = 256
TABLE_COLUMNS: tuple[str, ...] = (
    "case_index",
    "slice_index",
    "slice_original",
    "brain_pixels",
    "pixels_ncr",
    "pixels_ed",
    "pixels_et",
    "pixels_wt",
    "pixels_tc",
    "labelled",
)
PIXEL_COLUMNS: dict[str, str] = {
    "NCR": "pixels_ncr",
    "ED": "pixels_ed",
    "ET": "pixels_et",
    "WT": "pixels_wt",
    "TC": "pixels_tc",
}


# ----------------------------------------------------------------------------------------------
# Per-case work (runs in worker processes)


@dataclass
class _PreparedCase:
    case_id: str
    image: np.ndarray  # (4, D, h, w) float16, z-scored, cropped
    label: np.ndarray | None  # (D, h, w) uint8
    crop_box: tuple[int, ...]
    original_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    table: dict[str, np.ndarray]  # per-slice columns except case_index
    histograms: list[tuple[float, float, np.ndarray]]  # per modality (lo, hi, counts)
    raw_stats: dict[str, np.ndarray]
    source_paths: tuple[str, ...]


def _check_case(case: Case) -> None:
    """Refuse a Case the store cannot hold faithfully (readers normally catch these first)."""
    where = case.case_id or "<case without id>"
    if not case.case_id or "/" in case.case_id or case.case_id in (".", ".."):
        raise InputDataError(where, f"case id {case.case_id!r} cannot name an HDF5 group")
    if case.image.ndim != 4 or case.image.shape[0] != len(MODALITIES):
        raise InputDataError(where, f"image shape {case.image.shape} is not (4, D, H, W)")
    if not np.isfinite(case.image).all():
        raise InputDataError(where, "image has non-finite values")
    if case.label is not None:
        if case.label.shape != case.image.shape[1:]:
            shapes = f"label shape {case.label.shape} != image shape {case.image.shape[1:]}"
            raise InputDataError(where, shapes)
        unknown = np.setdiff1d(np.unique(case.label), BRATS_LABELS)
        if unknown.size:
            raise InputDataError(where, f"label has values {unknown.tolist()} outside {list(BRATS_LABELS)}")


def _power_of_two_histogram(values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Histogram on [0, 2**e) (or [-2**e, 2**e) with negatives), 2**e the smallest power above max |v|."""
    if values.size == 0:
        return 0.0, 1.0, np.zeros(INTENSITY_BINS, dtype=np.int64)
    vmax = float(np.abs(values).max())
    # hi is strictly above every value, so no value sits on the closing edge (which would not merge exactly).
    hi = 2.0 ** (math.floor(math.log2(vmax)) + 1) if vmax > 0 else 1.0
    lo = -hi if float(values.min()) < 0 else 0.0
    counts, _ = np.histogram(values, bins=INTENSITY_BINS, range=(lo, hi))
    return lo, hi, counts.astype(np.int64)


Histogram = tuple[float, float, np.ndarray]  # (lo, hi, counts) on equal bins over [lo, hi)


def merge_histograms(histograms: Iterable[Histogram]) -> Histogram:
    """Merge power-of-two-range histograms into the widest range, exactly (see module docstring)."""
    histograms = list(histograms)
    if not histograms:
        return 0.0, 1.0, np.zeros(INTENSITY_BINS, dtype=np.int64)
    hi = max(h[1] for h in histograms)
    lo = -hi if any(h[0] < 0 for h in histograms) else 0.0
    width = (hi - lo) / INTENSITY_BINS
    merged = np.zeros(INTENSITY_BINS, dtype=np.int64)
    for h_lo, h_hi, counts in histograms:
        fine = (h_hi - h_lo) / len(counts)
        centres = h_lo + (np.arange(len(counts)) + 0.5) * fine
        target = np.clip(np.floor((centres - lo) / width).astype(np.int64), 0, INTENSITY_BINS - 1)
        np.add.at(merged, target, counts)
    return lo, hi, merged


def _prepare_case(item: Any, view: str = "axial") -> _PreparedCase:
    """Load (if a reference), check, reslice to ``view``, crop + z-score and summarise one case. Runs in a
    worker."""
    case: Case = item if isinstance(item, Case) else item.load()
    _check_case(case)
    case = reslice_case(case, view)
    raw = case.image
    mask = brain_mask(raw)
    normalised, box = normalise_case_image(raw)
    mask_c = mask[box]
    depth = normalised.shape[1]
    table: dict[str, np.ndarray] = {
        "slice_index": np.arange(depth, dtype=np.int32),
        "slice_original": np.arange(box[0].start, box[0].stop, dtype=np.int32),
        "brain_pixels": mask_c.sum(axis=(1, 2)).astype(np.int32),
    }
    label = None
    if case.label is not None:
        label = np.ascontiguousarray(case.label[box], dtype=np.uint8)
        for name, values in (("ncr", (1,)), ("ed", (2,)), ("et", (4,)), ("wt", (1, 2, 4)), ("tc", (1, 4))):
            table[f"pixels_{name}"] = np.isin(label, values).sum(axis=(1, 2)).astype(np.int32)
    else:
        for name in ("ncr", "ed", "et", "wt", "tc"):
            table[f"pixels_{name}"] = np.zeros(depth, dtype=np.int32)
    table["labelled"] = np.full(depth, case.label is not None, dtype=bool)

    histograms = []
    stats: dict[str, list[float]] = {"raw_mean": [], "raw_std": [], "raw_min": [], "raw_max": []}
    for c in range(raw.shape[0]):
        values = raw[c][mask].astype(np.float64)
        histograms.append(_power_of_two_histogram(values))
        empty = values.size == 0
        stats["raw_mean"].append(0.0 if empty else float(values.mean()))
        stats["raw_std"].append(0.0 if empty else float(values.std()))
        stats["raw_min"].append(0.0 if empty else float(values.min()))
        stats["raw_max"].append(0.0 if empty else float(values.max()))

    return _PreparedCase(
        case_id=case.case_id,
        image=normalised.astype(np.float16),
        label=label,
        crop_box=tuple(int(v) for s in box for v in (s.start, s.stop)),
        original_shape=case.shape,
        spacing=tuple(float(s) for s in case.spacing),  # type: ignore[arg-type]
        affine=np.asarray(case.affine, dtype=np.float64),
        table=table,
        histograms=histograms,
        raw_stats={k: np.asarray(v) for k, v in stats.items()},
        source_paths=tuple(str(p) for p in case.source_paths),
    )


# ----------------------------------------------------------------------------------------------
# Writing


def _list_items(
    source: Any, kaggle_channel_order: Sequence[str] | None, roots: Sequence[str | Path] | None
) -> tuple[list[Any], str]:
    """Source -> (list of Case or picklable case references, description for the `source` attr).

    A list of paths is several datasets into one store (e.g. real cases and phantoms)."""
    paths = isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source)
    if paths and source:
        listed = [_list_items(s, kaggle_channel_order, roots) for s in source]
        return [item for items, _ in listed for item in items], "; ".join(d for _, d in listed)
    if isinstance(source, (str, os.PathLike)):
        from medvision.data.readers import list_case_sources  # lazy: readers pulls in nibabel etc.

        options: dict[str, Any] = {"roots": roots}
        if kaggle_channel_order is not None:
            options["kaggle_channel_order"] = tuple(kaggle_channel_order)
        return list(list_case_sources(source, **options)), str(Path(source).resolve())
    if isinstance(source, Case):
        return [source], "in-memory"
    if isinstance(source, Iterable):
        return list(source), "in-memory"
    raise TypeError(f"cannot prepare a store from {type(source).__name__}")


def _ordered_results(items: Sequence[Any], workers: int, view: str) -> Iterator[_PreparedCase]:
    """Prepare cases in source order; with workers > 1 keep a bounded window of cases in flight."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield _prepare_case(item, view)
        return
    executor = spawn_pool(min(workers, len(items)))  # see medvision.parallel: spawn, never re-run __main__
    pending: deque[Future[_PreparedCase]] = deque()
    try:
        remaining = iter(items)
        # Two cases per worker in flight bounds the parent's memory (a BraTS case is ~30 MB prepared).
        for item in remaining:
            pending.append(executor.submit(_prepare_case, item, view))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(remaining, None)
            if nxt is not None:
                pending.append(executor.submit(_prepare_case, nxt, view))
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _write_case(f: h5py.File, index: int, prepared: _PreparedCase, compression: str | None) -> None:
    group = f["cases"].create_group(prepared.case_id)
    _, depth, h, w = prepared.image.shape
    # lzf: fast to decode (a slice read stays cheap) and squeezes the zero background around the brain.
    group.create_dataset(
        "image",
        data=prepared.image,
        chunks=(len(MODALITIES), 1, h, w),
        compression=compression,
        shuffle=compression is not None,
    )
    if prepared.label is not None:
        group.create_dataset("label", data=prepared.label, chunks=(1, h, w), compression=compression)
    group.attrs["case_index"] = index
    group.attrs["crop_box"] = np.asarray(prepared.crop_box, dtype=np.int64)
    group.attrs["original_shape"] = np.asarray(prepared.original_shape, dtype=np.int64)
    group.attrs["spacing"] = np.asarray(prepared.spacing, dtype=np.float64)
    group.attrs["affine"] = prepared.affine
    group.attrs["voxel_volume_mm3"] = float(np.prod(prepared.spacing))
    group.attrs["labelled"] = prepared.label is not None
    for key, value in prepared.raw_stats.items():
        group.attrs[key] = value
    group.attrs["source_paths"] = list(prepared.source_paths)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporaries of earlier prepares of `out` whose process is gone (killed, not interrupted)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(out.name) + 2 :].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue


def _check_unique_ids(items: Sequence[Any], description: str) -> None:
    """Refuse a source with two cases of one id (they would share an HDF5 group)."""
    counts = Counter(getattr(item, "case_id", None) for item in items)
    duplicates = sorted(i for i, n in counts.items() if i is not None and n > 1)
    if duplicates:
        raise InputDataError(description, f"duplicate case ids {duplicates[:5]}")


def _write_header(f: h5py.File, description: str, view: str) -> None:
    f.attrs["format"] = STORE_FORMAT
    f.attrs["view"] = view
    f.attrs["version"] = STORE_VERSION
    f.attrs["modalities"] = list(MODALITIES)
    f.attrs["source"] = description
    f.attrs["uuid"] = uuid.uuid4().hex
    f.create_group("cases")


@dataclass
class _Summary:
    """What the store keeps beside the cases, gathered while they are written."""

    case_ids: list[str]
    columns: dict[str, list[np.ndarray]]  # slice-table columns, one array per case
    histograms: list[list[Histogram]]  # per modality, one histogram per case

    @classmethod
    def empty(cls) -> _Summary:
        return cls([], {name: [] for name in TABLE_COLUMNS}, [[] for _ in MODALITIES])

    def add(self, index: int, prepared: _PreparedCase) -> None:
        self.case_ids.append(prepared.case_id)
        depth = prepared.image.shape[1]
        self.columns["case_index"].append(np.full(depth, index, dtype=np.int32))
        for name, values in prepared.table.items():
            self.columns[name].append(values)
        for c, hist in enumerate(prepared.histograms):
            self.histograms[c].append(hist)


def _write_cases(
    f: h5py.File,
    items: Sequence[Any],
    description: str,
    *,
    workers: int,
    progress: bool,
    compression: str | None,
    view: str,
) -> _Summary:
    """Prepare and write every case in source order; returns what the tables are made of."""
    summary = _Summary.empty()
    bar = tqdm(total=len(items), desc="prepare", unit="case", disable=not progress)
    try:
        # closing(): on an error, stop the workers now, not whenever the generator is collected.
        with closing(_ordered_results(items, workers, view)) as results:
            for index, prepared in enumerate(results):
                if prepared.case_id in summary.case_ids:
                    raise InputDataError(description, f"duplicate case id {prepared.case_id!r}")
                _write_case(f, index, prepared, compression)
                summary.add(index, prepared)
                bar.update(1)
    finally:
        bar.close()
    return summary


def _write_tables(f: h5py.File, summary: _Summary) -> None:
    """The case list, the slice table and the merged intensity histograms."""
    f.create_dataset("case_ids", data=np.array(summary.case_ids, dtype=object), dtype=h5py.string_dtype())
    slices = f.create_group("slices")
    for name, parts in summary.columns.items():
        slices.create_dataset(name, data=np.concatenate(parts))
    intensity = f.create_group("intensity")
    for c, modality in enumerate(MODALITIES):
        lo, hi, counts = merge_histograms(summary.histograms[c])
        dataset = intensity.create_dataset(modality, data=counts)
        dataset.attrs["lo"] = lo
        dataset.attrs["hi"] = hi


def prepare_store(
    source: Any,
    out: str | Path,
    *,
    workers: int = 2,
    progress: bool = True,
    kaggle_channel_order: Sequence[str] | None = None,
    compression: str | None = "lzf",
    roots: Sequence[str | Path] | None = None,
    view: str = "axial",
) -> Path:
    """Prepare `source` into the store `out` and return its path.

    `source` is a dataset path (anything `medvision.data.readers.list_case_sources` accepts), one
    `Case`, or an iterable of `Case` objects / case references (objects with ``.case_id`` and
    ``.load()``). Cases are loaded and normalised in `workers` processes (1 = inline) and written
    by this process. The store is written to a temporary file beside `out` and renamed at the end,
    so a failed or interrupted prepare leaves any existing store at `out` untouched.
    `kaggle_channel_order` (for a Kaggle slice folder) is passed to the readers; None = their default.
    `roots`: the folders a dataset path's files may really lie in (None = the dataset folder itself, so
    a symbolic link leading out of it is refused; see medvision.confinement).
    `compression`: "lzf" (default) stores a BraTS case in ~12 MB and reads a slice in ~1 ms; None
    takes ~2.5x the disk and reads a slice ~3x faster.
    `view`: "axial" (as the cases are), or "coronal" / "sagittal": each case resliced along another axis
    first (medvision.data.views), so that a network trains on those slices; recorded as attrs ``view``.

    Workers are started with "spawn" (safe beside threads), so a script calling this with
    workers > 1 needs the usual ``if __name__ == "__main__":`` guard.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_view(view)
    out = Path(out)
    items, description = _list_items(source, kaggle_channel_order, roots)
    if not items:
        raise InputDataError(description, "no cases found to prepare")
    _check_unique_ids(items, description)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    log.info("preparing %d cases from %s into %s (%d workers)", len(items), description, out, workers)
    try:
        with h5py.File(tmp, "w") as f:
            _write_header(f, description, view)
            summary = _write_cases(
                f, items, description, workers=workers, progress=progress, compression=compression, view=view
            )
            _write_tables(f, summary)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("store %s written: %d cases", out, len(summary.case_ids))
    return out


# ----------------------------------------------------------------------------------------------
# Reading


def is_store(path: str | Path) -> bool:
    """True if `path` is a file that opens as a MedVision store (no exception for anything else)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == STORE_FORMAT
    except OSError:
        return False


class SliceStore:
    """Read-only access to a prepared store. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputDataError(self.path, "store file not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputDataError(self.path, f"not an HDF5 file ({error})") from error
        attrs = self._file.attrs
        if attrs.get("format") != STORE_FORMAT:
            self._file.close()
            raise InputDataError(self.path, "not a MedVision store (run `python -m medvision prepare` first)")
        version = int(attrs.get("version", -1))
        if version != STORE_VERSION:
            self._file.close()
            problem = f"store version {version} is not supported (expected {STORE_VERSION})"
            raise InputDataError(self.path, problem)
        self.modalities: tuple[str, ...] = tuple(str(m) for m in attrs["modalities"])
        self.source = str(attrs.get("source", ""))
        # Stores written before views existed hold the cases as they are: axial slices.
        self.view = str(attrs.get("view", "axial"))
        if self.view not in VIEWS:
            self._file.close()
            raise InputDataError(self.path, f"store view {self.view!r} is not one of {', '.join(VIEWS)}")
        try:
            ids = self._dataset(self._file, "case_ids")[()]
        except BaseException:
            self._file.close()
            raise
        self.case_ids: list[str] = [s.decode() if isinstance(s, bytes) else str(s) for s in ids]
        self._case_set = set(self.case_ids)
        stat = os.stat(self.path)
        # size + mtime catch rewrites in place; the uuid tells apart two stores that happen to match both.
        self.fingerprint = f"{stat.st_size}-{stat.st_mtime_ns}-{attrs.get('uuid', '')}"
        self._table: pd.DataFrame | None = None
        # Dataset handles per case: looking them up by name costs more than reading a small slice.
        self._datasets: dict[str, tuple[h5py.Dataset, h5py.Dataset | None]] = {}

    def __enter__(self) -> SliceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __len__(self) -> int:
        return len(self.slice_table())

    def _dataset(self, group: h5py.Group, name: str) -> h5py.Dataset:
        """A dataset stored in this file itself (see the module docstring); InputDataError otherwise."""
        dataset = member_dataset(group, name, self.path)
        if dataset is None:
            raise InputDataError(self.path, f"store has no dataset {group.name.rstrip('/')}/{name}")
        return dataset

    def _subgroup(self, group: h5py.Group, name: str) -> h5py.Group:
        found = member_group(group, name, self.path)
        if found is None:
            raise InputDataError(self.path, f"store has no group {group.name.rstrip('/')}/{name}")
        return found

    def _group(self, case_id: str) -> h5py.Group:
        if case_id not in self._case_set:
            raise KeyError(f"case {case_id!r} is not in store {self.path}")
        return self._subgroup(self._subgroup(self._file, "cases"), case_id)

    def slice_table(self) -> pd.DataFrame:
        """One row per stored slice: case_id, case_index, slice_index, slice_original, brain_pixels,
        pixels_ncr/ed/et/wt/tc, labelled. Cached; callers get a copy."""
        if self._table is None:
            group = self._subgroup(self._file, "slices")
            data = {name: self._dataset(group, name)[()] for name in TABLE_COLUMNS}
            table = pd.DataFrame(data)
            ids = np.asarray(self.case_ids, dtype=object)
            table.insert(0, "case_id", ids[table["case_index"].to_numpy()])
            self._table = table
        return self._table.copy()

    def n_slices(self, case_id: str) -> int:
        return int(self._case_datasets(case_id)[0].shape[1])

    def has_label(self, case_id: str) -> bool:
        return self._case_datasets(case_id)[1] is not None

    def _case_datasets(self, case_id: str) -> tuple[h5py.Dataset, h5py.Dataset | None]:
        if case_id not in self._datasets:
            group = self._group(case_id)
            image = self._dataset(group, "image")
            self._datasets[case_id] = (image, member_dataset(group, "label", self.path))
        return self._datasets[case_id]

    def read_slice(self, case_id: str, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored slice k -> (image (4, h, w) float32, label (h, w) uint8 or None)."""
        image, label = self._case_datasets(case_id)
        depth = image.shape[1]
        if not 0 <= k < depth:
            raise IndexError(f"slice {k} outside 0..{depth - 1} of case {case_id!r}")
        return image[:, k].astype(np.float32), (None if label is None else label[k])

    def read_image(self, case_id: str) -> np.ndarray:
        """Whole stored image (4, D, h, w) as float16 (as stored; cheap to hold many in memory)."""
        return self._case_datasets(case_id)[0][()]

    def read_label(self, case_id: str) -> np.ndarray | None:
        label = self._case_datasets(case_id)[1]
        return None if label is None else label[()]

    def case_meta(self, case_id: str) -> dict[str, Any]:
        """Case attributes: crop_box (d0, d1, h0, h1, w0, w1), original_shape, spacing, affine, ..."""
        group = self._group(case_id)
        meta: dict[str, Any] = {}
        for key, value in group.attrs.items():
            if isinstance(value, np.ndarray):
                meta[key] = value.tolist() if value.dtype.kind != "O" else [str(v) for v in value]
            elif isinstance(value, np.generic):
                meta[key] = value.item()
            else:
                meta[key] = value
        meta["case_id"] = case_id
        meta["stored_shape"] = list(self._case_datasets(case_id)[0].shape[1:])
        return meta

    def read_case(self, case_id: str) -> Case:
        """The stored case as a `Case`: z-scored, brain-cropped image (float32), cropped label, and an
        affine shifted by the crop so each stored voxel keeps its world position."""
        meta = self.case_meta(case_id)
        d0, _, h0, _, w0, _ = meta["crop_box"]
        affine = np.asarray(meta["affine"], dtype=np.float64)
        shift = np.eye(4)
        shift[:3, 3] = (h0, w0, d0)  # Case axes (D, H, W) are NIfTI (k, i, j)
        return Case(
            case_id=case_id,
            image=self.read_image(case_id).astype(np.float32),
            affine=affine @ shift,
            spacing=tuple(meta["spacing"]),  # type: ignore[arg-type]
            label=self.read_label(case_id),
        )

    def intensity_histograms(self) -> dict[str, dict[str, Any]]:
        """Per modality: {"edges": (BINS+1,) array, "counts": (BINS,) int64} of raw intensities in brain."""
        result = {}
        intensity = self._subgroup(self._file, "intensity")
        for modality in self.modalities:
            dataset = self._dataset(intensity, modality)
            lo, hi = float(dataset.attrs["lo"]), float(dataset.attrs["hi"])
            counts = dataset[()]
            result[modality] = {"edges": np.linspace(lo, hi, len(counts) + 1), "counts": counts}
        return result
