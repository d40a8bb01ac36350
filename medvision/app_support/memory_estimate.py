"""How much memory a training run will need, checked against what the machine has before it is launched.

The Attention U-Net's training memory is dominated by the activations kept for the backward pass, which
grow as batch x base_filters x H x W (each level has twice the channels on a quarter of the pixels, so
deeper levels add a shrinking series). Measured on the CPU (fp32, AdamW, one step after a warm-up, peak
RSS from ``getrusage`` minus the RSS before the step) at depth 4:

    batch  filters  patch     activations  floats per batch*filters*pixel
    2      8        128x128   55 MiB       55.2
    8      8        96x96     111 MiB      49.4
    8      16       128x128   369 MiB      46.1
    16     8        160x192   745 MiB      49.7
    4      32       160x192   661 MiB      44.1

so :data:`ACTIVATION_FLOATS` = 50 fp32 values per ``batch*filters*pixel`` (small runs add a fixed
overhead of a few MiB on top). Weights, gradients and AdamW's two moments add 4 fp32 values per
parameter. Mixed precision roughly halves the activations; the estimate stays at fp32 so it errs on the
safe side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from medvision.train.config import TrainConfig

__all__ = ["ACTIVATION_FLOATS", "MemoryEstimate", "available_memory", "estimate_training_memory"]

log = logging.getLogger(__name__)

ACTIVATION_FLOATS = 50
STATE_FLOATS_PER_PARAMETER = 4  # weights, gradients, AdamW exp_avg and exp_avg_sq
BYTES_PER_FLOAT = 4
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    activations: int  # bytes
    state: int  # bytes: weights, gradients, optimiser moments
    parameters: int

    @property
    def total(self) -> int:
        return self.activations + self.state


def parameter_count(config: TrainConfig) -> int:
    """Exact parameter count of the run's model, built on the meta device (no memory allocated)."""
    import torch

    from medvision.models.attention_unet import AttentionUNet

    with torch.device("meta"):
        model = AttentionUNet(**config.model_config())
    return sum(p.numel() for p in model.parameters())


def estimate_training_memory(config: TrainConfig) -> MemoryEstimate:
    height, width = config.patch_size
    pixels = config.batch_size * config.base_filters * height * width
    parameters = parameter_count(config)
    return MemoryEstimate(
        activations=ACTIVATION_FLOATS * BYTES_PER_FLOAT * pixels,
        state=STATE_FLOATS_PER_PARAMETER * BYTES_PER_FLOAT * parameters,
        parameters=parameters,
    )


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: str) -> tuple[int | None, str]:
    """Bytes free for a run on ``device`` ("auto", "cpu", "cuda", "cuda:N") and what they are.

    The GPU's free memory where the run will use one, else the CPU's MemAvailable. None when it cannot be
    told (no /proc/meminfo, a CUDA error): the launch is then not refused on memory grounds.
    """
    import torch

    wants_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_gpu and torch.cuda.is_available():
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        try:
            free, _ = torch.cuda.mem_get_info(index)
        except (RuntimeError, AssertionError, ValueError) as error:
            log.warning("cannot read the free memory of GPU %d: %s", index, error)
            return None, f"GPU {index} memory"
        return int(free), f"GPU {index} memory"
    return _meminfo_available(), "memory (MemAvailable)"


def check_fits(config: TrainConfig) -> MemoryEstimate:
    """The estimate, or JobLimitError (with the estimate) when it exceeds the device's free memory."""
    from medvision.app_support.job_limits import JobLimitError

    estimate = estimate_training_memory(config)
    free, what = available_memory(config.device)
    if free is not None and estimate.total > free:
        height, width = config.patch_size
        run = (
            f"batch size {config.batch_size} x base filters {config.base_filters} on {height}x{width} slices"
        )
        parts = (
            f"activations {estimate.activations / GIB:.1f} GiB, weights and optimiser "
            f"{estimate.state / GIB:.2f} GiB for {estimate.parameters:,} parameters"
        )
        raise JobLimitError(
            f"{run} needs about {estimate.total / GIB:.1f} GiB to train ({parts}), more than the "
            f"{free / GIB:.1f} GiB of free {what}. Lower the batch size or the base filters."
        )
    return estimate
