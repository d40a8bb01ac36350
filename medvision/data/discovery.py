"""Find the cases under a dataset folder, however deep a download nests them (up to ``MAX_DEPTH``).

Real downloads wrap their cases in folders: Kaggle's BraTS 2020 zip unpacks to
``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/``, its HDF5 slices to
``BraTS2020_training_data/content/data/``, and the Decathlon task sits in ``Task01_BrainTumour/``.
This module walks the folder given, names only (no scan is opened), and leaves the question "what does
this folder hold?" to a classifier from :mod:`medvision.data.readers`, which knows the formats.

The walk is bounded (``MAX_DEPTH`` levels, ``MAX_FOLDERS`` folders) so that pointing at a home folder
by mistake fails fast; it never follows a symbolic link to a folder, so it stays inside the tree it was
given; it ignores hidden entries (``.DS_Store``, macOS ``._*`` resource forks, ``.git``) and ``__MACOSX``.
Everything else it passes over is counted, so that "no cases found" can say what was there instead.

Every listing goes through :func:`list_folder`, which checks each symbolic link to a file against the
allowed folders (:class:`medvision.confinement.Confinement`; by default the folder given): a link that
leads outside is never listed, and one named like scan data (``.nii[.gz]``, ``.h5``, ``.zip``) refuses the
listing with a PathNotAllowedError naming it, so a planted link cannot slip a server file into a dataset.
The walk starts only from an allowed folder and follows no folder link, so every folder it lists is real
and inside; only links need the check.

One cohort per folder: cases in more than one format (BraTS folders next to a Decathlon task or next to
Kaggle slices) are refused, since mixing them silently would mix label conventions and intensity
scales. The one exception is the output of ``medvision synth --format both``, which holds the same
cases twice (``nifti/`` and ``h5/``): its NIfTI copy is read and an info line says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from medvision.confinement import Confinement
from medvision.data.nifti_checks import has_nifti_suffix
from medvision.errors import InputDataError

__all__ = ["MAX_DEPTH", "MAX_FOLDERS", "CaseSource", "Claim", "Folder", "find_cases", "list_folder"]

logger = logging.getLogger(__name__)

MAX_DEPTH = 5  # folder levels searched below the folder given (Kaggle downloads need 3-4)
MAX_FOLDERS = 20_000  # folders listed at most (BraTS 2021 has 1,251 case folders)
IGNORED_FOLDERS = frozenset({"__MACOSX"})
# Format family of a CaseRef kind; a case zip normally holds one BraTS case folder.
FORMAT_OF_KIND: dict[str, str] = {
    "brats": "nifti",
    "zip": "nifti",
    "decathlon": "decathlon",
    "kaggle": "kaggle",
}
FORMAT_NAMES: dict[str, str] = {
    "nifti": "BraTS case folders",
    "decathlon": "Decathlon Task01 images",
    "kaggle": "Kaggle .h5 slices",
}
# The layout of `medvision synth --format both`: the same cases as NIfTI folders and as Kaggle slices.
SYNTH_NIFTI_FOLDER = "nifti"
SYNTH_H5_FOLDER = "h5"
SIDE_FILE_TYPES: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".txt": "text",
    ".md": "text",
    ".xlsx": "spreadsheet",
    ".xls": "spreadsheet",
    ".pdf": "pdf",
}
# Skipped kind -> (singular, plural) noun for the "nothing found" message; {depth} is MAX_DEPTH.
SKIP_NOUNS: dict[str, tuple[str, str]] = {
    "csv": ("CSV file", "CSV files"),
    "json": ("JSON file", "JSON files"),
    "text": ("text file", "text files"),
    "spreadsheet": ("spreadsheet", "spreadsheets"),
    "pdf": ("PDF file", "PDF files"),
    "nifti": (
        "folder with NIfTI files not named like a BraTS case",
        "folders with NIfTI files not named like a BraTS case",
    ),
    "h5": (
        "folder with .h5 files not named volume_<v>_slice_<s>.h5",
        "folders with .h5 files not named volume_<v>_slice_<s>.h5",
    ),
    "zip": (
        ".zip file in a subfolder (only .zip files directly in the folder given are read)",
        ".zip files in subfolders (only .zip files directly in the folder given are read)",
    ),
    "link": ("symbolic link to a folder (not followed)", "symbolic links to folders (not followed)"),
    "outside": (
        "symbolic link leading outside the folder given (not read)",
        "symbolic links leading outside the folder given (not read)",
    ),
    "deep": (
        "folder more than {depth} levels down (not searched)",
        "folders more than {depth} levels down (not searched)",
    ),
    "other": ("other file", "other files"),
}
EXPECTED = (
    "expected BraTS case folders (<ID>_flair.nii.gz ...), a Decathlon folder with imagesTr/, "
    "Kaggle volume_<v>_slice_<s>.h5 files, or one case"
)


class CaseSource(Protocol):
    """What the walk needs of a case reference (``readers.CaseRef``): its kind, id and path."""

    @property
    def kind(self) -> str: ...

    @property
    def case_id(self) -> str: ...

    @property
    def path(self) -> Path: ...


R = TypeVar("R", bound=CaseSource)


@dataclass(frozen=True)
class Folder:
    """One folder's visible entries, listed once: the classifier and the walk both work from this."""

    path: Path
    depth: int  # 0 = the folder given
    files: tuple[str, ...]  # regular files (or links to files), sorted
    folders: tuple[str, ...]  # real subfolders, sorted; links to folders are in ``linked_folders``
    linked_folders: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()  # links to files outside the allowed folders (never read)


@dataclass(frozen=True)
class Claim(Generic[R]):
    """The classifier's answer for one folder: the cases it holds, and whether to look inside it."""

    refs: tuple[R, ...] = ()
    leaf: bool = False  # a case or dataset folder: its subfolders belong to it and are not searched


@dataclass
class _Skipped:
    """What the walk passed over, counted by kind with the first example of each (for messages)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, Path] = field(default_factory=dict)

    def add(self, kind: str, path: Path) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.examples.setdefault(kind, path)

    def describe(self, root: Path, max_depth: int) -> str:
        """``"2 CSV files (e.g. a/x.csv), 1 folder with ...: a/b"``, in the order of ``SKIP_NOUNS``."""
        parts = []
        for kind, (singular, plural) in SKIP_NOUNS.items():
            count = self.counts.get(kind, 0)
            if not count:
                continue
            noun = (singular if count == 1 else plural).format(depth=max_depth)
            example = _relative(self.examples[kind], root)
            parts.append(f"1 {noun}: {example}" if count == 1 else f"{count} {noun} (e.g. {example})")
        return ", ".join(parts)


def _is_ignored(name: str) -> bool:
    """Hidden entries (``.DS_Store``, ``._*`` AppleDouble files, ``.git``) and macOS archive folders."""
    return name.startswith(".") or name in IGNORED_FOLDERS


def is_data_name(name: str) -> bool:
    """A file name a reader could open as scan data (NIfTI, HDF5 slice, zipped case)."""
    lower = name.lower()
    return has_nifti_suffix(lower) or lower.endswith((".h5", ".zip"))


def list_folder(path: Path, depth: int, within: Confinement) -> Folder:
    """List ``path`` once, by name and entry type; every symbolic link to a file is checked by ``within``.

    Raises:
        PathNotAllowedError: a link named like scan data leads outside ``within`` (the message names it).
        InputDataError: the folder cannot be listed.
    """
    files: list[str] = []
    folders: list[str] = []
    links: list[str] = []
    outside: list[str] = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if _is_ignored(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_symlink() and entry.is_dir():
                    links.append(entry.name)  # never followed, wherever it leads
                elif entry.is_symlink() and not within.allows(entry.path):
                    if is_data_name(entry.name):
                        within.check(path / entry.name)  # raises, naming the link as listed
                    outside.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
    except OSError as exc:
        raise InputDataError(path, f"cannot list the folder: {exc}") from exc
    return Folder(
        path,
        depth,
        tuple(sorted(files)),
        tuple(sorted(folders)),
        tuple(sorted(links)),
        tuple(sorted(outside)),
    )


def _note_files(folder: Folder, claimed: set[Path], skipped: _Skipped) -> None:
    """Count the files no case was made of, so "no cases found" can say what the walk saw instead."""
    marked: set[str] = set()
    for name in folder.files:
        lower = name.lower()
        if folder.path / name in claimed:
            continue
        if has_nifti_suffix(lower):
            kind = "nifti"
        elif lower.endswith(".h5"):
            kind = "h5"
        elif lower.endswith(".zip"):
            kind = "zip"
        else:
            kind = SIDE_FILE_TYPES.get(os.path.splitext(lower)[1], "other")
        if kind in ("nifti", "h5"):  # counted once per folder: the folder is what a user would look at
            if kind in marked:
                continue
            marked.add(kind)
            skipped.add(kind, folder.path)
        else:
            skipped.add(kind, folder.path / name)


@dataclass
class _Walk(Generic[R]):
    """One bounded, depth-first walk: classify each folder, collect its cases, descend where allowed."""

    root: Path
    classify: Callable[[Folder], Claim[R]]
    max_depth: int
    within: Confinement
    found: list[R] = field(default_factory=list)
    skipped: _Skipped = field(default_factory=_Skipped)
    listed: int = 0

    def visit(self, path: Path, depth: int) -> None:
        self.listed += 1
        if self.listed > MAX_FOLDERS:
            raise InputDataError(
                self.root,
                f"more than {MAX_FOLDERS} folders within {self.max_depth} levels; "
                "give the dataset folder itself",
            )
        folder = list_folder(path, depth, self.within)
        claim = self.classify(folder)
        self.found.extend(claim.refs)
        if claim.leaf:
            return
        _note_files(folder, {ref.path for ref in claim.refs}, self.skipped)
        for name in folder.linked_folders:
            self.skipped.add("link", path / name)
        for name in folder.outside:
            self.skipped.add("outside", path / name)
        for name in folder.folders:
            if depth >= self.max_depth:
                self.skipped.add("deep", path / name)
            else:
                self.visit(path / name, depth + 1)


def find_cases(
    root: Path,
    classify: Callable[[Folder], Claim[R]],
    *,
    max_depth: int = MAX_DEPTH,
    within: Confinement | None = None,
) -> list[R]:
    """The cases under the folder ``root``, in path order, from one format (see the module docstring).

    ``within``: the allowed folders; None = ``root`` itself (a link leading out of it is not read).

    Raises:
        PathNotAllowedError: ``root``, or a link named like scan data, leads outside ``within``.
        InputDataError: nothing found (the message lists what was skipped), more than one format,
            duplicate case ids, an unreadable folder, or more than ``MAX_FOLDERS`` folders.
    """
    within = Confinement.around(root) if within is None else within
    within.check(root)
    walk: _Walk[R] = _Walk(root, classify, max_depth, within)
    walk.visit(root, 0)
    if not walk.found:
        raise InputDataError(root, _nothing_found(root, walk.skipped, max_depth))
    refs = _one_format(root, sorted(walk.found, key=lambda ref: ref.path.parts))
    _check_unique_ids(root, refs)
    summary = walk.skipped.describe(root, max_depth)
    if summary:
        logger.info("%s: %d cases; skipped %s", root, len(refs), summary)
    return refs


def _nothing_found(root: Path, skipped: _Skipped, max_depth: int) -> str:
    summary = skipped.describe(root, max_depth)
    seen = f"skipped: {summary}" if summary else "it holds no files"
    return f"no cases found (searched {max_depth} levels below it; {seen}); {EXPECTED}"


def _one_format(root: Path, refs: Sequence[R]) -> list[R]:
    """Refuse a mix of formats, except the two copies ``synth --format both`` writes (NIfTI is read)."""
    by_format: dict[str, list[R]] = {}
    for ref in refs:
        by_format.setdefault(FORMAT_OF_KIND.get(ref.kind, ref.kind), []).append(ref)
    if len(by_format) == 1:
        return list(refs)
    if _is_synth_both(root, by_format):
        logger.info(
            "%s holds the same %d cases twice (nifti/ and h5/, as `medvision synth --format both` writes "
            "them); reading the NIfTI copy %s (give %s to read the .h5 slices instead)",
            root,
            len(by_format["nifti"]),
            root / SYNTH_NIFTI_FOLDER,
            root / SYNTH_H5_FOLDER,
        )
        return by_format["nifti"]
    described = " and ".join(
        f"{FORMAT_NAMES.get(fmt, fmt)} (e.g. {_relative(group[0].path, root)})"
        for fmt, group in by_format.items()
    )
    raise InputDataError(
        root, f"holds cases in more than one format: {described}; give the folder of one format"
    )


def _is_synth_both(root: Path, by_format: dict[str, list[R]]) -> bool:
    """``<root>/nifti/<case>/`` and ``<root>/h5/volume_*`` with as many NIfTI cases as Kaggle volumes."""
    if set(by_format) != {"nifti", "kaggle"}:
        return False
    nifti, kaggle = by_format["nifti"], by_format["kaggle"]
    return (
        all(ref.kind == "brats" and ref.path.parent == root / SYNTH_NIFTI_FOLDER for ref in nifti)
        and all(ref.path == root / SYNTH_H5_FOLDER for ref in kaggle)
        and len(nifti) == len(kaggle)
    )


def _check_unique_ids(root: Path, refs: Sequence[CaseSource]) -> None:
    """Case ids key the prepared store and the splits, so two cases may never share one."""
    first_path: dict[str, Path] = {}
    dupes: dict[str, Path] = {}
    for ref in refs:
        if ref.case_id in first_path:
            dupes.setdefault(ref.case_id, ref.path)
        else:
            first_path[ref.case_id] = ref.path
    if dupes:
        shown = sorted(dupes)
        one = shown[0]
        example = f"{_relative(first_path[one], root)} and {_relative(dupes[one], root)}"
        raise InputDataError(root, f"case ids occur more than once: {shown[:10]} (e.g. {example})")


def _relative(path: Path, root: Path) -> str:
    """A path as the user would look for it under the folder they gave."""
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)
