"""The forward pass over a prepared volume: batches of slices, TTA, MC dropout, the brain mask, the label.

:class:`SegmentationEngine` is the one code path from a :class:`~medvision.inference.geometry.
PreparedVolume` to probabilities and a label in crop coordinates. ``Predictor`` (predict and the
viewer), ``evaluate`` and the trainer's validation all call :meth:`SegmentationEngine.predict`, so the
same checkpoint gives the same numbers everywhere.

Skull-stripped input: nothing outside the brain can be tumour, whatever the network says there, so
probabilities are zeroed outside the brain mask (slices without brain are not run at all).

Uncertainty (``mc_samples=N > 0``): N passes with dropout sampling and BatchNorm in eval mode, seeded
(same seed -> same result). The probabilities are the mean of the N passes; the per-voxel uncertainty is
the standard deviation of the first channel's probability (WT, or NCR for a necrotic model) over the
passes, in [0, 0.5]; the case score is :func:`~medvision.inference.postprocess.uncertainty_score`.

Focused MC dropout (``mc_focus=p``): one plain pass first (or the caller's plain probabilities), then the
dropout passes only on slices where that pass gives some voxel a first-channel probability of at least
``p``, widened by :data:`MC_FOCUS_MARGIN` slices. Elsewhere the probabilities are the plain pass's and the
uncertainty is 0. Slices far from any tumour probability carry almost no spread, so most of the volume's
passes are saved; how much uncertainty this leaves out was measured (bench/mc_focus.py, bench/RESULTS.md).
In-plane, the dropout passes see only a window around those voxels (:func:`focus_window`: their box widened by
:data:`MC_FOCUS_CONTEXT` pixels, at least the training patch): the network was trained on such patches, and
outside the window the plain pass's probabilities stand, as outside the focused slices.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import keep_only
from medvision.inference import geometry
from medvision.inference.backend import InferenceBackend
from medvision.inference.geometry import PreparedVolume
from medvision.inference.postprocess import THRESHOLD, final_label, uncertainty_score
from medvision.inference.spec import ModelSpec, check_modalities
from medvision.models import ModelEnsemble, mc_dropout_mode

ProgressFn = Callable[[float], None]
# Called with (crop slice indices (B,), logits (B, R, H', W') on the device) of every plain batch: the
# trainer's validation loss needs the raw logits of the very pass that is scored.
LogitsHook = Callable[[np.ndarray, torch.Tensor], None]
# Slices per network forward when MC-dropout passes may be stacked into one batch. 1: one pass per forward.
# Stacking 6 passes (48 slices per forward) took 1.12x longer on a quiet AVX2 EPYC (bench/mc_dropout.py,
# bench/RESULTS.md), so it is off; a GPU may differ (not measured).
MC_SLICES_PER_FORWARD = 1
# Slices added on each side of the focused slices (tumour probability may start one slice beyond the plain
# pass's): see bench/mc_focus.py for what each choice leaves out.
MC_FOCUS_MARGIN = 2
# The Predict page's focus: dropout passes near slices where the plain WT probability reaches this somewhere.
MC_FOCUS_PROBABILITY = 0.05
# Pixels of context kept on each side of the focused voxels' in-plane box for the dropout passes, and
# whether that window is at least the training patch (the size the network saw its context at).
MC_FOCUS_CONTEXT = 32
MC_FOCUS_PATCH_MINIMUM = True


@dataclass(frozen=True)
class CropPrediction:
    """A prediction in crop coordinates: probabilities (R, d, h, w) float32 (zero outside the brain),
    label (d, h, w) uint8, and with MC dropout the uncertainty (d, h, w) float32 and its case score."""

    probabilities: np.ndarray
    label: np.ndarray
    uncertainty: np.ndarray | None = None
    uncertainty_score: float | None = None


@dataclass
class _MonteCarlo:
    """Per-voxel MC-dropout accumulators of one volume."""

    uncertainty: np.ndarray
    any_tumour: np.ndarray


def focus_slices(first_channel: np.ndarray, indices: np.ndarray, at_least: float) -> np.ndarray:
    """The slices of ``indices`` (sorted) within MC_FOCUS_MARGIN of one where ``first_channel`` (d, h, w)
    reaches ``at_least`` somewhere."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return indices
    hot = indices[first_channel[indices].reshape(len(indices), -1).max(axis=1) >= at_least]
    near = np.zeros(first_channel.shape[0], dtype=bool)
    for k in hot:
        near[max(k - MC_FOCUS_MARGIN, 0) : k + MC_FOCUS_MARGIN + 1] = True
    return indices[near[indices]]


Window = tuple[slice, slice]  # rows and columns of the padded network input


def focus_window(
    hot: np.ndarray,
    prepared: PreparedVolume,
    multiple: int,
    at_least: tuple[int, int] | None,
    context: int | None = None,
) -> Window | None:
    """The in-plane window of the padded input that holds every ``hot`` voxel ((k, h, w) bool, crop
    coordinates) with ``context`` pixels around (MC_FOCUS_CONTEXT when None), at least ``at_least`` (the
    training patch) and a multiple of ``multiple`` in size, inside the padded input.

    None: no hot voxel, or the window would be the whole input.
    """
    context = MC_FOCUS_CONTEXT if context is None else context
    rows, cols = np.flatnonzero(hot.any(axis=(0, 2))), np.flatnonzero(hot.any(axis=(0, 1)))
    if rows.size == 0:
        return None
    window = []
    for axis, (found, offset, full) in enumerate(
        zip((rows, cols), prepared.offset, prepared.padded, strict=True)
    ):
        lo, hi = found[0] + offset - context, found[-1] + 1 + offset + context
        size = max(hi - lo, at_least[axis] if at_least else 0)
        size = min(-(-size // multiple) * multiple, full)
        start = min(max((lo + hi - size) // 2, 0), full - size)
        window.append(slice(int(start), int(start + size)))
    if all(w.stop - w.start == full for w, full in zip(window, prepared.padded, strict=True)):
        return None
    return window[0], window[1]


Stage = tuple[np.ndarray | None, int]  # (crop slices, None: the focus of the stage before; dropout passes)


def _stages(
    probabilities: np.ndarray,
    indices: np.ndarray,
    mc_samples: int,
    mc_focus: float | None,
    plain: np.ndarray | None,
) -> list[Stage]:
    """The passes of one volume: all slices at once, or a plain pass and then MC on its focus (with the
    caller's ``plain`` probabilities copied into ``probabilities`` instead of a first pass)."""
    if not (mc_samples and mc_focus is not None):
        return [(indices, mc_samples)]
    if plain is None:
        return [(indices, 0), (None, mc_samples)]
    probabilities[:, indices] = plain[:, indices]
    return [(focus_slices(probabilities[0], indices, mc_focus), mc_samples)]


def window_mask(prepared: PreparedVolume, window: Window | None) -> np.ndarray:
    """(H', W') bool: the window's pixels of the padded input (all of them for None)."""
    if window is None:
        return np.ones(prepared.padded, dtype=bool)
    mask = np.zeros(prepared.padded, dtype=bool)
    mask[window] = True
    return mask


def _check_focus(
    mc_samples: int, mc_focus: float | None, plain: np.ndarray | None, shape: tuple[int, ...]
) -> None:
    if mc_focus is not None and not (mc_samples and 0.0 < float(mc_focus) <= 1.0):
        raise ValueError(f"mc_focus needs mc_samples >= 2 and a probability in (0, 1], got {mc_focus!r}")
    if plain is not None and (mc_focus is None or np.shape(plain) != shape):
        raise ValueError(f"plain probabilities need mc_focus and shape {shape}, got {np.shape(plain)}")


def check_volume_options(mc_samples: int, min_component_voxels: int) -> None:
    """Check the volume options shared by every caller.

    Raises:
        ValueError: ``mc_samples`` is not 0 or >= 2, or ``min_component_voxels`` is negative.
    """
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 0:
        raise ValueError(f"mc_samples must be an int >= 0, got {mc_samples!r}")
    if mc_samples == 1:
        raise ValueError("mc_samples must be 0 (off) or at least 2 (a spread needs two passes)")
    if not isinstance(min_component_voxels, int) or min_component_voxels < 0:
        raise ValueError(f"min_component_voxels must be an int >= 0, got {min_component_voxels!r}")


class SegmentationEngine:
    """Runs one model over prepared volumes. Thread-safe: model calls are serialised by ``lock``.

    Args:
        backend: how the network runs (device, precision, ONNX, threads).
        spec: the model's input/output contract (regions, neighbours, padding multiple, patch size).
        batch_size: slices per forward pass.
        pad_to_patch: pad every slice to the training patch size instead of the brain crop rounded up to
            ``spec.multiple`` (slower; for checking that the margins do not matter).
    """

    def __init__(
        self, backend: InferenceBackend, spec: ModelSpec, *, batch_size: int, pad_to_patch: bool = False
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.batch_size = int(batch_size)
        self.pad_to_patch = pad_to_patch
        self.threshold = THRESHOLD
        self.lock = threading.RLock()
        self._mc_lock = threading.Lock()

    @property
    def regions(self) -> tuple[str, ...]:
        return self.spec.regions

    def component_fraction(self, asked: float | None) -> float:
        """The relative clean-up a volume gets: ``asked``, or the model's own when None."""
        fraction = self.spec.min_component_fraction if asked is None else float(asked)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"min_component_fraction must be in [0, 1], got {asked!r}")
        return fraction

    # -------------------------------------------------------------------------------------- inputs

    def _patch(self) -> tuple[int, int] | None:
        return self.spec.patch_size if self.pad_to_patch else None

    def prepare_case(
        self, image: np.ndarray, available: tuple[str, ...] = MODALITIES, where: str = "input"
    ) -> PreparedVolume:
        """A raw case image (4, D, H, W) -> its normalised, padded brain crop.

        ``available``: the modalities given (the others' channels are set to zero); a model without
        availability planes needs all four (InputDataError naming ``where`` and what is missing).
        """
        check_modalities(self.spec.availability, tuple(available), where)
        missing = [m for m in MODALITIES if m not in available]
        image = keep_only(image, available) if missing else image
        return geometry.prepare_case_image(image, self.spec.multiple, self._patch(), tuple(available))

    def prepare_stored(self, image: np.ndarray) -> PreparedVolume:
        """A prepared store's image (4, d, h, w) -> the same structure (no second normalisation)."""
        return geometry.prepare_stored_image(image, self.spec.multiple, self._patch())

    def batch_input(self, prepared: PreparedVolume, indices: np.ndarray) -> np.ndarray:
        return geometry.batch_input(prepared, indices, self.spec.neighbours, self.spec.availability)

    # ------------------------------------------------------------------------------ the volume path

    def predict(
        self,
        prepared: PreparedVolume,
        *,
        tta: bool = False,
        mc_samples: int = 0,
        seed: int = 0,
        min_component_voxels: int = 0,
        min_component_fraction: float | None = None,
        progress: ProgressFn | None = None,
        on_logits: LogitsHook | None = None,
        slices: np.ndarray | None = None,
        mc_focus: float | None = None,
        plain: np.ndarray | None = None,
    ) -> CropPrediction:
        """Segment every brain slice of ``prepared``.

        Args:
            prepared: from :meth:`prepare_case` or :meth:`prepare_stored`.
            tta: average over the four flips.
            mc_samples: N >= 2 adds MC-dropout uncertainty (N passes, each with the flips when ``tta``).
            seed: seed of the dropout draws (the caller's RNG state is left untouched).
            min_component_voxels: drop smaller 3-D tumour pieces from the label (probabilities stay).
            min_component_fraction: drop pieces smaller than this fraction of the largest; None: the
                model's own choice (``spec.min_component_fraction``), 0: keep every piece.
            progress: called with the fraction done after every batch; an exception raised by it aborts.
            on_logits: see :data:`LogitsHook`; plain PyTorch passes only (no TTA, no MC dropout).
            slices: run only these crop slices (the others stay 0); None: every slice with brain.
            mc_focus: with ``mc_samples``, run the dropout passes only near slices whose plain-pass
                first-channel probability reaches this value somewhere (see the module's notes); None:
                on every slice.
            plain: with ``mc_focus``, the plain-pass probabilities (R, d, h, w) of this very volume and
                ``tta`` (e.g. a cached prediction), so that pass is not run again.
        Raises:
            ValueError: bad ``mc_samples`` / ``min_component_voxels`` / ``mc_focus`` / ``plain``, or
                ``on_logits`` with TTA, MC dropout or the ONNX backend.
        """
        check_volume_options(mc_samples, min_component_voxels)
        if on_logits is not None and (tta or mc_samples or self.backend.onnx is not None):
            raise ValueError("on_logits needs plain PyTorch passes (no TTA, no MC dropout, no ONNX)")
        shape = prepared.image.shape[1:]
        probabilities = np.zeros((len(self.regions), *shape), dtype=np.float32)
        mc = None
        if mc_samples:
            mc = _MonteCarlo(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=bool))
        indices = np.flatnonzero(prepared.has_brain)
        if slices is not None:
            indices = np.intersect1d(indices, np.asarray(slices, dtype=np.int64))
        _check_focus(mc_samples, mc_focus, plain, probabilities.shape)
        stages = _stages(probabilities, indices, mc_samples, mc_focus, plain)
        # Progress in passes over slices: a dropout slice counts as mc_samples plain ones.
        planned = sum(len(indices if k is None else k) * max(n, 1) for k, n in stages)
        self._run_stages(
            prepared,
            stages,
            indices,
            mc_focus,
            tta,
            seed,
            mc_samples,
            mc,
            on_logits,
            probabilities,
            planned,
            progress,
        )
        if mc is not None and mc_focus is not None:
            # Outside the focus only the plain pass ran: its tumour voxels count for the case score.
            mc.any_tumour |= probabilities[0] > self.threshold
        label = final_label(
            probabilities,
            self.regions,
            threshold=self.threshold,
            min_component_voxels=min_component_voxels,
            min_component_fraction=self.component_fraction(min_component_fraction),
        )
        if mc is None:
            return CropPrediction(probabilities, label)
        score = uncertainty_score(mc.uncertainty, label > 0, mc.any_tumour)
        return CropPrediction(probabilities, label, mc.uncertainty, score)

    def _run_stages(
        self,
        prepared: PreparedVolume,
        stages: list[Stage],
        indices: np.ndarray,
        mc_focus: float | None,
        tta: bool,
        seed: int,
        mc_samples: int,
        mc: _MonteCarlo | None,
        on_logits: LogitsHook | None,
        probabilities: np.ndarray,
        planned: int,
        progress: ProgressFn | None,
    ) -> None:
        """Run ``stages`` batch by batch into ``probabilities`` (and ``mc``), reporting progress."""
        done, reported = 0, 0.0
        # The model lock is taken per batch, so the viewer's single slices can run between the batches of
        # a background volume. MC runs hold their own lock throughout: the seeded global RNG is theirs alone.
        mc_lock = self._mc_lock if mc_samples else contextlib.nullcontext()
        with mc_lock, torch.inference_mode(), self._seeded(seed, mc_samples):
            for stage_indices, samples in stages:
                if stage_indices is None:
                    stage_indices = focus_slices(probabilities[0], indices, mc_focus)
                    planned = done + len(stage_indices) * samples
                focused = bool(samples) and mc_focus is not None
                for batch_indices, window in self.focus_plan(
                    probabilities[0], stage_indices, mc_focus if focused else None, prepared
                ):
                    outside = (
                        probabilities[:, batch_indices].transpose(1, 0, 2, 3) if window is not None else None
                    )
                    # The thread count is decided per batch (auto_threads caches its look for 5 s): a
                    # volume started while the browser draws the first view would otherwise keep the one
                    # thread it got then (measured in the app: every batch of the whole volume on 1 of 2).
                    with self.backend.thread_limit():
                        mean = self._batch(
                            prepared,
                            batch_indices,
                            tta,
                            samples,
                            mc if samples else None,
                            on_logits,
                            window,
                            outside,
                        )
                    probabilities[:, batch_indices] = mean.transpose(1, 0, 2, 3)
                    done += len(batch_indices) * max(samples, 1)
                    if progress is not None:
                        reported = min(done / planned, 1.0)
                        progress(reported)
        if progress is not None and reported < 1.0:
            progress(1.0)  # nothing to run, or an empty focus after the plain pass

    def focus_plan(
        self,
        first_channel: np.ndarray,
        indices: np.ndarray,
        mc_focus: float | None,
        prepared: PreparedVolume,
    ) -> list[tuple[np.ndarray, Window | None]]:
        """The batches of ``indices`` and, with ``mc_focus``, each batch's in-plane window for the dropout
        passes (from its own slices' voxels at or above ``mc_focus``; None: the whole input)."""
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if mc_focus is None:
            return [(batch, None) for batch in batches]
        minimum = self.spec.patch_size if MC_FOCUS_PATCH_MINIMUM else None
        return [
            (batch, focus_window(first_channel[batch] >= mc_focus, prepared, self.spec.multiple, minimum))
            for batch in batches
        ]

    def _batch(
        self,
        prepared: PreparedVolume,
        indices: np.ndarray,
        tta: bool,
        mc_samples: int,
        mc: _MonteCarlo | None,
        on_logits: LogitsHook | None,
        window: Window | None = None,
        outside: np.ndarray | None = None,
    ) -> np.ndarray:
        """Mean probabilities (B, R, h, w) of crop slices ``indices``, zero outside the brain.

        With ``window`` (MC only) the dropout passes see only that part of the input; elsewhere every pass
        takes ``outside`` (B, R, h, w), the plain pass's probabilities.
        """
        batch = self.batch_input(prepared, indices)
        brain = prepared.brain[indices]  # (B, h, w)
        if mc is None:
            with self.lock:
                padded = self._plain(batch, indices, tta, on_logits)
            return geometry.uncrop(prepared, padded) * brain[:, None]
        if window is not None:
            if outside is None:  # checked before the passes run, not after
                raise ValueError("a focus window needs the plain probabilities outside it")
            batch = batch[..., window[0], window[1]]
        with self.lock, mc_dropout_mode(self.backend.model):
            samples = self._mc_passes(batch, tta, mc_samples)
        if window is not None:
            padded = np.zeros((*samples.shape[:-2], *prepared.padded), dtype=samples.dtype)
            padded[..., window[0], window[1]] = samples
            samples = padded
        samples = geometry.uncrop(prepared, samples) * brain[None, :, None]  # (N, B, R, h, w)
        spread, mean = samples[:, :, 0].std(axis=0), samples.mean(axis=0)
        any_tumour = (samples[:, :, 0] > self.threshold).any(axis=0)
        if window is not None:
            # Outside the window no pass ran: the plain probabilities, and exactly no spread.
            inside = geometry.uncrop(prepared, window_mask(prepared, window))
            spread = np.where(inside, spread, 0.0)
            mean = np.where(inside, mean, outside)
            any_tumour = np.where(inside, any_tumour, outside[:, 0] > self.threshold)
        mc.uncertainty[indices] = spread
        mc.any_tumour[indices] = any_tumour
        return mean

    def _mc_passes(self, batch: np.ndarray, tta: bool, mc_samples: int) -> np.ndarray:
        """(N, B, R, h, w) probabilities of ``mc_samples`` dropout passes over one batch.

        With MC_SLICES_PER_FORWARD above the batch size, several passes go through the network as one
        larger batch (each copy of a slice draws its own dropout masks); see that constant for why the
        default is one pass per forward.
        """
        model = self.backend.model
        ensemble = isinstance(model, ModelEnsemble)
        # An ensemble runs one member per pass, so passes are not stacked across members.
        per_forward = 1 if ensemble else max(1, MC_SLICES_PER_FORWARD // len(batch))
        samples = []
        for start in range(0, mc_samples, per_forward):
            passes = min(per_forward, mc_samples - start)
            stacked = np.concatenate([batch] * passes) if passes > 1 else batch
            with model.one_member(start) if ensemble else contextlib.nullcontext():
                p = self.backend.probabilities(stacked, tta=tta, stochastic=True)
            samples.append(p.reshape(passes, len(batch), *p.shape[1:]))
        return np.concatenate(samples)

    def _plain(
        self, batch: np.ndarray, indices: np.ndarray, tta: bool, on_logits: LogitsHook | None
    ) -> np.ndarray:
        if on_logits is None:
            return self.backend.probabilities(batch, tta=tta)
        logits = self.backend.logits(batch)
        on_logits(indices, logits)
        return torch.sigmoid(logits).cpu().numpy()

    @contextlib.contextmanager
    def _seeded(self, seed: int, mc_samples: int) -> Iterator[None]:
        """Dropout draws from a fixed seed without disturbing the caller's global RNG state."""
        if not mc_samples:
            yield
            return
        device = self.backend.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            yield

    # ------------------------------------------------------------------------------ single slices

    def predict_slice(self, prepared: PreparedVolume, local: int) -> np.ndarray:
        """Probabilities (R, h, w) of crop slice ``local`` with one plain pass (zeros without brain)."""
        out = np.zeros((len(self.regions), *prepared.image.shape[-2:]), dtype=np.float32)
        if not (0 <= local < prepared.depth and prepared.brain[local].any()):
            return out
        batch = self.batch_input(prepared, np.array([local]))
        with self.lock, self.backend.thread_limit(), torch.inference_mode():
            padded = self.backend.probabilities(batch)[0]
        return geometry.uncrop(prepared, padded) * prepared.brain[local]

    def attention_map(self, prepared: PreparedVolume, local: int) -> np.ndarray:
        """(h, w) float32 in [0, 1]: the shallowest (full-resolution) attention gate's coefficients of crop
        slice ``local``, upsampled to the input size if needed (zeros without brain).

        Raises:
            ValueError: the model has no attention gates, or returned no attention maps.
        """
        model = self.backend.model
        if not getattr(model, "config", {}).get("attention", True):
            raise ValueError("this checkpoint's model has no attention gates (attention=False)")
        out = np.zeros(prepared.image.shape[-2:], dtype=np.float32)
        if not (0 <= local < prepared.depth and prepared.brain[local].any()):
            return out
        batch = self.batch_input(prepared, np.array([local]))
        with self.lock, self.backend.thread_limit(), torch.inference_mode(), self.backend.autocast():
            _, maps = model(self.backend.to_device(batch), return_attention=True)
            if not maps:
                raise ValueError("this checkpoint's model returned no attention maps")
            shallowest = max(maps, key=lambda m: m.shape[-2] * m.shape[-1]).float()
            if tuple(shallowest.shape[-2:]) != prepared.padded:
                shallowest = F.interpolate(
                    shallowest, size=prepared.padded, mode="bilinear", align_corners=False
                )
            padded = shallowest[0, 0].clamp(0.0, 1.0).cpu().numpy()
        return geometry.uncrop(prepared, padded)
