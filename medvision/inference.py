"""Whole-volume and single-slice prediction with a trained checkpoint.

A case goes through exactly the preprocessing of training (``normalise_case_image``: crop to the brain
box, per-modality z-score); each axial slice of the crop that holds brain is centre-padded to the next
multiple of ``2**depth`` (``pad_to_patch=True``: to the training patch size) and run through the network
in batches; the probabilities are put back into the case's full (D, H, W) geometry, zero elsewhere.

Speed (see bench/infer_speed.py and bench/RESULTS.md): channels_last, ``torch.inference_mode``, and
bf16 autocast where the hardware runs it natively (CUDA with bf16, or CPUs with AVX512-BF16/AMX, where
it is about 3x faster than fp32 and agrees to ~1e-3 in probability). On a CPU without native bf16 the
fp32 model may run through ONNX Runtime (``backend="auto"``/``"onnx"``), which needs the ``onnx``
package for the one-time export; without it inference silently stays on PyTorch (one log line).

Outputs follow the checkpoint's target: ``regions`` -> WT, TC, ET probabilities; ``wt`` -> WT only
(the label marks tumour as 2, sub-regions unknown); ``necrotic`` (the original project's target) ->
NCR only (label 1). The label applies threshold 0.5 with nesting enforced (TC within WT, ET within TC),
so ``label > 0`` is exactly ``P(WT) > 0.5``, ``label in {1, 4}`` exactly TC and ``label == 4`` exactly ET.

Uncertainty (``mc_samples=N > 0``): N passes with dropout sampling and BatchNorm in eval mode, seeded
(same seed -> same result). The probabilities are the mean of the N passes; the per-voxel uncertainty is
the standard deviation of the first channel's probability (WT, or NCR for a necrotic model) over the
passes, in [0, 0.5]. The case score is the mean of that map over the voxels predicted as tumour; when
none is predicted, over the voxels that any pass called tumour; 0.0 when no pass did.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

import medvision
from medvision.checkpoint import load_checkpoint
from medvision.cpu_threads import auto_threads
from medvision.data.case import MODALITIES, REGIONS, Case, regions_to_label
from medvision.data.preprocess import brain_mask, normalise_case_image
from medvision.errors import CheckpointError
from medvision.export import save_prediction_nifti, save_probabilities_nifti, save_uncertainty_nifti
from medvision.models import mc_dropout_mode
from medvision.onnx_backend import OnnxRunner, load_onnx_runner
from medvision.precision import DTYPE_TO_AMP, autocast, autocast_dtype, cpu_has_native_bf16, resolve_device
from medvision.prediction_cache import ByteLRU, case_content_hash
from medvision.volumetry import NECROTIC_REGION, remove_small_components, volumetry, volumetry_csv

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "Predictor",
    "PredictorOptions",
    "SlicePrediction",
    "VolumePrediction",
    "case_content_hash",
    "cpu_has_native_bf16",
    "probabilities_to_label",
    "remove_small_components",
    "save_prediction_nifti",
    "save_probabilities_nifti",
    "save_uncertainty_nifti",
    "volumetry",
    "volumetry_csv",
]

DEFAULT_CHECKPOINT = Path(medvision.__file__).resolve().parents[1] / "checkpoints" / "demo.safetensors"
TARGET_REGIONS: dict[str, tuple[str, ...]] = {
    "regions": REGIONS,
    "wt": ("WT",),
    "necrotic": (NECROTIC_REGION,),
}
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "onnx")
# Flip TTA: identity, horizontal (W), vertical (H), both; probabilities are averaged over the four.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class SlicePrediction:
    """One axial slice: probabilities (R, H, W) float32 and BraTS label (H, W) uint8, R = len(regions)."""

    probabilities: np.ndarray
    label: np.ndarray
    regions: tuple[str, ...]
    slice_index: int


@dataclass(frozen=True)
class VolumePrediction:
    """A whole case in its original geometry. Arrays are read-only (they may be shared through the cache).

    probabilities (R, D, H, W) float32 in ``regions`` order; label (D, H, W) uint8 BraTS labels;
    uncertainty (D, H, W) float32 and uncertainty_score only with MC dropout (see the module docstring).
    """

    probabilities: np.ndarray
    label: np.ndarray
    uncertainty: np.ndarray | None
    uncertainty_score: float | None
    regions: tuple[str, ...]
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Prepared:
    """A case normalised like training data, plus where its crop sits in the full volume and the padding."""

    image: np.ndarray  # (4, d, h, w) brain crop, z-scored
    box: tuple[slice, slice, slice]  # the crop in the full (D, H, W)
    brain: np.ndarray  # (d, h, w) bool: voxels of the crop where any modality is non-zero
    has_brain: np.ndarray  # (d,) bool: slices of the crop holding any brain voxel
    padded: tuple[int, int]  # network input (H, W)
    offset: tuple[int, int]  # top-left of the crop inside the padded input


def probabilities_to_label(
    probabilities: np.ndarray, regions: tuple[str, ...], threshold: float = 0.5
) -> np.ndarray:
    """Region probabilities (R, ...) -> BraTS labels (...) uint8, with nesting enforced (see module doc)."""
    on = np.asarray(probabilities) > threshold
    empty = np.zeros(on.shape[1:], dtype=bool)
    if tuple(regions) == REGIONS:
        wt = on[0]
        tc = on[1] & wt
        return regions_to_label(np.stack([wt, tc, on[2] & tc]))
    if tuple(regions) == ("WT",):
        return regions_to_label(np.stack([on[0], empty, empty]))
    if tuple(regions) == (NECROTIC_REGION,):
        return regions_to_label(np.stack([on[0], on[0], empty]))
    raise ValueError(f"unsupported regions {regions}")


def _state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def _meta_value(meta: dict[str, Any], key: str) -> Any:
    """``meta[key]``, or the same key inside a nested training config (``meta["config"]``/``["train"]``)."""
    if key in meta:
        return meta[key]
    for nested in ("config", "train", "train_config"):
        value = meta.get(nested)
        if isinstance(value, dict) and key in value:
            return value[key]
    return None


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@dataclass(frozen=True)
class PredictorOptions:
    """How a Predictor runs (validated on construction, ValueError).

    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    dtype: "auto" (bf16 on CUDA with bf16 and on CPUs with native bf16, fp16 on older CUDA, else fp32),
    "float32", "bfloat16", "float16" (CUDA only). Autocast only: weights stay fp32, sigmoid in fp32.
    backend: "auto" (ONNX Runtime on a CPU without native bf16 when available, else PyTorch), "torch",
    "onnx" (CPU; falls back to PyTorch if the export or onnxruntime fails).
    batch_size: slices per forward pass (None: 4 on CPU, 32 on CUDA).
    cache_bytes: memory budget of the result cache (volumes, slices, attention maps).
    onnx_cache_dir: where exported ONNX models are kept between processes (None: export in memory,
        write nothing; the CLI passes ``onnx_backend.user_cache_dir()``).
    pad_to_patch: pad every slice to the checkpoint's training patch size (as training saw it) instead of
    the brain crop rounded up to a multiple of 2**depth; slower, for checking that the margins do not matter.
    threads: CPU threads for the forward passes: "auto" (default: torch's thread count minus the cores
    other processes are using at the time, see medvision.cpu_threads), an int, or None (torch's setting,
    untouched). While a prediction runs this sets ``torch.set_num_threads`` for the process and restores
    it afterwards. Why: OpenMP threads that wait for descheduled siblings made a 2-thread volume 8x
    slower than a 1-thread one on a 2-core machine where other jobs were running (bench/RESULTS.md).
    """

    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    batch_size: int | None = None
    cache_bytes: int = 512 * 2**20
    onnx_cache_dir: Path | None = None
    pad_to_patch: bool = False
    threads: int | str | None = "auto"

    def __post_init__(self) -> None:
        device = self.device
        if not (device in DEVICES or (isinstance(device, str) and device.startswith("cuda:"))):
            raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        batch = self.batch_size
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"batch_size must be a positive int, got {batch!r}")
        if self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
        threads = self.threads
        if threads not in (None, "auto") and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive int, 'auto' or None, got {threads!r}")
        if self.onnx_cache_dir is not None:
            object.__setattr__(self, "onnx_cache_dir", Path(self.onnx_cache_dir))


class Predictor:
    """Segments cases with one checkpoint. Thread-safe (model calls are serialised by a lock).

    checkpoint: a ``.safetensors`` checkpoint; None -> the shipped ``checkpoints/demo.safetensors``.
    device, dtype and the keyword options: see :class:`PredictorOptions`.
    """

    def __init__(
        self, checkpoint: str | Path | None = None, device: str = "auto", dtype: str = "auto", **options: Any
    ) -> None:
        self.options = PredictorOptions(device=device, dtype=dtype, **options)
        self.device = resolve_device(device)
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        if checkpoint is None and not path.is_file():
            raise CheckpointError(
                path,
                "the demo checkpoint is missing; pass a checkpoint (--checkpoint) or train one "
                "(python -m medvision train --preset demo)",
            )
        model, meta = load_checkpoint(path, device=self.device)
        self.checkpoint_path: Path | None = path
        self._setup(model, meta, str(meta["weights_sha256"]))

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        meta: dict[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        **options: Any,
    ) -> Predictor:
        """A Predictor around an in-memory model (benchmarks, tests, a just-trained model).

        ``meta`` holds what a checkpoint's metadata would (``target``, ``neighbours``, ``patch_size``)."""
        self = cls.__new__(cls)
        self.options = PredictorOptions(device=device, dtype=dtype, **options)
        self.device = resolve_device(device)
        self.checkpoint_path = None
        model = model.to(self.device).eval()
        self._setup(model, dict(meta or {}), _state_hash(model))
        return self

    # ------------------------------------------------------------------------------------------ setup

    def _setup(self, model: nn.Module, meta: dict[str, Any], checkpoint_hash: str) -> None:
        options = self.options
        self.meta = meta
        self.checkpoint_hash = checkpoint_hash
        config = dict(getattr(model, "config", {}))
        in_channels = int(config.get("in_channels", 4))
        out_channels = int(config.get("out_channels", 3))
        self.multiple = 2 ** int(config.get("depth", getattr(model, "depth", 4)))
        self.target = self._target(meta, out_channels)
        self.regions = TARGET_REGIONS[self.target]
        self.neighbours = self._neighbours(meta, in_channels)
        patch = _meta_value(meta, "patch_size")
        self.patch_size = (int(patch[0]), int(patch[1])) if patch else None
        self.threshold = 0.5
        self.pad_to_patch = options.pad_to_patch
        self.batch_size = options.batch_size or (32 if self.device.type == "cuda" else 4)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self._lock = threading.RLock()
        self._max_threads = torch.get_num_threads()  # read once: _thread_limit changes it while running
        self._mc_lock = threading.Lock()
        self._results = ByteLRU(options.cache_bytes)
        # Normalised crops of recent cases: predict_slice after predict_volume (or scrolling) skips the work.
        self._prepared = ByteLRU(min(options.cache_bytes, 256 * 2**20))
        self.amp_dtype = self._resolve_amp(options.dtype)
        self._onnx: OnnxRunner | None = None
        self.backend = "torch"
        backend = options.backend
        wants_onnx = backend == "onnx" or (backend == "auto" and self.amp_dtype is None)
        if wants_onnx and self.device.type == "cpu":
            self._onnx = load_onnx_runner(
                self.model,
                checkpoint_hash,
                in_channels=in_channels,
                multiple=self.multiple,
                cache_dir=options.onnx_cache_dir,
                threads=options.threads if isinstance(options.threads, int) else None,
            )
            if self._onnx is not None:
                self.backend = "onnx"
        elif backend == "onnx":
            logger.info("the ONNX Runtime path is CPU only; using PyTorch on %s", self.device)
        logger.debug(
            "predictor: target=%s device=%s precision=%s backend=%s batch=%d",
            self.target,
            self.device,
            self.precision,
            self.backend,
            self.batch_size,
        )

    @staticmethod
    def _target(meta: dict[str, Any], out_channels: int) -> str:
        target = _meta_value(meta, "target")
        if target is None:
            target = "regions" if out_channels == 3 else "wt"
            logger.info(
                "checkpoint does not name its target; assuming %r from %d outputs", target, out_channels
            )
        if target not in TARGET_REGIONS:
            raise CheckpointError(meta.get("weights_file", "checkpoint"), f"unknown target {target!r}")
        if len(TARGET_REGIONS[target]) != out_channels:
            raise CheckpointError(
                meta.get("weights_file", "checkpoint"),
                f"target {target!r} needs {len(TARGET_REGIONS[target])} outputs, "
                f"the model has {out_channels}",
            )
        return str(target)

    @staticmethod
    def _neighbours(meta: dict[str, Any], in_channels: int) -> int:
        n_modalities = len(MODALITIES)
        neighbours = _meta_value(meta, "neighbours")
        if neighbours is None:
            # 4 * (1 + 2n) input channels -> n neighbour slices each side.
            neighbours = max((in_channels // n_modalities - 1) // 2, 0)
        neighbours = int(neighbours)
        if n_modalities * (1 + 2 * neighbours) != in_channels:
            raise CheckpointError(
                meta.get("weights_file", "checkpoint"),
                f"model takes {in_channels} input channels, neighbours={neighbours} gives "
                f"{n_modalities * (1 + 2 * neighbours)}",
            )
        return neighbours

    def _resolve_amp(self, dtype: str) -> torch.dtype | None:
        """The autocast dtype (None = plain fp32), checked with one tiny forward pass."""
        if dtype == "float32":
            return None
        if dtype == "float16" and self.device.type != "cuda":
            raise ValueError("dtype 'float16' is supported on CUDA only")
        wanted = autocast_dtype(DTYPE_TO_AMP[dtype], self.device)
        if wanted is None:
            return None
        probe = torch.zeros(
            1, int(self.model.config["in_channels"]), self.multiple, self.multiple, device=self.device
        ).contiguous(memory_format=torch.channels_last)
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=wanted):
                self.model(probe)
        except Exception as exc:  # an op without a kernel for this dtype on this device
            logger.info("%s autocast failed on %s (%s); using float32", wanted, self.device, exc)
            return None
        return wanted

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")

    def describe(self) -> str:
        """One line saying how this predictor runs (for logs, the CLI and the app)."""
        return (
            f"{self.target} model on {self.device} ({self.precision}, {self.backend}, "
            f"batch {self.batch_size}, threads {self.options.threads}, neighbours {self.neighbours})"
        )

    # ------------------------------------------------------------------------------------ preprocessing

    def _prepare(self, case: Case, case_hash: str) -> _Prepared:
        cached = self._prepared.get(case_hash)
        if cached is not None:
            return cached
        image = np.asarray(case.image)
        if image.ndim != 4 or image.shape[0] != len(MODALITIES):
            raise ValueError(f"case image must be (4, D, H, W), got {image.shape}")
        normalised, box = normalise_case_image(image)
        brain = brain_mask(image[(slice(None), *box)])
        h, w = normalised.shape[-2:]
        padded_h, padded_w = _round_up(h, self.multiple), _round_up(w, self.multiple)
        if self.pad_to_patch and self.patch_size is not None:
            # Training saw crops centre-padded to the patch size: the same margins, at a price in speed.
            padded_h = max(padded_h, _round_up(self.patch_size[0], self.multiple))
            padded_w = max(padded_w, _round_up(self.patch_size[1], self.multiple))
        prepared = _Prepared(
            image=normalised,
            box=box,
            brain=brain,
            has_brain=brain.any(axis=(1, 2)),
            padded=(padded_h, padded_w),
            offset=((padded_h - h) // 2, (padded_w - w) // 2),  # same centring as data.dataset.fit_to_patch
        )
        self._prepared.put(case_hash, prepared)
        return prepared

    def _batch_input(self, prepared: _Prepared, indices: np.ndarray) -> np.ndarray:
        """(B, C, H', W') network input for crop slices ``indices``; neighbours clamp at the crop's ends."""
        depth, h, w = prepared.image.shape[1:]
        top, left = prepared.offset
        n_mod = len(MODALITIES)
        batch = np.zeros(
            (len(indices), n_mod * (1 + 2 * self.neighbours), *prepared.padded), dtype=np.float32
        )
        for b, k in enumerate(indices):
            for block, offset in enumerate(range(-self.neighbours, self.neighbours + 1)):
                j = min(max(int(k) + offset, 0), depth - 1)  # as data.dataset.SliceDataset.read
                batch[b, block * n_mod : (block + 1) * n_mod, top : top + h, left : left + w] = (
                    prepared.image[:, j]
                )
        return batch

    # ------------------------------------------------------------------------------------ forward passes

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last)

    def _probabilities(self, batch: np.ndarray, *, tta: bool, stochastic: bool = False) -> np.ndarray:
        """Sigmoid probabilities (B, R, H', W') float32 of one input batch, averaged over flips with TTA."""
        flips = TTA_FLIPS if tta else ((),)
        if self._onnx is not None and not stochastic:
            total = None
            for dims in flips:
                axes = tuple(d % 4 for d in dims)
                x = np.ascontiguousarray(np.flip(batch, axes)) if dims else batch
                p = expit(self._onnx(x).astype(np.float32))
                p = np.flip(p, axes) if dims else p
                total = p if total is None else total + p
            return np.ascontiguousarray(total / len(flips), dtype=np.float32)
        x = self._to_device(batch)
        total = None
        with self._autocast():
            for dims in flips:
                xi = torch.flip(x, dims).contiguous(memory_format=torch.channels_last) if dims else x
                p = torch.sigmoid(self.model(xi).float())
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total + p
        return (total / len(flips)).float().cpu().numpy()

    @contextlib.contextmanager
    def _thread_limit(self) -> Iterator[None]:
        """Run with ``options.threads`` CPU threads (process-wide while it lasts), then restore the count."""
        wanted = self.options.threads
        previous = torch.get_num_threads()
        if wanted == "auto" and self.device.type == "cpu":
            wanted = auto_threads(self._max_threads)
        if not isinstance(wanted, int) or self.device.type != "cpu" or wanted == previous:
            yield
            return
        torch.set_num_threads(wanted)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        """Dropout draws from a fixed seed without disturbing the caller's global RNG state."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # ------------------------------------------------------------------------------------ public API

    def predict_slice(self, case: Case, k: int) -> SlicePrediction:
        """Axial slice ``k`` (0-based, MedVision axis 0) with one forward pass, or from a cached volume."""
        depth, height, width = case.shape
        if not 0 <= int(k) < depth:
            raise ValueError(f"slice index {k} out of range [0, {depth})")
        k = int(k)
        case_hash = case_content_hash(case)
        volume = self._results.get(("volume", case_hash, False, 0, None, 0))
        if volume is not None:
            return SlicePrediction(volume.probabilities[:, k], volume.label[k], self.regions, k)
        key = ("slice", case_hash, k)
        cached = self._results.get(key)
        if cached is not None:
            return cached
        prepared = self._prepare(case, case_hash)
        probabilities = np.zeros((len(self.regions), height, width), dtype=np.float32)
        local = k - prepared.box[0].start
        if 0 <= local < len(prepared.has_brain) and prepared.has_brain[local]:
            with self._lock, self._thread_limit(), torch.inference_mode():
                padded = self._probabilities(self._batch_input(prepared, np.array([local])), tta=False)[0]
            # Skull-stripped input: nothing outside the brain can be tumour, whatever the network says there.
            inside = self._uncrop(prepared, padded) * prepared.brain[local]
            probabilities[:, prepared.box[1], prepared.box[2]] = inside
        label = probabilities_to_label(probabilities, self.regions, self.threshold)
        result = SlicePrediction(_read_only(probabilities), _read_only(label), self.regions, k)
        self._results.put(key, result)
        return result

    @staticmethod
    def _uncrop(prepared: _Prepared, padded: np.ndarray) -> np.ndarray:
        """(..., H', W') network output -> (..., h, w) of the brain crop."""
        h, w = prepared.image.shape[-2:]
        top, left = prepared.offset
        return padded[..., top : top + h, left : left + w]

    def predict_volume(
        self,
        case: Case,
        *,
        tta: bool = False,
        mc_samples: int = 0,
        seed: int = 0,
        progress: ProgressFn | None = None,
        min_component_voxels: int = 0,
    ) -> VolumePrediction:
        """Segment the whole case. ``progress(fraction)`` is called after every batch (an exception
        raised by it aborts the prediction). ``tta`` averages over the four flips; ``mc_samples=N``
        adds MC-dropout uncertainty (N passes, each with the flips when ``tta``); ``min_component_voxels``
        removes smaller 3-D tumour pieces from the label (probabilities are left as predicted).
        Results are cached by (case content, checkpoint, options)."""
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 0:
            raise ValueError(f"mc_samples must be an int >= 0, got {mc_samples!r}")
        if mc_samples == 1:
            raise ValueError("mc_samples must be 0 (off) or at least 2 (a spread needs two passes)")
        if not isinstance(min_component_voxels, int) or min_component_voxels < 0:
            raise ValueError(f"min_component_voxels must be an int >= 0, got {min_component_voxels!r}")
        case_hash = case_content_hash(case)
        key = (
            "volume",
            case_hash,
            bool(tta),
            mc_samples,
            int(seed) if mc_samples else None,
            min_component_voxels,
        )
        cached = self._results.get(key)
        if cached is not None:
            if progress is not None:
                progress(1.0)
            return cached
        start = time.perf_counter()
        prepared = self._prepare(case, case_hash)
        depth, height, width = case.shape
        probabilities = np.zeros((len(self.regions), depth, height, width), dtype=np.float32)
        uncertainty = np.zeros((depth, height, width), dtype=np.float32) if mc_samples else None
        any_tumour = np.zeros((depth, height, width), dtype=bool) if mc_samples else None
        indices = np.flatnonzero(prepared.has_brain)
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        d0 = prepared.box[0].start
        rows, cols = prepared.box[1], prepared.box[2]
        # The model lock is taken per batch, so the viewer's predict_slice can run between the batches of a
        # background volume. MC runs hold their own lock throughout: the seeded global RNG is theirs alone.
        seeded = self._seeded(int(seed)) if mc_samples else contextlib.nullcontext()
        mc_lock = self._mc_lock if mc_samples else contextlib.nullcontext()
        with mc_lock, self._thread_limit(), torch.inference_mode(), seeded:
            for done, batch_indices in enumerate(batches, start=1):
                batch = self._batch_input(prepared, batch_indices)
                slices = d0 + batch_indices
                brain = prepared.brain[batch_indices]  # (B, h, w): outside the brain stays 0
                if mc_samples:
                    with self._lock, mc_dropout_mode(self.model):
                        samples = np.stack(
                            [self._probabilities(batch, tta=tta, stochastic=True) for _ in range(mc_samples)]
                        )
                    samples = self._uncrop(prepared, samples) * brain[None, :, None]  # (N, B, R, h, w)
                    mean = samples.mean(axis=0)
                    uncertainty[slices, rows, cols] = samples[:, :, 0].std(axis=0)
                    any_tumour[slices, rows, cols] = (samples[:, :, 0] > self.threshold).any(axis=0)
                else:
                    with self._lock:
                        mean = self._uncrop(prepared, self._probabilities(batch, tta=tta)) * brain[:, None]
                probabilities[:, slices, rows, cols] = mean.transpose(1, 0, 2, 3)
                if progress is not None:
                    progress(done / len(batches))
        label = probabilities_to_label(probabilities, self.regions, self.threshold)
        if min_component_voxels > 1:
            label = remove_small_components(label, min_component_voxels)
        score = None
        if uncertainty is not None:
            score = self._uncertainty_score(uncertainty, label > 0, any_tumour)
        options = {
            "tta": bool(tta),
            "mc_samples": mc_samples,
            "seed": int(seed),
            "min_component_voxels": min_component_voxels,
        }
        result = VolumePrediction(
            probabilities=_read_only(probabilities),
            label=_read_only(label),
            uncertainty=_read_only(uncertainty) if uncertainty is not None else None,
            uncertainty_score=score,
            regions=self.regions,
            seconds=time.perf_counter() - start,
            options=options,
        )
        if progress is not None and not batches:
            progress(1.0)
        self._results.put(key, result)
        logger.debug("predicted %s in %.2f s (%s)", case.case_id, result.seconds, options)
        return result

    @staticmethod
    def _uncertainty_score(uncertainty: np.ndarray, predicted: np.ndarray, any_tumour: np.ndarray) -> float:
        for where in (predicted, any_tumour):
            if where.any():
                return float(uncertainty[where].mean())
        return 0.0

    def attention_map(self, case: Case, k: int) -> np.ndarray:
        """(H, W) float32 in [0, 1]: the shallowest (full-resolution) attention gate's coefficients of
        slice ``k``, upsampled to the input size if needed and placed in the full slice (0 outside the
        brain crop and on slices without brain). ValueError for a model without attention gates."""
        depth, height, width = case.shape
        if not 0 <= int(k) < depth:
            raise ValueError(f"slice index {k} out of range [0, {depth})")
        if not getattr(self.model, "config", {}).get("attention", True):
            raise ValueError("this checkpoint's model has no attention gates (attention=False)")
        k = int(k)
        case_hash = case_content_hash(case)
        key = ("attention", case_hash, k)
        cached = self._results.get(key)
        if cached is not None:
            return cached
        prepared = self._prepare(case, case_hash)
        result = np.zeros((height, width), dtype=np.float32)
        local = k - prepared.box[0].start
        if 0 <= local < len(prepared.has_brain) and prepared.has_brain[local]:
            with self._lock, self._thread_limit(), torch.inference_mode(), self._autocast():
                x = self._to_device(self._batch_input(prepared, np.array([local])))
                _, maps = self.model(x, return_attention=True)
                if not maps:
                    raise ValueError("this checkpoint's model returned no attention maps")
                shallowest = max(maps, key=lambda m: m.shape[-2] * m.shape[-1]).float()
                if tuple(shallowest.shape[-2:]) != prepared.padded:
                    shallowest = F.interpolate(
                        shallowest, size=prepared.padded, mode="bilinear", align_corners=False
                    )
                padded = shallowest[0, 0].clamp(0.0, 1.0).cpu().numpy()
            result[prepared.box[1], prepared.box[2]] = self._uncrop(prepared, padded)
        result = _read_only(result)
        self._results.put(key, result)
        return result

    def clear_cache(self) -> None:
        """Forget cached results and normalised cases."""
        self._results.clear()
        self._prepared.clear()


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def __getattr__(name: str) -> Any:
    # VolumeJob lives in medvision.volume_job (which imports this module); offer it here lazily too.
    if name == "VolumeJob":
        from medvision.volume_job import VolumeJob

        return VolumeJob
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
