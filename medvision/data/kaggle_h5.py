"""The Kaggle "BraTS2020 training data" layout: one HDF5 file per axial slice.

Files are named ``volume_<v>_slice_<s>.h5`` and hold ``image`` (240, 240, 4) float64 and ``mask``
(240, 240, 3) one-hot NCR/NET, ED, ET. The full set has 57,195 files in one folder, so the index is
built from file NAMES only (``os.scandir``) and a volume's files are opened only when it is read.

The image channel order is not documented reliably (the original project read it as FLAIR, T1, T1ce,
T2; a public notebook reads T1, T1ce, T2, FLAIR), so it is a parameter; the EDA per-channel intensity
histograms let a user check it. The files carry no geometry: volumes get an identity affine and the
1 mm isotropic spacing of BraTS.

Each slice file is opened only when its real path lies in the allowed folders (``roots``; by default the
folder given, see :mod:`medvision.confinement`), its ``image`` and ``mask`` are reached through
:mod:`medvision.data.h5_checks` (no external storage, virtual datasets or links), and their shapes are held
to the per-case voxel budget before they are read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from medvision.confinement import Confinement
from medvision.data.case import MODALITIES, Case
from medvision.data.discovery import list_folder
from medvision.data.h5_checks import member
from medvision.data.nifti_checks import DEFAULT_CASE_VOXEL_BUDGET
from medvision.errors import InputDataError

logger = logging.getLogger(__name__)

KAGGLE_DEFAULT_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
KAGGLE_NAME = re.compile(r"^volume_(\d+)_slice_(\d+)\.h5$")
# Mask channel -> BraTS label: NCR/NET, ED, ET.
MASK_CHANNEL_LABELS: tuple[int, ...] = (1, 2, 4)
_H5_ERRORS: tuple[type[BaseException], ...] = (OSError, KeyError, ValueError, TypeError, RuntimeError)


def validate_channel_order(channel_order: Sequence[str]) -> tuple[str, ...]:
    """The file channel order must name each of FLAIR, T1, T1ce, T2 exactly once (ValueError otherwise)."""
    order = tuple(str(c).lower() for c in channel_order)
    if sorted(order) != sorted(MODALITIES):
        raise ValueError(f"channel_order must be a permutation of {MODALITIES}, got {tuple(channel_order)}")
    return order


def scan_kaggle_dir(
    directory: str | Path, within: Confinement | None = None
) -> dict[int, list[tuple[int, Path]]]:
    """volume -> [(slice index, path), ...] sorted by slice, from file names only (no file is opened).

    ``within`` (default: ``directory``) is checked for every symbolic link listed (see discovery.list_folder).
    """
    directory = Path(directory)
    within = Confinement.around(directory) if within is None else within
    return index_kaggle_names(directory, list_folder(directory, 0, within).files)


def index_kaggle_names(directory: Path, names: Iterable[str]) -> dict[int, list[tuple[int, Path]]]:
    """Like ``scan_kaggle_dir`` for names already listed (a dataset walk lists each folder only once)."""
    volumes: dict[int, list[tuple[int, Path]]] = {}
    for name in names:
        match = KAGGLE_NAME.match(name)
        if match:
            volume, slice_index = int(match.group(1)), int(match.group(2))
            volumes.setdefault(volume, []).append((slice_index, directory / name))
    for entries_of_volume in volumes.values():
        entries_of_volume.sort(key=lambda item: item[0])
    return volumes


class KaggleH5Index:
    """Index of a folder of ``volume_<v>_slice_<s>.h5`` files, built without opening any of them."""

    def __init__(
        self,
        directory: str | Path,
        channel_order: Sequence[str] = KAGGLE_DEFAULT_ORDER,
        *,
        roots: Sequence[str | Path] | None = None,
        max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
    ) -> None:
        self.directory = Path(directory)
        self.channel_order = validate_channel_order(channel_order)
        self.max_case_voxels = max_case_voxels
        if not self.directory.is_dir():
            raise InputDataError(
                self.directory, "not a folder (expected a folder of volume_<v>_slice_<s>.h5 files)"
            )
        within = Confinement.around(self.directory) if roots is None else Confinement.of(roots)
        within.check(self.directory)
        self.roots = within.roots
        self._volumes = scan_kaggle_dir(self.directory, within)
        if not self._volumes:
            raise InputDataError(self.directory, "no volume_<v>_slice_<s>.h5 files in this folder")
        logger.debug("indexed %d Kaggle volumes in %s", len(self._volumes), self.directory)

    @property
    def volumes(self) -> list[int]:
        return sorted(self._volumes)

    def slices(self, volume: int) -> list[Path]:
        """The slice files of ``volume`` in slice order (0, 1, ...); refuses gaps and duplicates."""
        if volume not in self._volumes:
            raise InputDataError(self.directory, f"no slices of volume {volume} in this folder")
        return checked_slice_paths(self._volumes[volume], volume, self.directory)

    def read_volume(self, volume: int) -> Case:
        return read_kaggle_volume(
            self.slices(volume),
            volume,
            self.channel_order,
            roots=self.roots,
            max_case_voxels=self.max_case_voxels,
        )


def checked_slice_paths(entries: Sequence[tuple[int, Path]], volume: int, directory: Path) -> list[Path]:
    """Slice files must be numbered 0..n-1 exactly once, or the volume geometry would be wrong."""
    indices = [s for s, _ in entries]
    if len(set(indices)) != len(indices):
        dupes = sorted({s for s in indices if indices.count(s) > 1})
        raise InputDataError(directory, f"volume {volume} has more than one file for slices {dupes[:10]}")
    missing = sorted(set(range(max(indices) + 1)) - set(indices))
    if missing:
        raise InputDataError(directory, f"volume {volume} is missing slice files {missing[:10]}")
    return [p for _, p in entries]


def read_kaggle_volume(
    paths: Sequence[Path],
    volume: int,
    channel_order: Sequence[str] = KAGGLE_DEFAULT_ORDER,
    *,
    roots: Sequence[str | Path] | None = None,
    max_case_voxels: int = DEFAULT_CASE_VOXEL_BUDGET,
) -> Case:
    """Stack the slice files ``paths`` (in slice order) into a Case: image[c, k] = slice_k.image[:, :, c'].

    ``roots``: the allowed folders (None = the folders holding ``paths``). The volume may hold at most
    ``max_case_voxels`` image voxels, so each slice at most that over (4 x number of slices) pixels.
    """
    order = validate_channel_order(channel_order)
    within = Confinement.of({Path(p).parent for p in paths} if roots is None else roots) if paths else None
    # For each MedVision modality, the file channel that holds it.
    file_channel = [order.index(m) for m in MODALITIES]
    max_pixels = max_case_voxels // max(len(MODALITIES) * len(paths), 1)
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    for k, path in enumerate(paths):
        assert within is not None
        slice_image, slice_mask = read_kaggle_slice(path, within=within, max_pixels=max_pixels)
        if image is None or label is None:
            height, width = slice_image.shape[:2]
            image = np.empty((len(MODALITIES), len(paths), height, width), dtype=np.float32)
            label = np.empty((len(paths), height, width), dtype=np.uint8)
        elif slice_image.shape[:2] != image.shape[2:]:
            size, expected = slice_image.shape[:2], image.shape[2:]
            raise InputDataError(path, f"slice size {size} differs from {paths[0].name} size {expected}")
        image[:, k] = np.moveaxis(slice_image, -1, 0)[file_channel]
        label[k] = mask_to_label(slice_mask, path)
    if image is None or label is None:
        raise InputDataError(f"volume_{volume}", "no slice files given")
    return Case(
        case_id=f"volume_{volume}",
        image=image,
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        label=label,
        source_paths=tuple(Path(p) for p in paths),
    )


def read_kaggle_slice(
    path: str | Path, *, within: Confinement, max_pixels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One slice file -> (image (H, W, 4), mask (H, W, 3)), validated.

    ``within``: the allowed folders (a path leading outside is refused unopened); ``max_pixels``: the
    largest H x W accepted, checked from the dataset shape before its data is read.
    """
    path = Path(path)
    if path.suffix.lower() != ".h5":
        raise InputDataError(path, f"wrong extension: expected a .h5 file, got {path.name!r}")
    within.check(path)
    try:
        if path.stat().st_size == 0:
            raise InputDataError(path, "file is empty (0 bytes)")
        with h5py.File(path, "r") as handle:
            image = _read_dataset(handle, path, "image", channels=4, max_pixels=max_pixels)
            mask = _read_dataset(handle, path, "mask", channels=3, height_width=image.shape[:2])
    except InputDataError:
        raise
    except _H5_ERRORS as exc:
        raise InputDataError(path, f"not a readable HDF5 file (corrupt or truncated): {exc}") from exc
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputDataError(path, "dataset 'image' contains non-finite values (NaN or Inf)")
    return image, mask


def _read_dataset(
    handle: h5py.File,
    path: Path,
    name: str,
    *,
    channels: int,
    height_width: tuple[int, ...] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    dataset = member(handle, name, path)
    if not isinstance(dataset, h5py.Dataset):
        raise InputDataError(path, f"no dataset {name!r} (a Kaggle BraTS slice has 'image' and 'mask')")
    shape = tuple(dataset.shape)
    if len(shape) != 3 or shape[-1] != channels or (height_width is not None and shape[:2] != height_width):
        height, width = height_width if height_width is not None else ("H", "W")
        expected = f"({height}, {width}, {channels})"
        raise InputDataError(path, f"dataset {name!r} has shape {shape}, expected {expected}")
    if max_pixels is not None and shape[0] * shape[1] > max_pixels:
        raise InputDataError(
            path,
            f"dataset {name!r} has shape {shape}: more than the {max_pixels:,} pixels per slice that "
            "this volume's voxel budget allows (a Kaggle BraTS slice is 240 x 240)",
        )
    if dataset.dtype.kind not in "biuf" or dataset.dtype.fields is not None:
        raise InputDataError(
            path, f"dataset {name!r} has unsupported type {dataset.dtype}; expected real numbers"
        )
    return dataset[()]


def mask_to_label(mask: np.ndarray, path: str | Path) -> np.ndarray:
    """One-hot (H, W, 3) NCR/NET, ED, ET mask -> BraTS labels (H, W) uint8 (1, 2, 4)."""
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise InputDataError(path, "dataset 'mask' contains non-finite values (NaN or Inf)")
    on = mask == 1
    if not (on | (mask == 0)).all():
        raise InputDataError(path, "dataset 'mask' must be one-hot (only 0 and 1 values)")
    overlap = int(np.count_nonzero(on.sum(axis=-1) > 1))
    if overlap:
        raise InputDataError(
            path, f"dataset 'mask' is not one-hot: {overlap} pixels have more than one class"
        )
    label = np.zeros(mask.shape[:2], dtype=np.uint8)
    for channel, value in enumerate(MASK_CHANNEL_LABELS):
        label[on[..., channel]] = value
    return label
