"""Synthetic cohort: realistic 4-modality brain-tumour phantoms, MedVision's built-in dataset.

``make_phantom(case_id, seed, size)`` draws one skull-stripped brain (folded cortex, white matter,
deep grey nuclei, ventricles, sulci, vessels; :mod:`phantom_anatomy`), 1-3 irregular tumours with
BraTS sub-regions (:mod:`phantom_tumour`) and paints FLAIR, T1, T1ce and T2 with a randomised contrast
model, bias field and Rician noise (:mod:`phantom_contrast`). Images are float32 holding integer
values in int16 range, background exactly 0; labels are 0/1/2/4 like BraTS.

Geometry: the phantom always spans the BraTS field of view, 155 x 240 x 240 mm (D, H, W); the voxel
spacing is that extent divided by ``size``, i.e. 1 mm at the default size (155, 240, 240) and coarser
for smaller test volumes. The affine is the BraTS one, ``diag(-sH, -sW, sD)`` with the origin at
``(0, sW * (W - 1), 0)`` (for 1 mm: the (0, 239, 0) origin of BraTS 2021 files).

``write_cohort(out_dir, n_cases, seed=..., fmt=...)`` writes cases ``Synth_000``, ``Synth_001``, ...;
case ``i`` uses a seed derived from ``(seed, i)`` only, so a cohort is reproducible and its first
cases do not change when ``n_cases`` grows. On-disk layout by ``fmt``:

- ``"nifti"``: ``<out>/Synth_000/Synth_000_{flair,t1,t1ce,t2,seg}.nii.gz`` (BraTS 2021 folders)
- ``"h5"``: ``<out>/h5/volume_<i>_slice_<s>.h5`` (Kaggle BraTS2020 slice files; volume index = i)
- ``"both"``: ``<out>/nifti/Synth_000/...`` and ``<out>/h5/volume_<i>_slice_<s>.h5``
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvision.data.case import Case
from medvision.data.phantom_anatomy import FULL_EXTENT_MM, Anatomy, make_anatomy
from medvision.data.phantom_contrast import ContrastParams, render_modalities, sample_contrast
from medvision.data.phantom_tumour import TumourMaps, make_tumours, sample_lesions
from medvision.parallel import spawn_pool

logger = logging.getLogger(__name__)

DEFAULT_SIZE: tuple[int, int, int] = (155, 240, 240)
FORMATS: tuple[str, ...] = ("nifti", "h5", "both")
CASE_PREFIX = "Synth_"
MIN_SIZE = 8


def case_id_for(index: int) -> str:
    """Synthetic case id of cohort member ``index`` (``Synth_000``, ...)."""
    return f"{CASE_PREFIX}{index:03d}"


def case_seed(seed: int, index: int) -> int:
    """Seed of cohort member ``index``: depends only on (seed, index), never on the cohort size."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _check_size(size: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3 or any(int(s) != s or int(s) < MIN_SIZE for s in size):
        raise ValueError(f"size must be three integers >= {MIN_SIZE} (D, H, W), got {tuple(size)}")
    return int(size[0]), int(size[1]), int(size[2])


def phantom_geometry(size: Sequence[int]) -> tuple[tuple[float, float, float], np.ndarray]:
    """(spacing along D, H, W in mm, 4x4 BraTS-style affine) of a phantom of ``size`` voxels."""
    d, h, w = _check_size(size)
    spacing = (FULL_EXTENT_MM[0] / d, FULL_EXTENT_MM[1] / h, FULL_EXTENT_MM[2] / w)
    # NIfTI voxel (i, j, k) = case (H, W, D); BraTS stores x = -i, y = 239 - j, z = k at 1 mm.
    affine = np.diag([-spacing[1], -spacing[2], spacing[0], 1.0])
    affine[1, 3] = spacing[2] * (w - 1)
    return spacing, affine


@dataclass(frozen=True)
class PhantomParts:
    """A phantom with the maps it was drawn from (for tests, demos and calibration checks)."""

    case: Case
    anatomy: Anatomy  # tissue fractions per brain voxel (see phantom_anatomy)
    tumours: TumourMaps  # lesion specs, labels and contrast weights per brain voxel
    contrast: ContrastParams  # the case's random appearance

    def brain_values(self, channel: int) -> np.ndarray:
        """Intensities of one modality at the anatomy's brain voxels (aligned with the anatomy's maps)."""
        return self.case.image[channel][self.anatomy.box].ravel()[self.anatomy.index]


def make_phantom_parts(case_id: str, seed: int, size: Sequence[int] = DEFAULT_SIZE) -> PhantomParts:
    """Like :func:`make_phantom`, also returning the anatomy, tumour maps and contrast parameters."""
    shape = _check_size(size)
    spacing, affine = phantom_geometry(shape)
    rng = np.random.default_rng(seed)
    anatomy = make_anatomy(rng, shape)
    lesions = sample_lesions(rng, anatomy)
    tumours = make_tumours(rng, anatomy, lesions)
    params = sample_contrast(rng)
    image = render_modalities(rng, anatomy, tumours, params, shape, spacing)
    label = np.zeros(shape, dtype=np.uint8)
    label.reshape(-1)[anatomy.full_index(shape)] = tumours.label
    logger.debug("phantom %s: %d lesions (%s)", case_id, len(lesions), ", ".join(les.kind for les in lesions))
    case = Case(case_id=case_id, image=image, affine=affine, spacing=spacing, label=label)
    return PhantomParts(case=case, anatomy=anatomy, tumours=tumours, contrast=params)


def make_phantom(case_id: str, seed: int, size: Sequence[int] = DEFAULT_SIZE) -> Case:
    """One deterministic phantom (same ``seed`` and ``size`` -> identical arrays)."""
    return make_phantom_parts(case_id, seed, size).case


def _write_one(job: tuple[Path, int, int, tuple[int, int, int], str]) -> list[Path]:
    # Imported here so worker processes load the writers only when they write.
    from medvision.data.writers import write_brats_folder, write_kaggle_slices

    out_dir, index, seed, size, fmt = job
    case = make_phantom(case_id_for(index), case_seed(seed, index), size)
    written = []
    if fmt in ("nifti", "both"):
        written.append(write_brats_folder(case, out_dir / "nifti" if fmt == "both" else out_dir))
    if fmt in ("h5", "both"):
        h5_dir = out_dir / "h5"
        h5_dir.mkdir(parents=True, exist_ok=True)
        write_kaggle_slices(case, h5_dir, volume_index=index)
        written.append(h5_dir)
    return written


def _single_threaded_blas_env() -> dict[str, str]:
    """BLAS/OpenMP thread counts of 1 for the workers, except those the user set."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return {name: "1" for name in names if name not in os.environ}


def write_cohort(
    out_dir: str | Path,
    n_cases: int,
    *,
    seed: int = 0,
    size: Sequence[int] = DEFAULT_SIZE,
    fmt: str = "nifti",
    workers: int = 2,
    progress: bool = False,
) -> list[Path]:
    """Write ``n_cases`` phantoms under ``out_dir`` (layout in the module docstring).

    Returns the written case folders for NIfTI output; for ``"h5"`` the ``h5`` folder (once);
    for ``"both"`` the case folders followed by the ``h5`` folder.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    shape = _check_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, int(seed), shape, fmt) for i in range(n_cases)]
    workers = min(workers, n_cases, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_cases, desc="synth", unit="case")
    results: list[list[Path]] = []
    if workers == 1:
        for job in jobs:
            results.append(_write_one(job))
            if bar is not None:
                bar.update(1)
    else:
        # Fresh ("spawn") workers that start with single-threaded BLAS: each worker already keeps a core
        # busy, and multithreaded BLAS in every worker doubled the CPU time per case on 2 cores.
        with spawn_pool(workers, env=_single_threaded_blas_env()) as pool:
            for written in pool.map(_write_one, jobs):
                results.append(written)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    case_dirs = [p for written in results for p in written if p.name != "h5"]
    if fmt in ("h5", "both"):
        case_dirs.append(out / "h5")
    logger.info("wrote %d synthetic cases to %s (%s)", n_cases, out, fmt)
    return case_dirs
