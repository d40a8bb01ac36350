"""The one table of training targets: which output channels a model has and which BraTS labels each holds.

Every layer asks this table (the dataset for its targets, the trainer for its metric keys, evaluation
for the truth it scores against, inference for the names of its outputs and for how it turns
probabilities back into labels), so a target is defined once:

========== ================ =========================================================================
target     output channels  BraTS labels per channel
========== ================ =========================================================================
regions    WT, TC, ET       WT = {1, 2, 4}, TC = {1, 4}, ET = {4} (the BraTS evaluation regions)
wt         WT               {1, 2, 4}: tumour or not; a predicted label marks tumour as 2
necrotic   NCR              {1}: the original project's target, mask channel 0 (NCR/NET) only
========== ================ =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medvision.data.case import REGION_LABELS, REGIONS

# Single-region checkpoints (target "necrotic") report this region: BraTS label 1 (NCR/NET).
NECROTIC_REGION = "NCR"
# Every region name any target can output, with its BraTS labels.
ALL_REGION_LABELS: dict[str, tuple[int, ...]] = {**REGION_LABELS, NECROTIC_REGION: (1,)}


@dataclass(frozen=True)
class Target:
    """One training target: its output channel names and, per channel, the BraTS labels that are positive.

    ``tumour_column`` names the prepared store's slice-table column that says whether a slice holds this
    target's tumour (it drives tumour oversampling).
    """

    name: str
    regions: tuple[str, ...]
    tumour_column: str

    @property
    def labels(self) -> tuple[tuple[int, ...], ...]:
        return tuple(ALL_REGION_LABELS[region] for region in self.regions)

    @property
    def channels(self) -> int:
        return len(self.regions)


TARGET_TABLE: dict[str, Target] = {
    "regions": Target("regions", REGIONS, "pixels_wt"),
    "wt": Target("wt", ("WT",), "pixels_wt"),
    "necrotic": Target("necrotic", (NECROTIC_REGION,), "pixels_ncr"),
}
TARGETS: tuple[str, ...] = tuple(TARGET_TABLE)


def target_spec(name: str) -> Target:
    """The table row of target ``name``.

    Raises:
        ValueError: ``name`` is not one of ``TARGETS``.
    """
    try:
        return TARGET_TABLE[name]
    except (KeyError, TypeError):
        raise ValueError(f"target must be one of {TARGETS}, got {name!r}") from None


def target_of_regions(regions: tuple[str, ...]) -> Target:
    """The target whose output channels are ``regions``.

    Raises:
        ValueError: no target has exactly these channels.
    """
    for spec in TARGET_TABLE.values():
        if spec.regions == tuple(regions):
            return spec
    raise ValueError(f"no target has the output regions {tuple(regions)}")


def labels_to_masks(label: np.ndarray, target: str) -> np.ndarray:
    """BraTS labels (...) -> boolean masks (T, ...) of ``target``'s channels."""
    return np.stack([np.isin(label, values) for values in target_spec(target).labels])
