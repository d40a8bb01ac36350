"""Several networks of one architecture, trained apart, that predict together by averaging probabilities.

On the real cross-validation folds, the mean of three training runs' probabilities (the same recipe with
other seeds) beat the runs alone on WT Dice in every held-out case (checkpoints/MODEL_CARD.md). Packing
the members into one module keeps everything downstream unchanged: the checkpoint format, ONNX export,
MC dropout (each member's dropout samples), TTA and the engine all see one network whose output is a
logit. That logit is ``logit(mean_i sigmoid(member_i(x)))``, so the sigmoid the engine applies gives back
exactly the members' mean probability.

MC dropout on an ensemble runs one member per pass (:meth:`ModelEnsemble.one_member`, cycled by the
engine): the passes' spread then holds both the members' disagreement and each member's dropout, and a
pass costs one network, not all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from medvision.models.attention_unet import AttentionUNet

# The averaged probability is clamped this far from 0 and 1 before the logit, so that a member certain in
# fp32 (sigmoid exactly 0 or 1) cannot make the logit infinite.
PROBABILITY_EPS = 1e-6


class ModelEnsemble(nn.Module):
    """``members`` AttentionUNets of one config; ``forward`` returns the logit of their mean probability.

    ``config`` is the members' config plus ``"members"``, so ``build_model(config)`` rebuilds it. With
    ``return_attention=True`` the attention maps are the members' maps averaged level by level.
    """

    def __init__(self, members: int = 3, **member_config: Any) -> None:
        super().__init__()
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be a positive int, got {members!r}")
        self.members = nn.ModuleList(AttentionUNet(**member_config) for _ in range(members))
        self.config: dict[str, Any] = {**self.members[0].config, "members": members}
        self._only: int | None = None  # set by one_member while a single member runs

    @contextmanager
    def one_member(self, index: int) -> Iterator[nn.Module]:
        """While the block lasts, ``forward`` runs member ``index % members`` alone (its own logit).

        Not thread-safe by itself: the engine holds its model lock around the passes that use it.
        """
        previous, self._only = self._only, index % len(self.members)
        try:
            yield self.members[self._only]
        finally:
            self._only = previous

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if self._only is not None:
            return self.members[self._only](x, return_attention=return_attention)
        outputs = [
            member(x, return_attention=True) if return_attention else (member(x), [])
            for member in self.members
        ]
        mean = torch.stack([torch.sigmoid(logits.float()) for logits, _ in outputs]).mean(dim=0)
        mean = mean.clamp(PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
        # log(p) - log(1 - p) rather than torch.logit: the same value, and every ONNX exporter knows it.
        logits = torch.log(mean) - torch.log1p(-mean)
        if not return_attention:
            return logits
        levels = zip(*(maps for _, maps in outputs), strict=True)  # one tuple of member maps per level
        return logits, [torch.stack([m.float() for m in level]).mean(dim=0) for level in levels]
