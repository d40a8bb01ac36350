"""The nested study of which inputs to predict as a smaller subset (medvision.train.set_aside_study)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvision.train import set_aside_study
from medvision.train.set_aside_study import choose, load_folds, run_study, smaller_subsets

ALL_FOUR = "flair+t1+t1ce+t2"


def _fold_file(tmp_path: Path, fold: int, dice_of_subset) -> Path:
    """A fold's evaluate result: two cases, every subset, each region's Dice from ``dice_of_subset``."""
    subsets = []
    for subset in smaller_subsets(ALL_FOUR):
        rows = [
            {
                "case_id": f"f{fold}c{i}",
                **{r: {"dice": dice_of_subset(subset, fold, i)} for r in ("WT", "TC", "ET")},
            }
            for i in range(2)
        ]
        subsets.append({"modalities": subset, "per_case": rows})
    path = tmp_path / f"fold_{fold}.json"
    path.write_text(json.dumps({"subsets": subsets}))
    return path


def test_smaller_subsets_are_every_non_empty_part() -> None:
    assert smaller_subsets("t1ce+flair") == ["flair", "t1ce", "flair+t1ce"]
    assert len(smaller_subsets(ALL_FOUR)) == 15 and smaller_subsets(ALL_FOUR)[-1] == ALL_FOUR


def test_a_smaller_input_better_in_every_fold_is_chosen_and_scored_nested(tmp_path: Path) -> None:
    # All four is worse than all four without T1 in every fold (0.6 against 0.8); every other subset 0.5.
    def dice(subset: str, fold: int, case: int) -> float:
        return {ALL_FOUR: 0.6, "flair+t1ce+t2": 0.8}.get(subset, 0.5)

    folds = load_folds([_fold_file(tmp_path, f, dice) for f in range(3)])
    study = run_study(folds, margin=0.01)
    row = study["subsets"][ALL_FOUR]
    assert row["fold_choices"] == ["flair+t1ce+t2"] * 3 and row["final"] == "flair+t1ce+t2"
    assert row["plain"]["WT"] == pytest.approx(0.6) and row["nested"]["WT"] == pytest.approx(0.8)
    assert study["subsets"]["flair"]["final"] == "flair"  # nothing smaller: itself
    assert study["subsets"]["flair+t1ce+t2"]["final"] == "flair+t1ce+t2"
    assert "--route-superset flair+t1+t1ce+t2=flair+t1ce+t2" in set_aside_study.format_study(study)


def test_a_gain_in_one_fold_only_is_judged_on_the_others(tmp_path: Path) -> None:
    # Without T1 is far better in fold 0's cases and a little worse elsewhere: fold 0's choice, made on
    # folds 1 and 2, keeps all four, so the nested figure does not see fold 0's gain; the margin matters.
    def dice(subset: str, fold: int, case: int) -> float:
        if subset == "flair+t1ce+t2":
            return 0.9 if fold == 0 else 0.58
        return 0.6 if subset == ALL_FOUR else 0.1

    folds = load_folds([_fold_file(tmp_path, f, dice) for f in range(3)])
    row = run_study(folds)["subsets"][ALL_FOUR]
    assert row["fold_choices"] == [ALL_FOUR, "flair+t1ce+t2", "flair+t1ce+t2"]
    assert row["nested"]["WT"] == pytest.approx((0.6 * 2 + 0.58 * 4) / 6)
    assert choose(folds, [0, 1, 2], ALL_FOUR, margin=0.2) == ALL_FOUR
    assert choose(folds, [0, 1, 2], ALL_FOUR, margin=0.01) == "flair+t1ce+t2"


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [_fold_file(tmp_path, f, lambda s, f, c: 0.5) for f in range(2)]
    out = tmp_path / "study.json"
    assert set_aside_study.main([*map(str, paths), "--out", str(out)]) == 0
    assert "nothing set aside" in capsys.readouterr().out
    assert json.loads(out.read_text())["folds"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert set_aside_study.main([str(paths[0]), str(bad)]) == 2
    assert "bad.json: no 'subsets' list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        set_aside_study.main([str(paths[0])])
