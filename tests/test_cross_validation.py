"""Cross-validation plumbing, tried as a new user would: one store from several datasets, k folds of it,
and training on a fixed fold."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medvision.cli import main
from medvision.data.splits import load_splits
from medvision.data.store import SliceStore, prepare_store
from medvision.errors import MedVisionError
from medvision.train import rundir
from medvision.train.run import run_training
from tests.test_predict_cli import CASE_ID, write_case_folder
from tests.test_trainer import TINY, tiny_case


def _renamed_case(root: Path, case_id: str) -> Path:
    folder = write_case_folder(root)
    renamed = folder.with_name(case_id)
    folder.rename(renamed)
    for path in renamed.iterdir():
        path.rename(path.with_name(path.name.replace(CASE_ID, case_id)))
    return renamed


def test_one_store_from_several_datasets(tmp_path: Path, capsys):
    real, phantoms = tmp_path / "real", tmp_path / "phantoms"
    _renamed_case(real, "Real_001")
    _renamed_case(phantoms, "Synth_001")
    store = tmp_path / "mix.h5"
    assert (
        main(["prepare", str(real), str(phantoms), "--out", str(store), "--no-progress", "--workers", "1"])
        == 0
    )
    with SliceStore(store) as opened:
        assert sorted(opened.case_ids) == ["Real_001", "Synth_001"]
        assert str(real.resolve()) in opened.source and str(phantoms.resolve()) in opened.source
    assert "2 cases" in capsys.readouterr().out


def test_folds_command_and_training_on_a_fold(tmp_path: Path, capsys):
    cases = [tiny_case(f"Real_{i}", i) for i in range(3)] + [tiny_case("Synth_0", 7)]
    store = prepare_store(cases, tmp_path / "store.h5", workers=1, progress=False)
    out = tmp_path / "folds"
    assert main(["folds", str(store), "-k", "3", "--train-only", "Synth_*", "--out", str(out)]) == 0
    folds = [load_splits(out / f"fold_{i}.json") for i in range(3)]
    assert sorted(c for f in folds for c in f["val"]) == ["Real_0", "Real_1", "Real_2"]
    assert all("Synth_0" in f["train"] and len(f["train"]) == 3 and f["test"] == [] for f in folds)
    run = tmp_path / "run"
    config = dataclasses.replace(TINY, split_file=str(out / "fold_1.json"), epochs=1, sample_slices=0)
    assert run_training(config, run, store) == "finished"
    assert load_splits(run / rundir.SPLITS_FILE)["val"] == folds[1]["val"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["Real_0", "Nobody_9"], "val": ["Real_1"]}))
    with pytest.raises(MedVisionError, match="names cases the store does not hold: Nobody_9"):
        run_training(dataclasses.replace(config, split_file=str(bad)), tmp_path / "run2", store)
    code = main(["folds", str(store), "-k", "5", "--out", str(out)])
    assert code == 2 and "need 2 <= k <= 4" in capsys.readouterr().err
