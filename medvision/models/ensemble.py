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

**Routes.** Some members can be specialists for one modality subset (``routes``: subset name -> member
indices, e.g. ``{"t1ce": [3]}``): an input whose availability planes (its last four channels) say exactly
that subset is predicted by those members alone, every other input by the members in no route. On the real
cross-validation folds a network trained on T1ce alone found the tumour core on T1ce-only scans where the
all-subset members did not (checkpoints/MODEL_CARD.md). ``route_supersets`` predicts a larger subset as
one of its smaller subsets, with the other modalities set aside: ``{"t1+t1ce": "t1ce"}`` sends T1 + T1ce to
the T1ce specialist without T1, and ``{"flair+t1+t1ce+t2": "flair+t1ce+t2"}`` gives all four to the general
members without T1. Where the cross-validation says the smaller input predicts better, adding a modality
must not make the prediction worse. The route is read from the input's values, so a routed ensemble cannot
be traced to ONNX as a whole (the trace would keep one route): its general part is
(:meth:`ModelEnsemble.general_part`), inputs routed to a specialist run in PyTorch, and
:meth:`ModelEnsemble.kept_input` applies a set-aside before the general part runs elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from medvision.data.case import MODALITIES
from medvision.data.modality_sets import availability_vector, parse_subset, subset_name
from medvision.models.attention_unet import AttentionUNet

# The averaged probability is clamped this far from 0 and 1 before the logit, so that a member certain in
# fp32 (sigmoid exactly 0 or 1) cannot make the logit infinite.
PROBABILITY_EPS = 1e-6


class ModelEnsemble(nn.Module):
    """``members`` AttentionUNets of one config; ``forward`` returns the logit of their mean probability.

    ``config`` is the members' config plus ``"members"`` (and ``"routes"`` when given), so
    ``build_model(config)`` rebuilds it. With ``return_attention=True`` the attention maps are the members'
    maps averaged level by level.
    """

    def __init__(
        self,
        members: int = 3,
        routes: Mapping[str, Sequence[int]] | None = None,
        route_supersets: Mapping[str, str] | None = None,
        **member_config: Any,
    ) -> None:
        super().__init__()
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be a positive int, got {members!r}")
        self.members = nn.ModuleList(AttentionUNet(**member_config) for _ in range(members))
        in_channels = self.members[0].config["in_channels"]
        self.routes = _checked_routes(routes or {}, members, in_channels)
        self.route_supersets = _checked_supersets(route_supersets or {}, self.routes, in_channels)
        routed = {i for indices in self.routes.values() for i in indices}
        self.general = tuple(i for i in range(members) if i not in routed)
        self.config: dict[str, Any] = {**self.members[0].config, "members": members}
        if self.routes:
            self.config["routes"] = {name: list(indices) for name, indices in self.routes.items()}
        if self.route_supersets:
            self.config["route_supersets"] = dict(self.route_supersets)
        self._only: int | None = None  # set by one_member while a single member runs

    @contextmanager
    def one_member(self, index: int) -> Iterator[None]:
        """While the block lasts, ``forward`` runs one member alone (its own logit): number
        ``index % n`` of the n members that predict the input (its route's, or the general ones).

        Not thread-safe by itself: the engine holds its model lock around the passes that use it.
        """
        previous, self._only = self._only, index
        try:
            yield
        finally:
            self._only = previous

    def general_part(self) -> nn.Module:
        """The general members as one network, sharing their weights: what every unrouted input runs (the
        part of a routed ensemble that can be exported to ONNX)."""
        if len(self.general) == 1:
            return self.members[self.general[0]]
        part = ModelEnsemble(members=len(self.general), **self.members[0].config)
        part.members = nn.ModuleList(self.members[i] for i in self.general)
        return part.train(self.training)

    def routed(self, x: torch.Tensor) -> bool:
        """True when any slice of ``x`` goes to a route's specialists rather than to the general members."""
        return any(members != self.general for _, members, _ in self.route_groups(x))

    def kept_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the modalities its route sets aside zeroed (images and planes), row by row: what the
        members see. ``x`` itself when nothing is set aside."""
        return self._kept(x, self.route_groups(x))

    def general_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """What the general members see of ``x`` (:meth:`kept_input`), or None when any slice goes to a
        specialist instead: one reading of the routes for a backend that runs the general part alone."""
        groups = self.route_groups(x)
        if any(members != self.general for _, members, _ in groups):
            return None
        return self._kept(x, groups)

    @staticmethod
    def _kept(
        x: torch.Tensor, route_groups: list[tuple[list[int] | None, tuple[int, ...], str | None]]
    ) -> torch.Tensor:
        groups = [(rows, keep) for rows, _, keep in route_groups if keep is not None]
        if not groups:
            return x
        out = x.clone()
        for rows, keep in groups:
            index = slice(None) if rows is None else rows
            out[index] = _keep_only(x[index], keep)
        return out

    def route_groups(self, x: torch.Tensor) -> list[tuple[list[int] | None, tuple[int, ...], str | None]]:
        """The batch ``x`` by route: (its rows, or None for all; the members that predict them; the subset
        their input keeps, or None for all of it). A slice whose availability planes name a route's subset
        goes to that route's specialists; one named in ``route_supersets`` goes where its smaller subset
        goes, with the other modalities set aside; any other to the general members.
        A case is one subset, so one group is the rule; a training batch with modality dropout mixes them.
        """
        if not self.routes and not self.route_supersets:
            return [(None, self.general, None)]
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise RuntimeError("a routed ensemble reads its route from the input and cannot be traced")
        given = (x[:, -len(MODALITIES) :].amax(dim=(2, 3)) > 0.5).tolist()
        rows_by_route: dict[tuple[tuple[int, ...], str | None], list[int]] = {}
        for row, flags in enumerate(given):
            name = subset_name(m for m, on in zip(MODALITIES, flags, strict=True) if on)
            if name in self.routes:
                route = (self.routes[name], None)
            elif name in self.route_supersets:
                target = self.route_supersets[name]
                route = (self.routes.get(target, self.general), target)
            else:
                route = (self.general, None)
            rows_by_route.setdefault(route, []).append(row)
        if len(rows_by_route) == 1:
            ((members, keep),) = rows_by_route
            return [(None, members, keep)]
        return [(rows, members, keep) for (members, keep), rows in rows_by_route.items()]

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        groups = self.route_groups(x)
        if len(groups) == 1:
            _, members, keep = groups[0]
            return self._predict(x, members, keep, return_attention)
        # Mixed routes: each group of rows through its own members, put back in the batch's order.
        parts = [(rows, self._predict(x[rows], members, keep, True)) for rows, members, keep in groups]
        first_logits, first_maps = parts[0][1]
        logits = first_logits.new_empty((x.shape[0], *first_logits.shape[1:]), dtype=torch.float32)
        maps = [m.new_empty((x.shape[0], *m.shape[1:]), dtype=torch.float32) for m in first_maps]
        for rows, (part_logits, part_maps) in parts:
            logits[rows] = part_logits.float()
            for level, part in zip(maps, part_maps, strict=True):
                level[rows] = part.float()
        return (logits, maps) if return_attention else logits

    def _predict(
        self, x: torch.Tensor, indices: tuple[int, ...], keep: str | None, return_attention: bool
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The logit of the mean probability of members ``indices`` on ``x`` (only ``keep``'s modalities)."""
        chosen = [self.members[i] for i in indices]
        if keep is not None:  # the smaller input: the set-aside modalities' images and planes zero
            x = _keep_only(x, keep)
        if self._only is not None:
            return chosen[self._only % len(chosen)](x, return_attention=return_attention)
        if len(chosen) == 1:  # one network: its own logit, exactly
            return chosen[0](x, return_attention=return_attention)
        outputs = [
            member(x, return_attention=True) if return_attention else (member(x), []) for member in chosen
        ]
        mean = torch.stack([torch.sigmoid(logits.float()) for logits, _ in outputs]).mean(dim=0)
        mean = mean.clamp(PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
        # log(p) - log(1 - p) rather than torch.logit: the same value, and every ONNX exporter knows it.
        logits = torch.log(mean) - torch.log1p(-mean)
        if not return_attention:
            return logits
        levels = zip(*(maps for _, maps in outputs), strict=True)  # one tuple of member maps per level
        return logits, [torch.stack([m.float() for m in level]).mean(dim=0) for level in levels]


def _keep_only(x: torch.Tensor, keep: str) -> torch.Tensor:
    """``x`` (B, C, H, W) with every channel of the modalities not in subset ``keep`` zero."""
    kept = torch.from_numpy(availability_vector(parse_subset(keep))).to(x.device, x.dtype)
    return x * kept.repeat(x.shape[1] // len(MODALITIES))[None, :, None, None]


def _checked_routes(
    routes: Mapping[str, Sequence[int]], members: int, in_channels: int
) -> dict[str, tuple[int, ...]]:
    """Routes keyed by canonical subset name; ValueError for a bad subset, index or overlap."""
    checked: dict[str, tuple[int, ...]] = {}
    used: set[int] = set()
    for name, indices in routes.items():
        key = subset_name(parse_subset(name))
        chosen = tuple(int(i) for i in indices)
        if not chosen or any(not 0 <= i < members for i in chosen) or used & set(chosen) or key in checked:
            raise ValueError(f"route {name!r}: member indices {list(indices)} are empty, unknown or reused")
        used |= set(chosen)
        checked[key] = chosen
    if checked and len(used) == members:
        raise ValueError("routes take every member: none is left for the other subsets")
    if checked and in_channels < 2 * len(MODALITIES):
        raise ValueError(f"routes need the availability planes in the input, {in_channels} channels has none")
    return checked


def _checked_supersets(
    supersets: Mapping[str, str], routes: Mapping[str, tuple[int, ...]], in_channels: int
) -> dict[str, str]:
    """Supersets keyed by canonical subset name; ValueError unless each maps a subset without a route of
    its own to a strictly smaller subset that is not itself set aside."""
    checked: dict[str, str] = {}
    for name, smaller in supersets.items():
        key, target = subset_name(parse_subset(name)), subset_name(parse_subset(smaller))
        if key in routes or not set(parse_subset(target)) < set(parse_subset(key)):
            raise ValueError(f"{name!r} -> {smaller!r}: not a larger subset (without a route) of a smaller")
        checked[key] = target
    chained = sorted(set(checked) & set(checked.values()))
    if chained:
        raise ValueError(f"route supersets chain through {chained[0]!r}: map each subset to its final input")
    if checked and in_channels < 2 * len(MODALITIES):
        raise ValueError(f"route supersets need the availability planes, {in_channels} channels has none")
    return checked
