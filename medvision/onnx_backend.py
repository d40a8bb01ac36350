"""Optional ONNX Runtime execution of a segmentation model on the CPU.

The model is exported once per checkpoint (``torch.onnx.export``, dynamic batch/H/W), then run by an
``onnxruntime.InferenceSession``. With a cache folder the export is kept there under a name keyed by the
checkpoint hash (the CLI uses :func:`user_cache_dir`, the app its workspace); without one it is made in
memory and nothing is written to disk.
Export needs the ``onnx`` package and running needs ``onnxruntime``; :func:`load_onnx_runner` returns
None (with one log line) when either is missing or anything fails, and the caller stays on PyTorch.
Only plain deterministic forward passes go through here: MC dropout and attention maps need PyTorch.

ONNX Runtime's telemetry is switched off before the library is first imported (:func:`_import_onnxruntime`):
besides sending usage events, its Linux builds write a device id and an event cache to
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/`` when a session starts, outside the app's workspace. The
library reads ``ORT_DISABLE_TELEMETRY`` once, when it loads; ``disable_telemetry_events()`` afterwards
comes too late to stop those files.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medvision.atomic import atomic_path

logger = logging.getLogger(__name__)


def _import_onnxruntime() -> Any:
    """``onnxruntime``, imported with its telemetry off (see the module docstring)."""
    if "onnxruntime" not in sys.modules:
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    elif os.environ.get("ORT_DISABLE_TELEMETRY") != "1":
        logger.debug("onnxruntime was imported before its telemetry could be switched off")
    import onnxruntime as ort  # optional dependency: imported only when this backend is used

    ort.disable_telemetry_events()
    return ort


def user_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where command-line runs keep ONNX exports, read from the environment when called (not at import).

    ``MEDVISION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/medvision/onnx``, else ``~/.cache/medvision/onnx``.
    """
    env = os.environ if env is None else env
    if env.get("MEDVISION_CACHE_DIR"):
        return Path(env["MEDVISION_CACHE_DIR"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "medvision" / "onnx"


class _LogitsOnly(nn.Module):
    """Export wrapper: the plain logits output, without the attention-map branch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class OnnxRunner:
    """Runs an exported model: ``runner(x (B, C, H, W) float32 ndarray) -> logits (B, T, H, W) ndarray``."""

    def __init__(self, onnx_model: Path | bytes, threads: int) -> None:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(int(threads), 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the warnings about unused initialisers are noise
        # No busy-waiting between ops: spinning threads steal the cores from anything else running.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = onnx_model if isinstance(onnx_model, Path) else None
        source = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(model: nn.Module, in_channels: int, multiple: int, path: Path) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path`` atomically, with dynamic batch, H and W."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(export_onnx_bytes(model, in_channels, multiple))
    return path


def export_onnx_bytes(model: nn.Module, in_channels: int, multiple: int) -> bytes:
    """The ONNX serialisation of ``model`` (eval mode, CPU) with dynamic batch, H and W."""
    wrapper = _LogitsOnly(model).eval()
    example = torch.zeros(1, in_channels, multiple * 2, multiple * 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings say nothing actionable here
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs only `onnx`, not `onnxscript`
        )
    return buffer.getvalue()


def load_onnx_runner(
    model: nn.Module,
    checkpoint_hash: str,
    *,
    in_channels: int,
    multiple: int,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> OnnxRunner | None:
    """An ONNX Runtime runner for ``model``, or None on any failure.

    With ``cache_dir`` the export is made on first use and reused by later processes; with None it is
    made in memory for this process only.
    """
    if getattr(model, "routes", None) or getattr(model, "route_supersets", None):
        # Its route is read from the input's values, which a trace would freeze (medvision.models.ensemble):
        # the general members are exported; the backend runs inputs routed to a specialist in PyTorch and
        # sets aside what a superset route drops before the export runs.
        model = model.general_part()
    try:
        if next(model.parameters()).device.type != "cpu":
            raise RuntimeError("ONNX export runs from a CPU model")
        threads = threads or torch.get_num_threads()
        if cache_dir is None:
            return OnnxRunner(export_onnx_bytes(model, in_channels, multiple), threads)
        path = Path(cache_dir) / f"{checkpoint_hash[:32]}-c{in_channels}.onnx"
        if not path.is_file():
            export_onnx(model, in_channels, multiple, path)
            logger.info("exported the model to ONNX at %s", path)
        return OnnxRunner(path, threads)
    except Exception as exc:  # missing onnx/onnxruntime, exporter or runtime errors: stay on PyTorch
        logger.info("ONNX Runtime path unavailable (%s: %s); using PyTorch", type(exc).__name__, exc)
        return None
