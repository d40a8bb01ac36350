"""Distillation (medvision.train.distillation): a student learns a teacher's probabilities beside the
labels, and a teacher that saw the student's held-out cases, or takes another input, is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvision.checkpoint import read_checkpoint_meta
from medvision.cli import main
from medvision.errors import CheckpointError
from medvision.train import rundir
from medvision.train.config import TrainConfig
from medvision.train.distillation import check_teacher
from medvision.train.run import run_training
from medvision.train.trainer import Trainer
from tests import test_trainer
from tests.test_trainer import TINY

# The trainer tests' fixtures: one torch thread (autouse) and a module's store of 4 tiny cases.
one_thread = test_trainer.one_thread
store = test_trainer.store

SPLIT = {"train": ["Tiny_000", "Tiny_001"], "val": ["Tiny_002"], "test": ["Tiny_003"]}
# Any-subset input (availability planes), as the shipped recipe; 2 steps are enough to have weights.
TEACH = dataclasses.replace(TINY, modality_dropout=0.5, epochs=1, steps_per_epoch=2, sample_slices=0)


@pytest.fixture(scope="module")
def split_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    path.write_text(json.dumps(SPLIT))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, store: Path, split_file: Path) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    config = dataclasses.replace(TEACH, split_file=str(split_file))
    assert run_training(config, run, store) == "finished"
    return rundir.checkpoint_path(run, "last")


@pytest.mark.parametrize("kind", ["combined", "bce"])
def test_student_loss_mixes_labels_and_teacher_on_the_same_input(tmp_path, store, split_file, teacher, kind):
    config = dataclasses.replace(
        TEACH, split_file=str(split_file), distill_from=str(teacher), distill_weight=0.3, distill_loss=kind
    )
    trainer = Trainer(config, store, tmp_path / "student", splits=SPLIT)
    seen: dict[str, torch.Tensor] = {}
    trainer.net.register_forward_hook(lambda m, args, out: seen.update(student_in=args[0], logits=out))
    trainer.teacher.model.register_forward_hook(lambda m, args, out: seen.update(teacher_in=args[0], t=out))
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda logits, target: calls.append((logits, target)) or loss_fn(logits, target)
    batch = next(iter(trainer.train_slices.iterate(trainer.plan.rows(1))))
    info = trainer.train_step(batch)
    # The teacher saw exactly the student's (cropped, augmented, modality-dropped) input, planes included.
    assert seen["teacher_in"].shape[1] == config.in_channels
    assert torch.equal(seen["teacher_in"], seen["student_in"])
    assert not trainer.teacher.model.training and all(
        not p.requires_grad for p in trainer.teacher.model.parameters()
    )
    # The loss is 0.7 x the labels' loss + 0.3 x the teacher's term: the same loss, or BCE alone, against
    # the teacher's probabilities.
    taught = torch.sigmoid(seen["t"].float())
    assert 0 < float(taught.min()) < float(taught.max()) < 1
    logits = seen["logits"]
    if kind == "combined":
        (logits_seen, labels), (logits_again, taught_seen) = calls
        assert logits_again is logits and torch.equal(taught_seen, taught)
        term = loss_fn(logits, taught)
    else:
        ((logits_seen, labels),) = calls
        term = F.binary_cross_entropy_with_logits(logits.float(), taught)
    assert logits_seen is logits and set(torch.unique(labels).tolist()) <= {0.0, 1.0}
    expected = 0.7 * loss_fn(logits, labels) + 0.3 * term
    assert float(info["loss"]) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_cli_trains_a_student_and_records_its_teacher(tmp_path, store, split_file, teacher):
    run = tmp_path / "student"
    args = ["train", "--data", str(store), "--run-dir", str(run), "--preset", "real"]
    args += ["--split-file", str(split_file), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2"]
    args += ["--base-filters", "4", "--depth", "2", "--patch-size", "32", "32", "--amp", "off"]
    args += ["--val-max-slices", "4", "--distill-from", str(teacher), "--distill-weight", "0.5"]
    assert main(args) == 0
    meta = read_checkpoint_meta(rundir.checkpoint_path(run, "last"))
    assert meta["distilled_from"]["checkpoint"] == str(teacher)
    assert meta["distilled_from"]["weights_sha256"] == read_checkpoint_meta(teacher)["weights_sha256"]
    assert meta["train_config"]["distill_weight"] == 0.5


def test_teacher_trained_on_a_held_out_case_is_refused(store, teacher):
    meta = read_checkpoint_meta(teacher)
    config = dataclasses.replace(TEACH, distill_from=str(teacher))
    check_teacher(meta, config, SPLIT, teacher)  # the same split: fine
    # A student that validates on a case the teacher learnt from would be scored on the teacher's memory.
    leaky = {"train": ["Tiny_002", "Tiny_003"], "val": ["Tiny_000"], "test": ["Tiny_001"]}
    with pytest.raises(CheckpointError, match=r"trained on Tiny_000, Tiny_001, which this run holds out"):
        check_teacher(meta, config, leaky, teacher)
    with pytest.raises(CheckpointError, match=str(teacher)):
        Trainer(config, store, teacher.parent.parent / "leaky", splits=leaky)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modality_dropout": None}, "its modality_input is 'availability', the run's is 'images'"),
        ({"target": "wt"}, "its target is 'regions', the run's is 'wt'"),
        ({"neighbours": 1}, "its neighbours is 0, the run's is 1"),
    ],
)
def test_teacher_with_another_input_or_output_is_refused(teacher, change, message):
    config = dataclasses.replace(TEACH, **change)
    with pytest.raises(CheckpointError, match=message):
        check_teacher(read_checkpoint_meta(teacher), config, SPLIT, teacher)


def test_distill_weight_must_be_a_share():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="distill_weight must be in"):
            TrainConfig(distill_weight=bad)


def test_models_page_note_names_the_teacher():
    from medvision.app_support.catalog import teacher_note

    meta = {
        "distilled_from": {"checkpoint": "runs/x/fold_0/checkpoints/last.safetensors", "members": 3},
        "train_config": {"distill_weight": 0.5},
    }
    assert teacher_note(meta) == (
        "Distilled from an ensemble of 3 networks (last.safetensors): trained on its probabilities "
        "(weight 0.50) as well as on the labels."
    )
    assert teacher_note({"distilled_from": {"checkpoint": "t.safetensors"}}).startswith(
        "Distilled from one network (t.safetensors)"
    )
    assert teacher_note({"distilled_from": None}) is None and teacher_note({}) is None


def test_bce_term_is_lowest_at_the_teachers_probability_and_soft_dice_is_not():
    # Why "bce" exists: against a teacher's 0.6 the BCE term is lowest where the student says 0.6, the
    # combined loss (soft Dice in it) where the student says more: it teaches a larger, surer region.
    from medvision.losses import CombinedLoss
    from medvision.train.distillation import distillation_term

    taught = torch.full((2, 3, 8, 8), 0.6)
    levels = torch.linspace(-3, 6, 181)

    def best_probability(kind: str) -> float:
        loss = CombinedLoss()
        terms = [float(distillation_term(torch.full_like(taught, c), taught, kind, loss)) for c in levels]
        return float(torch.sigmoid(levels[int(torch.tensor(terms).argmin())]))

    assert best_probability("bce") == pytest.approx(0.6, abs=0.01)
    assert best_probability("combined") > 0.7
    with pytest.raises(ValueError, match="distill_loss must be"):
        distillation_term(taught, taught, "kl", CombinedLoss())
    with pytest.raises(ValueError, match="distill_loss must be one of"):
        TrainConfig(distill_loss="kl")


def test_loss_and_distillation_flags_reach_the_config(tmp_path):
    from medvision.cli import build_parser
    from medvision.commands.train import config_from_args

    argv = ["train", "--run-dir", str(tmp_path / "r"), "--preset", "real", "--dice-weight", "0.3"]
    argv += ["--bce-weight", "0.5", "--focal-weight", "0.1"]
    argv += ["--distill-loss", "bce", "--distill-weight", "0.7"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.dice_weight, config.bce_weight, config.focal_weight) == (0.3, 0.5, 0.1)
    assert (config.distill_loss, config.distill_weight, config.distill_from) == ("bce", 0.7, None)
    plain = config_from_args(build_parser().parse_args(argv[:5]))
    assert (plain.dice_weight, plain.bce_weight, plain.focal_weight) == (0.5, 0.3, 0.2)
