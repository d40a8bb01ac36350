"""Pictures for the model card's failure modes: one axial slice, truth beside prediction.

``python -m medvision.train.card_figures CHECKPOINT STORE CASE_ID OUT.png [--modalities SET] [--at WHICH]``
predicts the stored case as ``evaluate`` does and picks the axial slice with the most true tumour (``--at
truth``) or with the most predicted tumour (``--at prediction``: where a model that misses the tumour marks
something else). It draws that slice in the radiological convention from the case's affine
(medvision.app_support.orientation), A/P/L/R at the edges: FLAIR (or the first modality given) in grey,
labels coloured ED blue, NCR/NET yellow, ET red.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medvision.app_support.orientation import DisplayFrame
from medvision.data.case import MODALITIES
from medvision.data.modality_sets import keep_only, parse_subset
from medvision.data.store import SliceStore

LABEL_COLOURS = {2: (60, 120, 255), 1: (255, 220, 40), 4: (255, 40, 40)}


def _grey(plane: np.ndarray) -> np.ndarray:
    inside = plane[plane != 0]
    lo, hi = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
    scaled = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.repeat(scaled.astype(np.uint8)[..., None], 3, axis=-1)


def overlay(plane: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) image + (H, W) BraTS labels -> (H, W, 3) uint8 with the labels blended in."""
    rgb = _grey(plane).astype(np.float32)
    for value, colour in LABEL_COLOURS.items():
        mask = label == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.array(colour, dtype=np.float32)
    return rgb.astype(np.uint8)


def _panel(rgb: np.ndarray, title: str, edges: dict[str, str], scale: int = 2) -> Image.Image:
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.text((4, 4), title, fill=(255, 255, 255))
    draw.text((w // 2, 4), edges["top"], fill=(255, 255, 0))
    draw.text((w // 2, h - 14), edges["bottom"], fill=(255, 255, 0))
    draw.text((4, h // 2), edges["left"], fill=(255, 255, 0))
    draw.text((w - 12, h // 2), edges["right"], fill=(255, 255, 0))
    return image


SLICE_CHOICES = ("truth", "prediction")


def failure_figure(
    checkpoint: str,
    store_path: str,
    case_id: str,
    out: Path,
    modalities: tuple[str, ...] = MODALITIES,
    at: str = "truth",
) -> int:
    """Write the truth/prediction picture of ``case_id`` at the axial slice with the most tumour in the
    truth or in the prediction (``at``); returns the axial slice index drawn."""
    if at not in SLICE_CHOICES:
        raise ValueError(f"at must be one of {SLICE_CHOICES}, got {at!r}")
    from medvision.atomic import atomic_path
    from medvision.train.evaluation import checkpoint_engine

    engine, _ = checkpoint_engine(checkpoint, "cpu", "auto", "auto", 16)
    with SliceStore(store_path) as store:
        case = store.read_case(case_id)
        prepared = engine.prepare_stored(store.read_image(case_id))
    if modalities != MODALITIES:
        prepared = dataclasses.replace(
            prepared, image=keep_only(prepared.image, modalities), available=modalities
        )
    predicted = engine.predict(prepared).label
    frame = DisplayFrame.from_affine(case.affine)
    axis = frame.slice_axis("axial")
    truth = case.label if case.label is not None else np.zeros(case.shape, np.uint8)
    chosen = truth if at == "truth" else predicted
    index = int(np.argmax((chosen > 0).sum(axis=tuple(a for a in range(3) if a != axis))))
    channel = MODALITIES.index(modalities[0]) if "flair" not in modalities else 0
    plane = frame.take(case.image[channel], "axial", index)
    edges = frame.edge_labels("axial")
    left = _panel(overlay(plane, frame.take(truth, "axial", index)), f"{case_id} truth", edges)
    right = _panel(overlay(plane, frame.take(predicted, "axial", index)), "+".join(modalities), edges)
    sheet = Image.new("RGB", (left.width + right.width, left.height))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (left.width, 0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return index


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m medvision.train.card_figures", description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("store")
    parser.add_argument("case_id")
    parser.add_argument("out", type=Path)
    parser.add_argument("--modalities", default="flair+t1+t1ce+t2")
    parser.add_argument("--at", choices=SLICE_CHOICES, default="truth", help="the slice with most tumour in")
    args = parser.parse_args(argv)
    modalities = parse_subset(args.modalities)
    index = failure_figure(args.checkpoint, args.store, args.case_id, args.out, modalities, args.at)
    print(f"wrote {args.out} (axial slice {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
