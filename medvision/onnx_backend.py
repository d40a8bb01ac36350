"""Optional ONNX Runtime execution of a segmentation model on the CPU.

The model is exported once per checkpoint (``torch.onnx.export``, dynamic batch/H/W) into a cache
folder under a name keyed by the checkpoint hash, then run by an ``onnxruntime.InferenceSession``.
Export needs the ``onnx`` package and running needs ``onnxruntime``; :func:`load_onnx_runner` returns
None (with one log line) when either is missing or anything fails, and the caller stays on PyTorch.
Only plain deterministic forward passes go through here: MC dropout and attention maps need PyTorch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medvision.atomic import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "medvision" / "onnx"


class _LogitsOnly(nn.Module):
    """Export wrapper: the plain logits output, without the attention-map branch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class OnnxRunner:
    """Runs an exported model: ``runner(x (B, C, H, W) float32 ndarray) -> logits (B, T, H, W) ndarray``."""

    def __init__(self, onnx_path: Path, threads: int) -> None:
        import onnxruntime as ort  # optional dependency: imported only when this backend is used

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(int(threads), 1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: the warnings about unused initialisers are noise
        # No busy-waiting between ops: spinning threads steal the cores from anything else running.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = onnx_path
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def export_onnx(model: nn.Module, in_channels: int, multiple: int, path: Path) -> Path:
    """Export ``model`` (eval mode, CPU) to ``path`` atomically, with dynamic batch, H and W."""
    wrapper = _LogitsOnly(model).eval()
    example = torch.zeros(1, in_channels, multiple * 2, multiple * 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings say nothing actionable here
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs only `onnx`, not `onnxscript`
        )
    return path


def load_onnx_runner(
    model: nn.Module,
    checkpoint_hash: str,
    *,
    in_channels: int,
    multiple: int,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> OnnxRunner | None:
    """An ONNX Runtime runner for ``model`` (exported on first use, then reused), or None on any failure."""
    path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"{checkpoint_hash[:32]}-c{in_channels}.onnx"
    try:
        if not path.is_file():
            model_cpu_state = next(model.parameters()).device
            if model_cpu_state.type != "cpu":
                raise RuntimeError("ONNX export runs from a CPU model")
            export_onnx(model, in_channels, multiple, path)
            logger.info("exported the model to ONNX at %s", path)
        return OnnxRunner(path, threads or torch.get_num_threads())
    except Exception as exc:  # missing onnx/onnxruntime, exporter or runtime errors: stay on PyTorch
        logger.info("ONNX Runtime path unavailable (%s: %s); using PyTorch", type(exc).__name__, exc)
        return None
