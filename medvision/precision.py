"""The one place that decides the device and the numeric precision for training, evaluation and inference.

Why one place: bf16 autocast is about 3x faster than fp32 for this network on CPUs that run bf16 natively
(AMX or AVX512-BF16, through oneDNN), but on AVX2-only CPUs (most laptops, AMD EPYC servers) oneDNN emulates
it and the same training step is about 9x *slower* than fp32 (measured: 1.70 vs 15.78 slices/s for the
``demo`` preset on an AMD EPYC). So "auto" means:

- CUDA: bf16 where the GPU supports it, else fp16 (the trainer adds a GradScaler);
- CPU: bf16 only where it is native, else full fp32.

Explicit requests are honoured ("bf16" on an AVX2 CPU runs, emulated, with one warning), except fp16 on
a CPU, which autocast does not accelerate and which becomes fp32 with an info line.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Inference names its precision by dtype ("float32" ...); training by AMP mode ("off" ...). Same decision.
DTYPE_TO_AMP = {"auto": "auto", "float32": "off", "bfloat16": "bf16", "float16": "fp16"}
AMP_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# oneDNN instruction sets (ONEDNN_MAX_CPU_ISA values) whose convolutions run bf16 natively. A lower cap,
# e.g. ONEDNN_MAX_CPU_ISA=AVX2 (which also lets an AVX-512 machine stand in for an AVX2 laptop), makes
# oneDNN emulate bf16 even on a CPU that has it, so "auto" must then choose fp32 too.
_BF16_ISAS = {
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "ALL",
    "DEFAULT",
}


def onednn_isa_cap() -> str | None:
    """The instruction-set cap set by ONEDNN_MAX_CPU_ISA (upper case), or None when there is none."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cap or None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX) through oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    cap = onednn_isa_cap()
    if cap is not None and cap not in _BF16_ISAS:
        return False
    checks = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(bool(check()) for check in checks if check is not None)


def cpu_model_name() -> str:
    """The CPU model as /proc/cpuinfo names it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_kind() -> str:
    """The CPU for logs and benchmark records, e.g. ``AMD EPYC (avx2; bf16 emulated; 2 cores)``."""
    capability = "unknown"
    with suppress(AttributeError, RuntimeError):
        capability = torch.backends.cpu.get_cpu_capability().lower()
    bf16 = "native bf16" if cpu_has_native_bf16() else "bf16 emulated"
    cap = onednn_isa_cap()
    limited = f"; oneDNN limited to {cap} by ONEDNN_MAX_CPU_ISA" if cap else ""
    return f"{cpu_model_name()} ({capability}; {bf16}; {os.cpu_count()} cores{limited})"


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when a GPU is there, else the CPU.

    Args:
        preference: "auto", "cpu", "cuda" or "cuda:N".
        local_rank: the GPU index to use for "auto"/"cuda" (torchrun's LOCAL_RANK).
    Raises:
        ValueError: an unknown preference, or CUDA asked for where none is available.
    """
    if preference not in DEVICE_CHOICES and not preference.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but no CUDA GPU is available")
    if preference.startswith("cuda:"):
        return torch.device(preference)
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for AMP ``mode`` on ``device``; None means plain fp32 (see the module doc).

    Args:
        mode: "auto", "bf16", "fp16" or "off".
        device: where the model runs.
    Raises:
        ValueError: an unknown mode, or bf16 asked for on a GPU without bf16.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "off":
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if mode == "bf16" and not bf16_ok:
            raise ValueError("amp bf16 requested but this GPU does not support bfloat16; use fp16 or auto")
        if mode in ("auto", "bf16"):
            return torch.bfloat16 if bf16_ok else torch.float16
        return torch.float16
    if device.type != "cpu":
        return None
    if mode == "auto":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if mode == "bf16":
        if not cpu_has_native_bf16():
            logger.warning("bf16 asked for on a CPU without native bf16 (%s): emulated, slow", cpu_kind())
        return torch.bfloat16
    logger.info("fp16 AMP needs a CUDA GPU; running in fp32 on %s", device)
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for plain fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
