"""Which MedVision modality (flair, t1, t1ce, t2) a DICOM series is, with the reason, from its header.

Names come first because sites name their protocols on purpose (``sT2W/FLAIR``, ``T1 MPRAGE +C``,
``t2_tse_tra``); the sequence parameters decide when names say nothing and flag disagreement:

- FLAIR: an inversion recovery with a long inversion time (TI >= 1500 ms) and long TE (>= 60 ms);
- T2: long TR (>= 2000 ms) and long TE (>= 60 ms), no inversion;
- T1: short TR (< 1000 ms) and short TE (< 30 ms), or a gradient echo with TI < 1300 ms (MPRAGE);
- T1ce: a T1 with a contrast agent named (ContrastBolusAgent / ContrastBolusIngredient / ...Volume) or a
  name saying so (``+c``, ``post``, ``gd``, ``gad``, ``contrast``, ``ce``, ``kontrast``).

Diffusion, susceptibility, perfusion, angiography, proton density and T2* series are ``unknown`` even
when their name holds "t2" or "t1". The caller can override any assignment (see ``study.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

__all__ = ["Assignment", "assign_modality", "series_text"]

UNKNOWN = "unknown"
# Series that are never one of the four structural modalities, whatever else their name says.
_OTHER = re.compile(
    r"diff|dwi|dti|adc|trace|\bb\d{3,4}\b|swi|swan|susc|t2\*|t2star|t2_star|\bgre\b.*t2|hemo|perf|dsc|dce|pwi"
    r"|asl|pcasl|\btof\b|angio|\bmra\b|\bpd\b|pdw|proton|spectro|\bsvs\b|csi|bold|fmri|\bep2d_bold|mip"
)
_FLAIR = re.compile(r"flair|dark[ _-]?fluid|tirm|\bt2[ _-]?fl\b|\bfl[ _-]?t2\b")
_T1 = re.compile(r"t1|mprage|mp[ _-]rage|spgr|bravo|\btfl\b|\bflash\b|\bvibe\b|\bfspgr\b|tfe3d|3d[ _-]?tfe")
_T2 = re.compile(r"t2|\btse\b|\bfse\b|haste|space")
_CONTRAST_WORDS = re.compile(
    r"\+ ?c\b|\+ ?gd|post|\bgd\b|gad|contrast|kontrast|\bce\b|t1ce|t1c\b|\bc\+|_c\b|enh"
)
_CONTRAST_TAGS = (
    "ContrastBolusAgent",
    "ContrastBolusIngredient",
    "ContrastBolusVolume",
    "ContrastBolusRoute",
)


@dataclass(frozen=True)
class Assignment:
    """A series' modality (``flair``, ``t1``, ``t1ce``, ``t2`` or ``unknown``) and why."""

    modality: str
    reason: str


def series_text(ds: Dataset) -> str:
    """SeriesDescription, ProtocolName and SequenceName, lower case, joined: what a site named the series."""
    parts = [str(ds.get(k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName")]
    return " | ".join(p for p in parts if p).lower()


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _has_contrast(ds: Dataset) -> bool:
    for keyword in _CONTRAST_TAGS:
        value = ds.get(keyword)
        text = str(value).strip().lower() if value is not None else ""
        if text and text not in ("none", "no", "0", "0.0", "n/a"):
            return True
    return False


def _from_parameters(ds: Dataset) -> tuple[str, str]:
    """A modality from TR/TE/TI alone (``unknown`` when they say nothing clear), and the figures used."""
    tr, te, ti = (_number(ds, k) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    sequence = str(ds.get("ScanningSequence") or "").upper()
    figures = ", ".join(f"{n} {v:g} ms" for n, v in (("TR", tr), ("TE", te), ("TI", ti)) if v is not None)
    if ti is not None and ti >= 1500 and te is not None and te >= 60:
        return "flair", figures
    if ti is None or ti == 0 or "IR" not in sequence:
        if tr is not None and te is not None and tr >= 2000 and te >= 60:
            return "t2", figures
        if tr is not None and te is not None and tr < 1000 and te < 30:
            return "t1", figures
    if ti is not None and 0 < ti < 1300 and te is not None and te < 30:
        return "t1", figures
    return UNKNOWN, figures or "no TR/TE/TI"


def _from_name(text: str) -> str:
    if _OTHER.search(text) and not _FLAIR.search(text):
        return "other"
    if _FLAIR.search(text):
        return "flair"
    if _T1.search(text):
        return "t1"
    if _T2.search(text):
        return "t2"
    return UNKNOWN


def assign_modality(ds: Dataset) -> Assignment:
    """The modality of the series whose first header is ``ds``, with a reason a user can check."""
    text = series_text(ds)
    named = _from_name(text)
    measured, figures = _from_parameters(ds)
    label = str(ds.get("SeriesDescription") or ds.get("ProtocolName") or "").strip() or "(no description)"
    if named == "other":
        return Assignment(
            UNKNOWN, f"'{label}' names a non-structural sequence (diffusion, SWI, perfusion...)"
        )
    if named == UNKNOWN and measured == UNKNOWN:
        return Assignment(UNKNOWN, f"neither the name '{label}' nor {figures} identify a modality")
    modality = named if named != UNKNOWN else measured
    if named != UNKNOWN:
        agree = (
            "agree" if measured == named else f"suggest {measured}" if measured != UNKNOWN else "say nothing"
        )
        reason = f"name '{label}' says {named}; {figures} {agree}"
    else:
        reason = f"{figures} look like {measured} (name '{label}' says nothing)"
    if modality == "t1":
        contrast_named = bool(_CONTRAST_WORDS.search(text))
        if contrast_named or _has_contrast(ds):
            why = "the name says post-contrast" if contrast_named else "a contrast agent is recorded"
            return Assignment("t1ce", f"{reason}; {why}")
    return Assignment(modality, reason)
