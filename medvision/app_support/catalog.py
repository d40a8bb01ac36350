"""What the sidebar offers: data sources (demo cohort, server folders, stores) and models (checkpoints).

A data source always ends up as a prepared store (for EDA and training) plus a list of cases the
Predict page can open. The synthetic demo cohort is made on first start inside the workspace, so a new
user has something to look at without downloading anything.

What is read stays where it belongs (:mod:`medvision.confinement`): a server folder's cases are listed
and read with the folder itself as the root (a symbolic link leading out of it is refused, as in the
background prepare, which is given the same folder), its case zips are extracted in the workspace, and a
model's checkpoint files and training log must really lie in the workspace (or, for the shipped model,
beside it) whatever its metadata says.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medvision.app_support.workspace import AppSettings, Workspace
from medvision.confinement import Confinement
from medvision.data.case import Case
from medvision.data.modality_sets import parse_subset, set_aside
from medvision.errors import CheckpointError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DataSource:
    """A dataset the app works on: a label for the UI, the raw cases (if any) and the prepared store."""

    label: str
    store: Path
    cases_root: Path | None = None  # a folder readers understand; None when only the store is known
    kind: str = "server"  # "synthetic" | "server" | "store"
    scratch: Path | None = None  # where case zips are extracted while read (inside the workspace)


@dataclass(frozen=True)
class CaseChoice:
    """One case the Predict page can open: a readers CaseRef (raw files) or a case of a prepared store."""

    case_id: str
    key: str  # stable text identifying the case, used as a cache key
    ref: Any = None  # medvision.data.readers.CaseRef
    store: str | None = None

    def load(self) -> Case:
        if self.ref is not None:
            return self.ref.load()
        from medvision.data.store import SliceStore

        # A store holds the brain-cropped, z-scored volume; inference normalises it again, harmlessly.
        with SliceStore(self.store) as store:  # type: ignore[arg-type]
            return store.read_case(self.case_id)


@dataclass(frozen=True)
class ModelChoice:
    """A checkpoint the app can predict with, with the run folder it came from when known."""

    label: str
    checkpoint: Path
    run_dir: Path | None = None
    home: Path | None = None  # where its training log must lie; None = beside the checkpoint


# ------------------------------------------------------------------------------------------------
# Data sources


def demo_source(workspace: Workspace) -> DataSource:
    return DataSource(
        label="Synthetic demo cohort",
        store=workspace.data / "synthetic.h5",
        cases_root=workspace.data / "synthetic",
        kind="synthetic",
        scratch=workspace.scratch,
    )


def ensure_demo_cohort(settings: AppSettings, progress: Progress | None = None) -> DataSource:
    """Make the synthetic cohort and its store in the workspace unless they are already there."""
    from medvision.data.store import is_store, prepare_store
    from medvision.data.synthetic import write_cohort

    source = demo_source(settings.workspace.ensure())
    assert source.cases_root is not None
    say = progress or (lambda _msg: None)
    if not (source.cases_root.is_dir() and any(source.cases_root.iterdir())):
        say(f"Making {settings.demo_cases} synthetic cases of size {settings.demo_size}…")
        tmp = source.cases_root.with_name(source.cases_root.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        # One process: under `streamlit run`, worker processes would re-run the app script (spawn).
        write_cohort(
            tmp, settings.demo_cases, seed=0, size=settings.demo_size, fmt="nifti", workers=1, progress=False
        )
        tmp.rename(source.cases_root)  # whole cohort or nothing: a killed first start is simply redone
    if not is_store(source.store):
        say("Preparing the slice store (crop to brain, z-score)…")
        prepare_store(source.cases_root, source.store, workers=1, progress=False)
    say("Demo cohort ready.")
    return source


def store_path_for(folder: Path, workspace: Workspace) -> Path:
    """Where the app keeps the prepared store of a server folder (one per resolved path)."""
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return workspace.cache / "stores" / f"{folder.name}-{digest}.h5"


def server_source(path: Path, workspace: Workspace) -> DataSource:
    """A confined server path -> DataSource. A store is used as it is; a folder gets a store in the cache,
    which may not exist yet (see :func:`medvision.app_support.launcher.start_prepare`)."""
    from medvision.data.store import is_store

    if is_store(path):
        return DataSource(label=f"Store {path.name}", store=path, cases_root=None, kind="store")
    return DataSource(
        label=f"Folder {path.name}",
        store=store_path_for(path, workspace),
        cases_root=path,
        kind="server",
        scratch=workspace.scratch,
    )


def is_ready(source: DataSource) -> bool:
    from medvision.data.store import is_store

    return is_store(source.store)


def case_choices(source: DataSource) -> list[CaseChoice]:
    """Cases of a source, raw files first (original intensities, full field of view), else the store."""
    if source.cases_root is not None and source.cases_root.exists():
        from medvision.data.readers import list_case_sources

        return [
            CaseChoice(case_id=ref.case_id, key=f"{ref.kind}:{ref.path}:{ref.case_id}", ref=ref)
            for ref in list_case_sources(source.cases_root, scratch_dir=source.scratch)
        ]
    from medvision.data.store import SliceStore

    with SliceStore(source.store) as store:
        return [
            CaseChoice(
                case_id=c, key=f"store:{source.store}:{store.fingerprint}:{c}", store=str(source.store)
            )
            for c in store.case_ids
        ]


# ------------------------------------------------------------------------------------------------
# Models


def model_choices(settings: AppSettings) -> list[ModelChoice]:
    """The shipped checkpoints (default first), finished (or stopped) workspace runs, and dropped-in
    checkpoints."""
    from medvision.train.rundir import checkpoint_path, list_runs

    choices: list[ModelChoice] = []
    labels = ("Shipped default model (real scans, any modalities)", "Shipped phantom-only model")
    for label, shipped in zip(labels, settings.shipped_checkpoints, strict=True):
        if _checkpoint_files_in(shipped, Confinement.of([shipped.parent])):
            choices.append(ModelChoice(label=label, checkpoint=shipped, home=shipped.parent))
    home = settings.workspace.home
    workspace = Confinement.of([home])
    for run in list_runs(settings.workspace.runs):
        if run.state not in ("finished", "stopped"):
            continue
        for name in ("best", "last"):
            path = checkpoint_path(run.path, name)
            if _checkpoint_files_in(path, workspace):
                suffix = "" if run.state == "finished" else f" ({run.state})"
                choices.append(
                    ModelChoice(label=f"Run {run.name}{suffix}", checkpoint=path, run_dir=run.path, home=home)
                )
                break
    if settings.workspace.models.is_dir():
        for path in sorted(settings.workspace.models.glob("*.safetensors")):
            if _checkpoint_files_in(path, workspace):
                choices.append(ModelChoice(label=f"Model {path.stem}", checkpoint=path, home=home))
    return choices


def _checkpoint_files_in(weights: Path, allowed: Confinement) -> bool:
    """Both files of a checkpoint exist and really lie in ``allowed`` (a link to elsewhere is skipped)."""
    pair = (weights, weights.with_suffix(".json"))
    if not all(p.is_file() for p in pair):
        return False
    if not all(allowed.allows(p) for p in pair):
        log.warning("skipping checkpoint %s: it links outside %s", weights, allowed.describe())
        return False
    return True


def model_meta(choice: ModelChoice) -> dict[str, Any]:
    """The checkpoint's metadata; CheckpointError when it is not readable."""
    from medvision.checkpoint import read_checkpoint_meta

    return read_checkpoint_meta(choice.checkpoint)


def model_card_text(choice: ModelChoice, settings: AppSettings) -> str | None:
    """The Markdown model card shipped beside the shipped checkpoints (None for other checkpoints)."""
    card = choice.checkpoint.parent / "MODEL_CARD.md"
    if choice.checkpoint in settings.shipped_checkpoints and card.is_file():
        return card.read_text(encoding="utf-8")
    return None


# A picture on a line of its own in a model card: ``![alt](relative/path.png)`` (indented inside a list).
_CARD_PICTURE = re.compile(r"^[ \t]*!\[(?P<alt>[^\]]*)\]\((?P<path>[^)\s]+)\)[ \t]*$", re.MULTILINE)


def card_parts(card: str, card_dir: Path) -> list[tuple[str, Any, str]]:
    """The card split into ``("markdown", text, "")`` and ``("image", path, alt)`` parts, in order.

    Why: a browser resolves a Markdown picture's relative path against the app's URL, where no such file
    is served, so the card's pictures are shown from disk instead. Only pictures inside ``card_dir`` (the
    shipped checkpoints' folder, through the confinement check) become images; any other picture line stays
    as Markdown text.
    """
    allowed = Confinement.of([card_dir])
    parts: list[tuple[str, Any, str]] = []
    start = 0
    for match in _CARD_PICTURE.finditer(card):
        path = card_dir / match["path"]  # an absolute path or a URL is refused by the check or not a file
        if not allowed.allows(path) or not path.is_file():
            continue
        if card[start : match.start()].strip():
            parts.append(("markdown", card[start : match.start()], ""))
        parts.append(("image", path, match["alt"]))
        start = match.end()
    if card[start:].strip():
        parts.append(("markdown", card[start:], ""))
    return parts


def run_dir_of(choice: ModelChoice, meta: dict[str, Any]) -> Path | None:
    """The run folder whose metrics log shows how this model was trained, when it still exists.

    Looked for in order: the run the model was picked from, ``meta["run_dir"]``, the folder above a
    ``<run>/checkpoints/x.safetensors``, and ``<name>_run/`` beside a shipped checkpoint (where a model
    card can keep its training log). A candidate (or its ``metrics.jsonl``) that really lies outside
    ``choice.home`` (the workspace; by default the checkpoint's own folder, or its run folder) is skipped
    with a warning: a metadata file must not make the app read logs from elsewhere on the server.
    """
    checkpoint_dir = choice.checkpoint.parent
    if choice.home is not None:
        allowed = Confinement.of([choice.home])
    elif checkpoint_dir.name == "checkpoints":
        allowed = Confinement.of([checkpoint_dir.parent])
    else:
        allowed = Confinement.of([checkpoint_dir])
    candidates: list[Path] = []
    if choice.run_dir is not None:
        candidates.append(choice.run_dir)
    for key in ("run_dir", "run"):
        if isinstance(meta.get(key), str):
            candidates.append(Path(meta[key]))
    if choice.checkpoint.parent.name == "checkpoints":
        candidates.append(choice.checkpoint.parent.parent)
    candidates.append(choice.checkpoint.with_name(choice.checkpoint.stem + "_run"))
    for candidate in candidates:
        log_file = candidate / "metrics.jsonl"
        if not log_file.is_file():
            continue
        if not (allowed.allows(candidate) and allowed.allows(log_file)):
            log.warning(
                "ignoring run folder %s of %s: outside %s", candidate, choice.label, allowed.describe()
            )
            continue
        return candidate
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_tables(meta: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """Every ``{row: {column: number}}`` block of a checkpoint's metadata (validation per region, test
    metrics per region and per tumour-size bucket, ...), found at any depth, as (title, rows)."""
    tables: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for key, value in meta.items():
        if not isinstance(value, dict) or key in ("model", "train_config", "data", "split"):
            continue
        title = f"{prefix}{key}"
        rows = {
            k: v
            for k, v in value.items()
            if isinstance(v, dict) and v and all(_is_number(x) or x is None for x in v.values())
        }
        if rows:
            tables.append((title, rows))
        nested = {k: v for k, v in value.items() if isinstance(v, dict) and k not in rows}
        if nested:
            tables.extend(metric_tables(nested, prefix=f"{title} / "))
    return tables


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def validation_note(meta: dict[str, Any]) -> str | None:
    """Which validation a training checkpoint's scores come from, or why it has none yet.

    A run validates at the end of each epoch; a run stopped earlier saved its weights with no scores.
    None when the metadata does not say where in training the checkpoint was made (a shipped model).
    """
    step, total, epoch = _int(meta.get("step")), _int(meta.get("total_steps")), _int(meta.get("epoch"))
    if step is None:
        return None
    of_total = f" of {total}" if total else ""
    if not isinstance(meta.get("val"), dict) or not meta["val"]:
        if total and step >= total:
            return None
        return (
            f"No validation yet: the run was stopped at step {step}{of_total}, before its first "
            "validation (it runs at the end of each epoch). Resume it on the Train page to get one."
        )
    config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    epochs = _int(config.get("epochs"))
    if not epoch:
        return None
    note = f"Validation after epoch {epoch}" + (f" of {epochs}" if epochs else "")
    validated = epoch * (total // epochs) if total and epochs else None
    if validated is not None and step > validated:
        return f"{note} (step {validated}); the run was stopped later, at step {step}{of_total}."
    return f"{note} (step {step}{of_total})."


def ensemble_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per member of an ensemble checkpoint (medvision.train.pack_ensemble): what it predicts (the
    subsets without a specialist, or its one subset), its seed, epoch and own validation mean Dice; empty for
    a single network or metadata without a members list."""
    ensemble = meta.get("ensemble") if isinstance(meta.get("ensemble"), dict) else {}
    members = ensemble.get("members") if isinstance(ensemble.get("members"), list) else []
    rows = []
    for number, member in enumerate(members, start=1):
        if not isinstance(member, dict):
            continue
        route = member.get("route") if isinstance(member.get("route"), str) else None
        # A specialist validated on all four modalities (runs before validation took its subset) was scored
        # on an input it never gets in use: no figure for it.
        dice = None if route and member.get("val_modalities") != route else member.get("val_mean_dice")
        rows.append(
            {
                "member": number,
                "predicts": f"{route} alone" if route else "any subset",
                "seed": str(member.get("seed", "–")),
                "epoch": str(member.get("epoch", "–")),
                "val mean Dice": float(dice) if _is_number(dice) else None,
            }
        )
    return rows


def teacher_note(meta: dict[str, Any]) -> str | None:
    """What a distilled network learnt from (medvision.train.distillation), as one sentence; None for a
    network trained on labels only."""
    teacher = meta.get("distilled_from") if isinstance(meta.get("distilled_from"), dict) else None
    if teacher is None:
        return None
    members = _int(teacher.get("members")) or 1
    what = f"an ensemble of {members} networks" if members > 1 else "one network"
    name = Path(str(teacher.get("checkpoint") or "?")).name
    config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
    weight = config.get("distill_weight")
    share = f" (weight {float(weight):.2f})" if _is_number(weight) else ""
    return f"Distilled from {what} ({name}): trained on its probabilities{share} as well as on the labels."


def set_aside_note(meta: dict[str, Any]) -> str | None:
    """The inputs an ensemble predicts as a smaller subset (its ``route_supersets``), as one sentence;
    None when it has none. Only canonical modality names reach the text (an unreadable entry is skipped)."""
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    supersets = model.get("route_supersets") if isinstance(model.get("route_supersets"), dict) else {}
    pairs = []
    for larger, smaller in supersets.items():
        try:
            big, small = parse_subset(str(larger)), parse_subset(str(smaller))
        except ValueError:
            continue
        aside = [m.upper() for m in set_aside(big, small)]
        given = "all four" if len(big) == 4 else " + ".join(m.upper() for m in big)
        pairs.append(f"{given} without {' + '.join(aside)}")
    if not pairs:
        return None
    return (
        "Predicted as a smaller input: " + "; ".join(pairs) + " (the cross-validation scored the smaller "
        "input higher; model card)."
    )


def summary_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The top-level scalar facts of a checkpoint (target, preset, epoch, best Dice, ...)."""
    skip = {"weights_sha256", "weights_file", "format", "version"}
    return {
        k: v
        for k, v in meta.items()
        if k not in skip
        and (_is_number(v) or isinstance(v, str) or v is None)
        or (isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (str, int, float)) for x in v))
    }


__all__ = [
    "CaseChoice",
    "CheckpointError",
    "DataSource",
    "ModelChoice",
    "case_choices",
    "demo_source",
    "card_parts",
    "ensemble_rows",
    "teacher_note",
    "ensure_demo_cohort",
    "is_ready",
    "metric_tables",
    "model_card_text",
    "model_choices",
    "model_meta",
    "run_dir_of",
    "server_source",
    "store_path_for",
    "summary_fields",
    "validation_note",
]
