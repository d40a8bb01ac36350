"""The public predictor: a checkpoint, its engine, and caches of recent results (what the CLI and app use).

``Predictor`` loads a checkpoint, builds an :class:`~medvision.inference.backend.InferenceBackend` and a
:class:`~medvision.inference.forward.SegmentationEngine`, and puts the engine's crop-sized results back
into the case's full (D, H, W) geometry. Results are cached by case content, checkpoint and options
(the app asks for the same slices again on every rerun). Outputs follow the checkpoint's target (see
medvision.data.regions): ``regions`` -> WT, TC, ET probabilities; ``wt`` -> WT; ``necrotic`` -> NCR.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

import medvision
from medvision.checkpoint import load_checkpoint
from medvision.data.case import Case
from medvision.data.modality_sets import parse_subset, set_aside, subset_name
from medvision.data.views import checkpoint_view
from medvision.errors import CheckpointError
from medvision.inference.backend import BACKENDS, DTYPES, InferenceBackend
from medvision.inference.forward import ProgressFn, SegmentationEngine, check_volume_options
from medvision.inference.geometry import PreparedVolume, to_full_volume
from medvision.inference.postprocess import probabilities_to_label
from medvision.inference.spec import model_spec
from medvision.models import ModelEnsemble
from medvision.precision import resolve_device
from medvision.prediction_cache import ByteLRU, case_content_hash

logger = logging.getLogger(__name__)

# Real scans (no phantoms), trained with modality dropout (checkpoints/MODEL_CARD.md); the phantom-only
# model beside it is checkpoints/demo.safetensors.
DEFAULT_CHECKPOINT = Path(medvision.__file__).resolve().parents[1] / "checkpoints" / "default.safetensors"
DEVICES = ("auto", "cpu", "cuda")


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
    uncertainty (D, H, W) float32 and uncertainty_score only with MC dropout (medvision.inference.forward).
    """

    probabilities: np.ndarray
    label: np.ndarray
    uncertainty: np.ndarray | None
    uncertainty_score: float | None
    regions: tuple[str, ...]
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)


def _check_count(name: str, value: Any, also: tuple[Any, ...] = ()) -> None:
    """ValueError unless ``value`` is a positive int (not a bool) or one of ``also``."""
    if isinstance(value, bool):
        ok = False
    else:
        ok = (isinstance(value, int) and value >= 1) or any(value is a or value == a for a in also)
    if not ok:
        words = "".join(f", {a!r}" for a in also)
        raise ValueError(f"{name} must be a positive int{words}, got {value!r}")


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
    it afterwards (see InferenceBackend.thread_limit for why).
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
        _check_count("batch_size", self.batch_size, (None,))
        _check_count("threads", self.threads, (None, "auto"))
        if self.cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {self.cache_bytes}")
        if self.onnx_cache_dir is not None:
            object.__setattr__(self, "onnx_cache_dir", Path(self.onnx_cache_dir))


def state_hash(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names and bytes): the cache key of an in-memory model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_engine(
    model: nn.Module, meta: dict[str, Any], options: PredictorOptions, checkpoint_hash: str
) -> SegmentationEngine:
    """The engine ``Predictor`` and ``evaluate`` run: backend, precision and batch size from ``options``.

    Raises:
        CheckpointError: ``meta`` and the model disagree (see medvision.inference.spec.model_spec).
        ValueError: a device or precision this machine cannot run.
    """
    device = resolve_device(options.device)
    spec = model_spec(model, meta)
    backend = InferenceBackend.create(
        model,
        device,
        dtype=options.dtype,
        backend=options.backend,
        checkpoint_hash=checkpoint_hash,
        onnx_cache_dir=options.onnx_cache_dir,
        threads=options.threads,
        multiple=spec.multiple,
    )
    batch_size = options.batch_size or (32 if device.type == "cuda" else 4)
    return SegmentationEngine(backend, spec, batch_size=batch_size, pad_to_patch=options.pad_to_patch)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _check_slice(case: Case, k: int) -> int:
    depth = case.shape[0]
    if not 0 <= int(k) < depth:
        raise ValueError(f"slice index {k} out of range [0, {depth})")
    return int(k)


class Predictor:
    """Segments cases with one checkpoint. Thread-safe (model calls are serialised by the engine's lock).

    Args:
        checkpoint: a ``.safetensors`` checkpoint; None -> the shipped ``checkpoints/default.safetensors``.
        device, dtype and the keyword options: see :class:`PredictorOptions`.
    Raises:
        CheckpointError: the checkpoint is missing, unreadable, or its metadata contradicts its weights.
        ValueError: bad options, or a device this machine does not have.
    """

    def __init__(
        self, checkpoint: str | Path | None = None, device: str = "auto", dtype: str = "auto", **options: Any
    ) -> None:
        self.options = PredictorOptions(device=device, dtype=dtype, **options)
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        if checkpoint is None and not path.is_file():
            raise CheckpointError(
                path,
                "the demo checkpoint is missing; pass a checkpoint (--checkpoint) or train one "
                "(python -m medvision train --preset demo)",
            )
        model, meta = load_checkpoint(path, device=resolve_device(device))
        if checkpoint_view(meta) != "axial":
            # Its slices run along another axis than the one this predictor cuts: the answer would be wrong.
            problem = (
                f"was trained on {checkpoint_view(meta)} slices (a view study's run); predict and the app "
                "take models trained on axial slices"
            )
            raise CheckpointError(path, problem)
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
        self.checkpoint_path = None
        model = model.to(resolve_device(device)).eval()
        self._setup(model, dict(meta or {}), state_hash(model))
        return self

    def _setup(self, model: nn.Module, meta: dict[str, Any], checkpoint_hash: str) -> None:
        self.meta = meta
        self.checkpoint_hash = checkpoint_hash
        self.engine = build_engine(model, meta, self.options, checkpoint_hash)
        self._results = ByteLRU(self.options.cache_bytes)
        # Normalised crops of recent cases: predict_slice after predict_volume (or scrolling) skips the work.
        self._prepared = ByteLRU(min(self.options.cache_bytes, 256 * 2**20))
        logger.debug("predictor: %s", self.describe())

    # ------------------------------------------------------------------------- what it runs, and how

    @property
    def model(self) -> nn.Module:
        return self.engine.backend.model

    @property
    def device(self) -> Any:
        return self.engine.backend.device

    @property
    def amp_dtype(self) -> Any:
        return self.engine.backend.amp_dtype

    @property
    def precision(self) -> str:
        return self.engine.backend.precision

    @property
    def backend(self) -> str:
        return self.engine.backend.name

    @property
    def target(self) -> str:
        return self.engine.spec.target

    @property
    def regions(self) -> tuple[str, ...]:
        return self.engine.regions

    @property
    def neighbours(self) -> int:
        return self.engine.spec.neighbours

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    @property
    def threshold(self) -> float:
        return self.engine.threshold

    def describe(self) -> str:
        """One line saying how this predictor runs (for logs, the CLI and the app)."""
        if isinstance(self.model, ModelEnsemble):
            kind = f"{self.target} ensemble of {len(self.model.general)} networks"
            notes = [f"{len(i)} more for {name} alone" for name, i in self.model.routes.items()]
            smaller = [f"{larger} as {target}" for larger, target in self.model.route_supersets.items()]
            if smaller:
                notes.append("predicts " + ", ".join(smaller))
            if notes:
                kind += " (" + "; ".join(notes) + ")"
        else:
            kind = f"{self.target} model"
        return (
            f"{kind} on {self.device} ({self.precision}, {self.backend}, "
            f"batch {self.batch_size}, threads {self.options.threads}, neighbours {self.neighbours})"
        )

    def set_aside(self, available: Sequence[str]) -> tuple[str, ...]:
        """The given modalities this model leaves out for that input (an ensemble's superset route: the
        cross-validation scored the smaller input higher, checkpoints/MODEL_CARD.md); () for most."""
        smaller = getattr(self.model, "route_supersets", {}).get(subset_name(available))
        return () if smaller is None else set_aside(available, parse_subset(smaller))

    # ------------------------------------------------------------------------------------ public API

    def prepare(self, case: Case, case_hash: str | None = None) -> PreparedVolume:
        """The normalised, padded brain crop of ``case`` (cached by content)."""
        case_hash = case_hash or case_content_hash(case)
        cached = self._prepared.get(case_hash)
        if cached is None:
            where = str(case.source_paths[0]) if case.source_paths else case.case_id
            cached = self.engine.prepare_case(case.image, case.available, where)
            self._prepared.put(case_hash, cached)
        return cached

    def predict_slice(self, case: Case, k: int) -> SlicePrediction:
        """Axial slice ``k`` (0-based, MedVision axis 0) with one forward pass, or from a cached volume.

        Raises:
            ValueError: ``k`` is outside the case.
        """
        k = _check_slice(case, k)
        case_hash = case_content_hash(case)
        # A plain volume of the case with any relative clean-up: the slice then shows that volume's label,
        # as the viewer does once the volume is there.
        volume = self._results.first(lambda key: key[:6] == ("volume", case_hash, False, 0, None, 0))
        if volume is not None:
            return SlicePrediction(volume.probabilities[:, k], volume.label[k], self.regions, k)
        key = ("slice", case_hash, k)
        cached = self._results.get(key)
        if cached is not None:
            return cached
        prepared = self.prepare(case, case_hash)
        probabilities = np.zeros((len(self.regions), *case.shape[1:]), dtype=np.float32)
        local = k - prepared.box[0].start
        probabilities[:, prepared.box[1], prepared.box[2]] = self.engine.predict_slice(prepared, local)
        label = probabilities_to_label(probabilities, self.regions, self.threshold)
        result = SlicePrediction(_read_only(probabilities), _read_only(label), self.regions, k)
        self._results.put(key, result)
        return result

    def predict_volume(
        self,
        case: Case,
        *,
        tta: bool = False,
        mc_samples: int = 0,
        seed: int = 0,
        progress: ProgressFn | None = None,
        min_component_voxels: int = 0,
        min_component_fraction: float | None = None,
        mc_focus: float | None = None,
    ) -> VolumePrediction:
        """Segment the whole case (see :meth:`SegmentationEngine.predict` for the options).

        Results are cached by (case content, checkpoint, options); a cached result calls
        ``progress(1.0)`` once. Focused MC dropout (``mc_focus``) reuses a cached plain prediction of the
        case with the same ``tta`` instead of running that pass again.

        Raises:
            ValueError: bad ``mc_samples`` or ``min_component_voxels``, or a case image not (4, D, H, W).
        """
        check_volume_options(mc_samples, min_component_voxels)
        fraction = self.engine.component_fraction(min_component_fraction)
        case_hash = case_content_hash(case)
        key = (
            "volume",
            case_hash,
            bool(tta),
            mc_samples,
            int(seed) if mc_samples else None,
            min_component_voxels,
            fraction,
            mc_focus if mc_samples else None,
        )
        cached = self._results.get(key)
        if cached is not None:
            if progress is not None:
                progress(1.0)
            return cached
        start = time.perf_counter()
        prepared = self.prepare(case, case_hash)
        crop = self.engine.predict(
            prepared,
            tta=tta,
            mc_samples=mc_samples,
            seed=seed,
            min_component_voxels=min_component_voxels,
            min_component_fraction=fraction,
            progress=progress,
            mc_focus=mc_focus if mc_samples else None,
            plain=self._cached_plain(prepared, case_hash, tta) if mc_samples and mc_focus else None,
        )
        uncertainty = to_full_volume(prepared, crop.uncertainty) if crop.uncertainty is not None else None
        options = {
            "tta": bool(tta),
            "mc_samples": mc_samples,
            "seed": int(seed),
            "min_component_voxels": min_component_voxels,
            "min_component_fraction": fraction,
            "mc_focus": mc_focus if mc_samples else None,
        }
        result = VolumePrediction(
            probabilities=_read_only(to_full_volume(prepared, crop.probabilities)),
            label=_read_only(to_full_volume(prepared, crop.label)),
            uncertainty=_read_only(uncertainty) if uncertainty is not None else None,
            uncertainty_score=crop.uncertainty_score,
            regions=self.regions,
            seconds=time.perf_counter() - start,
            options=options,
        )
        self._results.put(key, result)
        logger.debug("predicted %s in %.2f s (%s)", case.case_id, result.seconds, options)
        return result

    def _cached_plain(self, prepared: PreparedVolume, case_hash: str, tta: bool) -> np.ndarray | None:
        """Crop probabilities of a cached plain prediction of this case (any clean-up: probabilities do
        not depend on it), or None."""
        plain = self._results.first(lambda key: key[:5] == ("volume", case_hash, bool(tta), 0, None))
        return None if plain is None else plain.probabilities[(..., *prepared.box)]

    def attention_map(self, case: Case, k: int) -> np.ndarray:
        """(H, W) float32 in [0, 1]: the shallowest attention gate's coefficients of slice ``k``, placed in
        the full slice (0 outside the brain crop and on slices without brain).

        Raises:
            ValueError: ``k`` is outside the case, or the model has no attention gates.
        """
        k = _check_slice(case, k)
        if not getattr(self.model, "config", {}).get("attention", True):
            raise ValueError("this checkpoint's model has no attention gates (attention=False)")
        case_hash = case_content_hash(case)
        key = ("attention", case_hash, k)
        cached = self._results.get(key)
        if cached is not None:
            return cached
        prepared = self.prepare(case, case_hash)
        result = np.zeros(case.shape[1:], dtype=np.float32)
        local = k - prepared.box[0].start
        result[prepared.box[1], prepared.box[2]] = self.engine.attention_map(prepared, local)
        result = _read_only(result)
        self._results.put(key, result)
        return result

    def clear_cache(self) -> None:
        """Forget cached results and normalised cases."""
        self._results.clear()
        self._prepared.clear()
