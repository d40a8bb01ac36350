"""Which modalities a case has, as the network sees it: availability planes and the 15 subsets.

A model trained with modality dropout takes, after its image channels, one constant plane per modality
(1 where the modality was given, 0 where its image channels are zeros), so "missing" is never confused
with "dark". The same planes are built here for inference and, in torch, by
``medvision.train.modality_dropout`` for training.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from medvision.data.case import MODALITIES

# All non-empty subsets of the four modalities, in MODALITIES order, smallest first.
SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    subset for size in range(1, len(MODALITIES) + 1) for subset in itertools.combinations(MODALITIES, size)
)


def subset_name(subset: Iterable[str]) -> str:
    """``("flair", "t1ce")`` -> ``"flair+t1ce"`` (MODALITIES order)."""
    chosen = set(subset)
    return "+".join(m for m in MODALITIES if m in chosen)


def parse_subset(text: str) -> tuple[str, ...]:
    """``"flair+t1ce"`` or ``"flair,t1ce"`` -> ``("flair", "t1ce")``; ValueError for unknown or empty."""
    parts = [p.strip().lower() for p in text.replace(",", "+").split("+") if p.strip()]
    unknown = [p for p in parts if p not in MODALITIES]
    if unknown or not parts:
        raise ValueError(f"unknown modality set {text!r}: use names from {', '.join(MODALITIES)} joined by +")
    return tuple(m for m in MODALITIES if m in parts)


def availability_vector(available: Iterable[str]) -> np.ndarray:
    """(4,) float32: 1 for each modality given, in MODALITIES order."""
    chosen = set(available)
    return np.array([1.0 if m in chosen else 0.0 for m in MODALITIES], dtype=np.float32)


def keep_only(image: np.ndarray, available: Iterable[str]) -> np.ndarray:
    """A copy of a (4, ...) image with the channels of the modalities not in ``available`` set to zero."""
    out = np.array(image, copy=True)
    out[availability_vector(available) == 0] = 0
    return out


def set_aside(given: Iterable[str], kept: Iterable[str]) -> tuple[str, ...]:
    """The modalities of ``given`` that are not in ``kept``, in MODALITIES order (what an ensemble's superset
    route leaves out when it predicts ``given`` as ``kept``)."""
    given, kept = set(given), set(kept)
    return tuple(m for m in MODALITIES if m in given and m not in kept)
