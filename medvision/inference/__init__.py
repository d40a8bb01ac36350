"""The one inference engine: ``predict``, ``evaluate`` and the trainer's validation all run it.

Modules, each with one job:

- :mod:`~medvision.inference.backend`: how the network runs (device, precision, PyTorch or ONNX
  Runtime, CPU threads, TTA flips); the precision policy itself is medvision.precision.
- :mod:`~medvision.inference.geometry`: crop to the brain, pad for the network, uncrop, put back.
- :mod:`~medvision.inference.spec`: what a checkpoint says about its input and output.
- :mod:`~medvision.inference.forward`: :class:`SegmentationEngine`, the batch loop with TTA, MC dropout
  and the brain mask, from a prepared volume to probabilities and a label.
- :mod:`~medvision.inference.postprocess`: probabilities -> nested BraTS label, small-piece removal,
  the regions a label is scored on, the MC-dropout case score.
- :mod:`~medvision.inference.predictor`: :class:`Predictor`, the public API with result caches.

Importing this package imports no training code (``medvision.train`` builds on it, not the reverse).
"""

from medvision.export import save_prediction_nifti, save_probabilities_nifti, save_uncertainty_nifti
from medvision.inference.backend import InferenceBackend, choose_precision
from medvision.inference.forward import CropPrediction, SegmentationEngine
from medvision.inference.geometry import PreparedVolume
from medvision.inference.postprocess import final_label, label_masks, probabilities_to_label
from medvision.inference.predictor import (
    DEFAULT_CHECKPOINT,
    Predictor,
    PredictorOptions,
    SlicePrediction,
    VolumePrediction,
    build_engine,
)
from medvision.inference.spec import ModelSpec, model_spec
from medvision.precision import cpu_has_native_bf16
from medvision.prediction_cache import case_content_hash
from medvision.volumetry import remove_small_components, volumetry, volumetry_csv

__all__ = [
    "DEFAULT_CHECKPOINT",
    "CropPrediction",
    "InferenceBackend",
    "ModelSpec",
    "Predictor",
    "PredictorOptions",
    "PreparedVolume",
    "SegmentationEngine",
    "SlicePrediction",
    "VolumePrediction",
    "build_engine",
    "case_content_hash",
    "choose_precision",
    "cpu_has_native_bf16",
    "final_label",
    "label_masks",
    "model_spec",
    "probabilities_to_label",
    "remove_small_components",
    "save_prediction_nifti",
    "save_probabilities_nifti",
    "save_uncertainty_nifti",
    "volumetry",
    "volumetry_csv",
]
