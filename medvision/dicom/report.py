"""What a DICOM study import did, for a table on the Predict page and lines on the command line.

One row per series found: its number, description, slice count and grid, the modality it was assigned
(and why), and whether it was used, not used, or skipped (and why). Only series descriptions and
acquisition figures appear: never a patient name, ID or birth date.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["SeriesRow", "StudyReport"]


@dataclass(frozen=True)
class SeriesRow:
    series: str  # the SeriesNumber ("401"), or "?" when absent
    description: str
    slices: int
    grid: str  # "288x288x22 at 0.80 x 0.80 x 6.00 mm", "" when unknown
    modality: str  # flair / t1 / t1ce / t2 / unknown; "" for a skipped series
    status: str  # "used (reference)", "used", "not used", "skipped"
    reason: str


@dataclass(frozen=True)
class StudyReport:
    rows: tuple[SeriesRow, ...]
    reference: str  # the modality whose grid the case is on
    notes: tuple[str, ...]  # what was done, step by step (sizes, seconds), and files ignored

    @property
    def used(self) -> tuple[SeriesRow, ...]:
        return tuple(r for r in self.rows if r.status.startswith("used"))

    @property
    def skipped(self) -> tuple[SeriesRow, ...]:
        return tuple(r for r in self.rows if r.status == "skipped")

    def table(self) -> list[dict[str, str | int]]:
        """The rows as dicts (column -> value), ready for a data frame."""
        return [asdict(r) for r in self.rows]

    def lines(self) -> list[str]:
        """One line per series, then the notes: what the command line prints."""
        out = []
        for r in self.rows:
            modality = f" -> {r.modality}" if r.modality else ""
            head = f"series {r.series} '{r.description}' ({r.slices} slices){modality}"
            out.append(f"{head}: {r.status}; {r.reason}")
        return out + list(self.notes)
