"""Any subset of the four modalities: modality dropout in training, availability planes at inference,
readers and `predict` that accept 1-4 modalities, and models without the planes refusing clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvision.checkpoint import load_checkpoint, save_checkpoint
from medvision.cli import main
from medvision.data.case import MODALITIES
from medvision.data.modality_sets import SUBSETS, keep_only, parse_subset, subset_name
from medvision.data.readers import load_case, read_brats_folder, read_nifti_files
from medvision.data.splits import make_folds
from medvision.data.store import prepare_store
from medvision.errors import InputDataError
from medvision.inference import Predictor
from medvision.inference.spec import model_spec
from medvision.models import AttentionUNet
from medvision.train import rundir
from medvision.train.config import TrainConfig
from medvision.train.modality_dropout import (
    apply_availability,
    draw_availability,
    drop_modalities,
    subset_weights,
)
from medvision.train.run import run_training
from tests.test_predict_cli import CASE_ID, write_case_folder
from tests.test_trainer import TINY, tiny_case


def test_fifteen_subsets_and_names():
    assert len(SUBSETS) == 15 and len(set(SUBSETS)) == 15
    assert SUBSETS[0] == ("flair",) and SUBSETS[-1] == MODALITIES
    assert subset_name(("t1ce", "flair")) == "flair+t1ce"
    assert parse_subset("T1CE, flair") == ("flair", "t1ce")
    with pytest.raises(ValueError, match="unknown modality set"):
        parse_subset("flair+dwi")


def test_dropout_zeroes_dropped_channels_in_every_neighbour_block():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 12, 8, 8) + 1.0  # 2.5-D: 3 blocks of 4 modalities, no zeros
    out = drop_modalities(images, 1.0, generator)
    assert out.shape == (64, 16, 8, 8)
    planes = out[:, 12:, 0, 0]
    assert torch.all(out[:, 12:] == planes[:, :, None, None]), "availability planes are constant"
    for block in range(3):
        present = out[:, block * 4 : (block + 1) * 4].amax(dim=(2, 3)) > 0
        assert torch.equal(present, planes.bool()), "a channel is zero exactly when its modality is dropped"
    assert planes.sum(dim=1).min() >= 1, "never all four dropped"
    drawn = {tuple(row.tolist()) for row in draw_availability(2000, 1.0, generator, torch.device("cpu"))}
    assert len(drawn) == 15


def test_no_dropout_keeps_everything_and_adds_ones():
    images = torch.rand(5, 4, 6, 6)
    out = drop_modalities(images, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :4], images) and torch.all(out[:, 4:] == 1)
    with pytest.raises(ValueError, match="multiple of 4"):
        apply_availability(torch.rand(2, 5, 4, 4), torch.ones(2, 4))


def test_inverse_size_weighting_draws_single_modalities_more_often():
    assert float(subset_weights("uniform").sum()) == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    drawn = draw_availability(20000, 1.0, generator, torch.device("cpu"), "inverse-size")
    sizes = drawn.sum(dim=1)
    # 1/k weights: singles 4 / (4 + 6/2 + 4/3 + 1/4) = 0.466, all four 0.029 (uniform: 0.267 and 0.067).
    assert float((sizes == 1).float().mean()) == pytest.approx(0.466, abs=0.015)
    assert float((sizes == 4).float().mean()) == pytest.approx(0.029, abs=0.006)
    t1ce_alone = (drawn == torch.tensor([0.0, 0.0, 1.0, 0.0])).all(dim=1)
    assert float(t1ce_alone.float().mean()) == pytest.approx(0.1165, abs=0.01)
    assert (sizes >= 1).all()
    # "uniform" makes the draws it made before weightings existed (a subset index by randint, then the
    # coin for dropping), so the shipped recipe trains the same for the same seed.
    drawn = draw_availability(64, 0.5, torch.Generator().manual_seed(3), torch.device("cpu"), "uniform")
    generator = torch.Generator().manual_seed(3)
    choice = torch.randint(len(SUBSETS), (64,), generator=generator)
    dropped = torch.rand(64, generator=generator) < 0.5
    for row, index, drop in zip(drawn, choice, dropped, strict=True):
        expected = [float(m in SUBSETS[index]) for m in MODALITIES] if drop else [1.0] * 4
        assert row.tolist() == expected
    with pytest.raises(ValueError, match="modality_subsets"):
        TrainConfig(modality_dropout=0.5, modality_subsets="singles")
    with pytest.raises(ValueError, match="weighting"):
        subset_weights("singles")


def test_a_named_subset_draws_only_that_subset():
    """``--modality-subsets t1ce`` with dropout 1: every slice is T1ce alone (a network for that input);
    with dropout 0.5 the other half keep all four."""
    assert subset_weights("t1ce").tolist() == [float(s == ("t1ce",)) for s in SUBSETS]
    drawn = draw_availability(2000, 1.0, torch.Generator().manual_seed(0), torch.device("cpu"), "t1ce")
    assert (drawn == torch.tensor([0.0, 0.0, 1.0, 0.0])).all()
    drawn = draw_availability(2000, 0.5, torch.Generator().manual_seed(1), torch.device("cpu"), "flair+t1ce")
    pair = (drawn == torch.tensor([1.0, 0.0, 1.0, 0.0])).all(dim=1)
    full = (drawn == 1.0).all(dim=1)
    assert bool((pair | full).all())
    assert float(pair.float().mean()) == pytest.approx(0.5, abs=0.05)
    assert TrainConfig(modality_dropout=1.0, modality_subsets="flair,t1ce").modality_subsets == "flair,t1ce"
    with pytest.raises(ValueError, match="subset such as 't1ce'"):
        TrainConfig(modality_dropout=1.0, modality_subsets="t1cx")


def test_a_network_for_one_subset_is_validated_on_that_subset(tmp_path: Path):
    """Its validation Dice, its best checkpoint and the Models page's figure are about the input it gets in
    use (T1ce alone), not all four modalities, which it never sees."""
    assert TrainConfig(modality_dropout=1.0, modality_subsets="t1ce").val_modalities == ("t1ce",)
    assert TrainConfig(modality_dropout=0.5, modality_subsets="t1ce").val_modalities == MODALITIES
    assert TrainConfig(modality_dropout=1.0).val_modalities == MODALITIES  # every subset: all four
    cases = [tiny_case(f"Tiny_{i:03d}", i) for i in range(4)]
    store = prepare_store(cases, tmp_path / "store.h5", workers=1, progress=False)
    run = tmp_path / "run"
    config = dataclasses.replace(
        TINY, modality_dropout=1.0, modality_subsets="t1ce", sample_slices=1, val_max_slices=None
    )
    assert run_training(config, run, store) == "finished"
    model, meta = load_checkpoint(rundir.checkpoint_path(run, "last"))
    assert meta["val_modalities"] == "t1ce"
    # The recorded validation is the T1ce-only one: scoring the same network on all four gives another loss.
    from medvision.train.distributed import DistContext
    from medvision.train.evaluation import checkpoint_engine
    from medvision.train.validation import Validation

    engine, _ = checkpoint_engine(rundir.checkpoint_path(run, "last"), "cpu", "off", "torch", 8)
    loss = lambda logits, truth: torch.nn.functional.binary_cross_entropy_with_logits(logits, truth)  # noqa: E731
    ctx = DistContext()
    scored = {
        given: Validation(store, meta["split"]["val"], target="regions", ctx=ctx, available=given).run(
            engine, loss
        )
        for given in (("t1ce",), MODALITIES)
    }
    assert scored[("t1ce",)]["val_loss"] != pytest.approx(scored[MODALITIES]["val_loss"], rel=1e-6)


def test_spec_reads_availability_from_channels_or_metadata():
    assert model_spec(AttentionUNet(8, 3, 4, 2, 0.1), {}).availability
    assert not model_spec(AttentionUNet(4, 3, 4, 2, 0.1), {}).availability
    spec = model_spec(AttentionUNet(16, 3, 4, 2, 0.1), {"modality_input": "availability", "neighbours": 1})
    assert spec.availability and spec.neighbours == 1 and spec.image_channels == 12
    assert not model_spec(AttentionUNet(12, 3, 4, 2, 0.1), {}).availability


def test_readers_take_a_subset_only_when_asked(tmp_path: Path):
    folder = write_case_folder(tmp_path)
    for name in ("t1", "t2"):
        (folder / f"{CASE_ID}_{name}.nii.gz").unlink()
    with pytest.raises(InputDataError, match="missing modality t1"):
        read_brats_folder(folder)
    case = read_brats_folder(folder, allow_missing=True)
    assert case.available == ("flair", "t1ce") and case.missing == ("t1", "t2")
    assert case.image[1].max() == 0 and case.image[3].max() == 0 and case.image[0].max() > 0
    assert load_case(folder, allow_missing=True).available == ("flair", "t1ce")
    only_t1ce = read_nifti_files({"t1ce": folder / f"{CASE_ID}_t1ce.nii.gz"}, allow_missing=True)
    assert only_t1ce.available == ("t1ce",) and only_t1ce.case_id == CASE_ID
    for name in ("flair", "t1ce"):
        (folder / f"{CASE_ID}_{name}.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), folder / f"{CASE_ID}_seg.nii.gz")
    with pytest.raises(InputDataError, match="missing modality"):
        read_brats_folder(folder, allow_missing=True)


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory) -> Path:
    cases = [tiny_case(f"Tiny_{i:03d}", i) for i in range(4)]
    store = prepare_store(cases, tmp_path_factory.mktemp("store") / "store.h5", workers=1, progress=False)
    run = tmp_path_factory.mktemp("run") / "run"
    config = dataclasses.replace(TINY, modality_dropout=0.5, sample_slices=0)
    assert run_training(config, run, store) == "finished"
    return run


def test_training_with_dropout_records_planes_and_predicts_every_subset(subset_run: Path):
    model, meta = load_checkpoint(rundir.checkpoint_path(subset_run, "last"))
    assert meta["modality_input"] == "availability" and model.config["in_channels"] == 8
    predictor = Predictor(rundir.checkpoint_path(subset_run, "last"), device="cpu", backend="torch")
    case = tiny_case("Tiny_009", 9)
    labels = {}
    for subset in (("flair",), ("t1ce",), ("flair", "t1ce"), MODALITIES):
        given = dataclasses.replace(case, image=keep_only(case.image, subset), available=subset)
        labels[subset] = predictor.predict_volume(given).label
        assert labels[subset].shape == case.shape
    assert predictor.engine.spec.availability


def test_model_without_planes_refuses_a_subset(tmp_path: Path):
    path = tmp_path / "four.safetensors"
    save_checkpoint(path, AttentionUNet(4, 3, 4, 2, 0.1), {"target": "regions"})
    case = tiny_case("Tiny_001", 1)
    flair_only = dataclasses.replace(case, image=keep_only(case.image, ("flair",)), available=("flair",))
    with pytest.raises(InputDataError, match="missing modality t1, t1ce, t2: this model needs all four"):
        Predictor(path, device="cpu", backend="torch").predict_volume(flair_only)


def test_predict_cli_with_a_subset(tmp_path: Path, subset_run: Path, capsys):
    folder = write_case_folder(tmp_path / "in")
    (folder / f"{CASE_ID}_t2.nii.gz").unlink()
    checkpoint = rundir.checkpoint_path(subset_run, "last")
    out = tmp_path / "flair_t1ce.nii.gz"
    code = main(
        [
            "predict",
            str(folder),
            "-o",
            str(out),
            "--checkpoint",
            str(checkpoint),
            "--modalities",
            "flair+t1ce",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "modalities used: flair, t1ce" in captured.out and out.exists()
    code = main(
        [
            "predict",
            str(folder),
            "-o",
            str(tmp_path / "x.nii.gz"),
            "--checkpoint",
            str(checkpoint),
            "--modalities",
            "t2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "asks for t2, which the input does not have" in err


def test_predict_cli_warns_when_the_subset_mostly_misses_the_tumour(tmp_path: Path, subset_run: Path, capsys):
    import json
    import shutil

    folder = write_case_folder(tmp_path / "in")
    checkpoint = rundir.checkpoint_path(subset_run, "last")
    mine = tmp_path / "model.safetensors"
    shutil.copy(checkpoint, mine)
    meta = json.loads(checkpoint.with_suffix(".json").read_text())
    meta["weights_file"] = mine.name
    row = {"cases": 9, "TC": 0.1, "ET": 0.1}
    meta["cross_validation"] = {"subsets": {"t1ce": {**row, "WT": 0.13}, "flair+t1ce": {**row, "WT": 0.73}}}
    mine.with_suffix(".json").write_text(json.dumps(meta))
    args = ["predict", str(folder), "-o", str(tmp_path / "t1ce.nii.gz"), "--checkpoint", str(mine)]
    code = main([*args, "--modalities", "t1ce"])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "t1ce.nii.gz").exists()
    assert "warning:" in err and "mostly misses the tumour" in err and "Adding FLAIR gives 0.73" in err
    assert main([*args, "--modalities", "flair+t1ce"]) == 0
    assert "mostly misses" not in capsys.readouterr().err


def test_folds_hold_out_each_real_case_once():
    ids = [f"Real_{i}" for i in range(9)] + [f"Synth_{i}" for i in range(4)]
    folds = make_folds(ids, 3, seed=0, train_only=[i for i in ids if i.startswith("Synth")])
    held = [c for fold in folds for c in fold["val"]]
    assert sorted(held) == sorted(i for i in ids if i.startswith("Real")) and len(held) == 9
    for fold in folds:
        assert not set(fold["val"]) & set(fold["train"]) and {f"Synth_{i}" for i in range(4)} <= set(
            fold["train"]
        )
    with pytest.raises(ValueError, match="k"):
        make_folds(ids[:2], 3)
