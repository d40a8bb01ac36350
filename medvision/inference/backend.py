"""How the network runs: device, autocast precision, PyTorch or ONNX Runtime, and CPU threads.

The trainer's validation, ``evaluate`` and :class:`~medvision.inference.Predictor` all build an
:class:`InferenceBackend`, and all of them take the device and precision from :func:`choose_precision`,
which asks :mod:`medvision.precision` (the one policy: bf16 where it is native, fp32 on AVX2-only CPUs,
fp16 on CUDA without bf16). Speed notes, measured in bench/RESULTS.md: channels_last and
``torch.inference_mode`` always; ONNX Runtime for the fp32 model on CPUs without native bf16 (about
1.2x PyTorch there), which needs the ``onnx`` package for the one-time export; without it inference
stays on PyTorch (one log line).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from medvision.cpu_threads import auto_threads
from medvision.onnx_backend import OnnxRunner, load_onnx_runner
from medvision.precision import AMP_NAMES, DTYPE_TO_AMP, autocast, autocast_dtype

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
DTYPES = tuple(DTYPE_TO_AMP)  # "auto", "float32", "bfloat16", "float16"
# Flip TTA: identity, horizontal (W), vertical (H), both; probabilities are averaged over the four.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def choose_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    Args:
        device: where the model runs.
        precision: an AMP mode as training names it ("auto", "bf16", "fp16", "off") or a dtype name as
            inference names it ("auto", "float32", "bfloat16", "float16"): the same decision either way.
    Raises:
        ValueError: an unknown name, fp16 asked for by dtype name on a CPU, or bf16 on a GPU without it.
    """
    if precision in ("float32", "bfloat16", "float16"):
        if precision == "float16" and device.type != "cuda":
            raise ValueError("dtype 'float16' is supported on CUDA only")
        precision = DTYPE_TO_AMP[precision]
    return autocast_dtype(precision, device)


def _autocast_works(model: nn.Module, device: torch.device, dtype: torch.dtype, multiple: int) -> bool:
    """One tiny forward pass under autocast: some ops lack kernels for some dtypes on some devices."""
    in_channels = int(getattr(model, "config", {}).get("in_channels", 4))
    probe = torch.zeros(1, in_channels, multiple, multiple, device=device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            model(probe.contiguous(memory_format=torch.channels_last))
    except Exception as exc:  # an op without a kernel for this dtype on this device
        logger.info("%s autocast failed on %s (%s); using float32", dtype, device, exc)
        return False
    return True


class InferenceBackend:
    """Runs one model on batches of slices: ``probabilities(batch) -> (B, R, H, W)`` float32 ndarray.

    Args:
        model: the network (kept in eval mode; MC dropout switches its dropout layers on for a while).
        device: where the model runs.
        amp_dtype: autocast dtype, None for plain fp32 (see :func:`choose_precision`).
        onnx: an ONNX Runtime runner of the same weights (CPU, fp32), used for deterministic passes.
        threads: CPU threads while running: an int, "auto" (the cores other work leaves free, see
            medvision.cpu_threads) or None (torch's setting, untouched).
        memory_format: layout of the input batches (channels_last is faster on CPU and GPU).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        *,
        onnx: OnnxRunner | None = None,
        threads: int | str | None = None,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        self.model = model
        self.device = device
        self.amp_dtype = amp_dtype
        self.onnx = onnx
        self.threads = threads
        self.memory_format = memory_format
        self._max_threads = torch.get_num_threads()  # read once: thread_limit changes it while running

    @classmethod
    def create(
        cls,
        model: nn.Module,
        device: torch.device,
        *,
        dtype: str = "auto",
        backend: str = "auto",
        checkpoint_hash: str = "",
        onnx_cache_dir: Path | None = None,
        threads: int | str | None = "auto",
        multiple: int = 16,
    ) -> InferenceBackend:
        """The backend a prediction uses: precision by :func:`choose_precision`, checked with one forward
        pass; ONNX Runtime for fp32 on a CPU when ``backend`` is "onnx", or "auto" without native bf16.

        Raises:
            ValueError: an unknown ``dtype`` or ``backend``, or a precision the device cannot run.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        model = model.to(device, memory_format=torch.channels_last).eval()
        wanted = choose_precision(device, dtype)
        amp_dtype = (
            wanted if wanted is not None and _autocast_works(model, device, wanted, multiple) else None
        )
        onnx = None
        if backend == "onnx" or (backend == "auto" and amp_dtype is None):
            if device.type == "cpu":
                in_channels = int(getattr(model, "config", {}).get("in_channels", 4))
                onnx = load_onnx_runner(
                    model,
                    checkpoint_hash,
                    in_channels=in_channels,
                    multiple=multiple,
                    cache_dir=onnx_cache_dir,
                    threads=threads if isinstance(threads, int) else None,
                )
            elif backend == "onnx":
                logger.info("the ONNX Runtime path is CPU only; using PyTorch on %s", device)
        return cls(model, device, amp_dtype, onnx=onnx, threads=threads)

    # ---------------------------------------------------------------------------------- descriptions

    @property
    def name(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    @property
    def precision(self) -> str:
        """ "float32", "bfloat16" or "float16"."""
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")

    @property
    def amp_name(self) -> str:
        """The precision as training logs name it: "fp32", "bf16" or "fp16"."""
        return AMP_NAMES[self.amp_dtype]

    # --------------------------------------------------------------------------------- forward passes

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return tensor.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Raw network output (B, R, H, W) float32 on the device, one PyTorch pass (no flips)."""
        with self.autocast():
            return self.model(self.to_device(batch)).float()

    def probabilities(self, batch: np.ndarray, *, tta: bool = False, stochastic: bool = False) -> np.ndarray:
        """Sigmoid probabilities (B, R, H, W) float32 of one input batch, averaged over flips with ``tta``.

        ``stochastic`` (MC dropout) always runs on PyTorch: the ONNX export has dropout folded away; so does
        an input that a routed ensemble sends to a specialist (its ONNX export holds the general members;
        what a superset route sets aside is zeroed before the export runs).
        """
        flips = TTA_FLIPS if tta else ((),)
        general = self._general_input(batch) if self.onnx is not None and not stochastic else None
        if general is not None:
            return self._onnx_probabilities(general, flips)
        x = self.to_device(batch)
        total = None
        with self.autocast():
            for dims in flips:
                xi = torch.flip(x, dims).contiguous(memory_format=self.memory_format) if dims else x
                p = torch.sigmoid(self.model(xi).float())
                p = torch.flip(p, dims) if dims else p
                total = p if total is None else total + p
        return (total / len(flips)).float().cpu().numpy()

    def _general_input(self, batch: np.ndarray) -> np.ndarray | None:
        """The batch as the exported general members see it (a superset route's set-aside modalities
        zeroed), or None when a routed ensemble sends a slice of it to a specialist."""
        general_input = getattr(self.model, "general_input", None)  # a ModelEnsemble's
        if general_input is None:
            return batch
        kept = general_input(torch.from_numpy(batch))
        return None if kept is None else kept.numpy()

    def _onnx_probabilities(self, batch: np.ndarray, flips: tuple[tuple[int, ...], ...]) -> np.ndarray:
        total = None
        for dims in flips:
            axes = tuple(d % 4 for d in dims)
            x = np.ascontiguousarray(np.flip(batch, axes)) if dims else batch
            p = expit(self.onnx(x).astype(np.float32))
            p = np.flip(p, axes) if dims else p
            total = p if total is None else total + p
        return np.ascontiguousarray(total / len(flips), dtype=np.float32)

    # ----------------------------------------------------------------------------------- CPU threads

    @contextlib.contextmanager
    def thread_limit(self) -> Iterator[None]:
        """Run with ``threads`` CPU threads (process-wide while it lasts), then restore the count.

        Why: OpenMP threads that wait for descheduled siblings made a 2-thread volume 8x slower than a
        1-thread one on a 2-core machine where other jobs were running (bench/RESULTS.md).
        """
        wanted = self.threads
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
