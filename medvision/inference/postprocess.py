"""From probabilities to what is written, shown and scored: the label volume and the MC-dropout score.

The label applies threshold 0.5 with nesting enforced (TC within WT, ET within TC), so ``label > 0`` is
exactly ``P(WT) > 0.5``, ``label in {1, 4}`` exactly TC and ``label == 4`` exactly ET. A ``wt`` model's
label marks tumour as 2 (sub-regions unknown); a ``necrotic`` model's marks NCR as 1. Optional clean-up
drops 3-D tumour pieces smaller than ``min_component_voxels`` or than ``min_component_fraction`` of the
largest piece (a model records the fraction cross-validation chose for it, see medvision.inference.spec).
Evaluation scores the regions of this label (:func:`label_masks`), not the raw probabilities, so it
scores what ``predict`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medvision.data.case import REGIONS, regions_to_label
from medvision.data.regions import NECROTIC_REGION, labels_to_masks, target_of_regions
from medvision.volumetry import remove_minor_components, remove_small_components

THRESHOLD = 0.5


def probabilities_to_label(
    probabilities: np.ndarray, regions: tuple[str, ...], threshold: float | Sequence[float] = THRESHOLD
) -> np.ndarray:
    """Region probabilities (R, ...) -> BraTS labels (...) uint8, with nesting enforced (module doc).

    ``threshold``: one for every region, or one per region (in ``regions`` order).

    Raises:
        ValueError: ``regions`` is not the output of any target (see medvision.data.regions), or the
            thresholds are not one per region.
    """
    probabilities = np.asarray(probabilities)
    if np.ndim(threshold) == 0:
        on = probabilities > threshold
    else:
        per_region = np.asarray(threshold, dtype=np.float32)
        if per_region.shape != (len(regions),):
            raise ValueError(f"{len(per_region)} thresholds for the {len(regions)} regions {regions}")
        on = probabilities > per_region.reshape(-1, *([1] * (probabilities.ndim - 1)))
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


def final_label(
    probabilities: np.ndarray,
    regions: tuple[str, ...],
    *,
    threshold: float = THRESHOLD,
    min_component_voxels: int = 0,
    min_component_fraction: float = 0.0,
) -> np.ndarray:
    """The label a prediction reports: thresholded, nested, and 3-D pieces removed when asked (smaller than
    ``min_component_voxels``, or than ``min_component_fraction`` of the largest piece)."""
    label = probabilities_to_label(probabilities, regions, threshold)
    if min_component_voxels > 1:
        label = remove_small_components(label, min_component_voxels)
    if min_component_fraction > 0:
        label = remove_minor_components(label, min_component_fraction)
    return label


def label_masks(label: np.ndarray, regions: tuple[str, ...]) -> np.ndarray:
    """Boolean masks (R, ...) of ``regions`` in a label volume: what a prediction is scored on."""
    return labels_to_masks(label, target_of_regions(regions).name)


def uncertainty_score(uncertainty: np.ndarray, predicted: np.ndarray, any_tumour: np.ndarray) -> float:
    """Mean MC-dropout spread over the predicted tumour; when none is predicted, over the voxels any pass
    called tumour; 0.0 when no pass did."""
    for where in (predicted, any_tumour):
        if where.any():
            return float(uncertainty[where].mean())
    return 0.0
