"""AppTest flows of the Train and Models pages around a run's life: starting, stopped early, stopped
before its first validation, and a "best" Dice made of regions that had nothing to find.

The workspace and the app come from test_app's fixtures (a tiny synthetic cohort in a temporary
MEDVISION_HOME). Runs that only need to exist on disk are written with the trainer's own writers; the
launch flows start a stand-in process that sleeps like a trainer still importing, so the timing of
"Stop before the first status" does not depend on how fast this machine starts torch.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import test_app
from streamlit.testing.v1 import AppTest
from test_app import _open, _values
from tiny_checkpoint import save_tiny_checkpoint

from medvision.app_support import launcher
from medvision.train import rundir

# test_app's workspace and app fixtures, registered here under the same names (this module gets its own
# module-scoped workspace).
home = test_app.home
app = test_app.app

NOTE = (
    "TC, ET: no tumour of this kind in the validation data and none predicted; "
    "counted as 1.000 by the BraTS convention."
)


def _runs(at: AppTest) -> Path:
    return at.session_state["mv_settings"].workspace.runs


def _launch(at: AppTest, name: str) -> int:
    at.text_input(key="train_run_name").set_value(name)
    at.button(key="train_launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    [message] = [s for s in _values(at.success) if f"Started run {name}" in s]
    return int(re.search(r"process (\d+)", message).group(1))


def _status(at: AppTest) -> str:
    [line] = [m for m in _values(at.markdown) if m.startswith("**Status:**")]
    return line


def _row(at: AppTest, name: str) -> dict:
    table = at.dataframe[-1].value
    return table.loc[table["run"] == name].iloc[0].to_dict()


def _traces(chart) -> list[dict]:
    """The data traces of a plotly chart element (its figure JSON)."""
    return json.loads(chart.proto.spec)["data"]


def _checkpoint(run_dir: Path, kind: str, **meta) -> None:
    save_tiny_checkpoint(rundir.checkpoint_path(run_dir, kind), kind=kind, regions=["WT", "TC", "ET"], **meta)


def _select_model(at: AppTest, label: str) -> None:
    at.run()  # the sidebar lists the runs written since the last run
    at.selectbox(key="model_label").set_value(label).run()
    assert not at.exception, [e.value for e in at.exception]


def test_a_starting_run_reads_starting_then_running_in_the_run_list(app, slow_start):
    _open(app, "pages/train.py")
    pid = _launch(app, "slow-start")
    run_dir = _runs(app) / "slow-start"
    slow_start.append(run_dir)
    assert "`starting`" in _status(app)
    row = _row(app, "slow-start")
    assert (row["state"], row["progress"], row["best mean val Dice"]) == ("starting", "–", "–")
    assert not {"None", "unknown", "nan"} & {str(v) for v in row.values()}
    assert not app.button(key="train_stop").disabled and app.button(key="train_resume").disabled

    # What the trainer writes once it knows its steps shows on the next poll.
    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, {"train": {"preset": "demo", "epochs": 16}})
    rundir.write_status(run_dir, "running", pid=pid, epoch=0, step=5, total_steps=1600)
    app.run()
    assert not app.exception
    assert "`running · epoch 1/16 · step 5/1600`" in _status(app)
    row = _row(app, "slow-start")
    assert (row["state"], row["progress"]) == ("running", "epoch 1/16 · step 5/1600")


def test_stop_while_starting_is_a_stopped_run_without_an_error(app, slow_start):
    _open(app, "pages/train.py")
    _launch(app, "stop-early")
    run_dir = _runs(app) / "stop-early"
    slow_start.append(run_dir)
    app.button(key="train_stop").click().run()
    assert not app.exception
    assert "Asked stop-early to stop while it was starting." in _values(app.info), _values(app.warning)
    deadline = time.time() + 20
    while launcher.is_busy(run_dir) and time.time() < deadline:
        time.sleep(0.1)
    app.run()
    assert not app.exception
    assert not app.error, _values(app.error)  # not "ended before it started training (exit status -15)"
    assert "`stopped · before training started`" in _status(app)
    assert "Stopped before its first checkpoint; start a new run." in _values(app.info)
    assert app.button(key="train_resume").disabled and app.button(key="train_stop").disabled
    row = _row(app, "stop-early")
    assert (row["state"], row["error"]) == ("stopped", "")


def test_a_run_stopped_before_its_first_validation(app):
    run_dir = _runs(app) / "stopped-at-40"
    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, {"train": {"preset": "demo", "epochs": 16}})
    (run_dir / rundir.STATE_FILE).write_bytes(b"saved state")
    _checkpoint(run_dir, "last", epoch=0, step=40, total_steps=1600, val=None, train_config={"epochs": 16})
    rundir.write_status(run_dir, "stopped", epoch=0, step=40, total_steps=1600)
    # One logged step: the curves must still show it.
    rundir.append_metrics(
        run_dir,
        {
            "kind": "step",
            "epoch": 1,
            "step": 40,
            "total_steps": 1600,
            "loss": 0.8,
            "lr": 1e-3,
            "slices_per_s": 4.0,
        },
    )

    _select_model(app, "Run stopped-at-40 (stopped)")
    _open(app, "pages/models.py")
    assert not app.error, _values(app.error)
    assert (
        "No validation yet: the run was stopped at step 40 of 1600, before its first validation (it runs "
        "at the end of each epoch). Resume it on the Train page to get one."
    ) in _values(app.info)
    charts = app.get("plotly_chart")
    assert len(charts) == 4
    for chart in (charts[0], charts[2], charts[3]):  # loss, learning rate, throughput: one point each
        [trace] = _traces(chart)
        assert trace["mode"] == "lines+markers" and len(trace["x"]) == 1

    _open(app, "pages/train.py")
    app.selectbox(key="train_selected_run").set_value("stopped-at-40").run()
    assert not app.exception and not app.error
    assert "`stopped · epoch 1/16 · step 40/1600`" in _status(app)
    assert "Stopped at step 40; Resume continues from its last checkpoint." in _values(app.info)
    assert not app.button(key="train_resume").disabled


def test_a_best_dice_made_of_empty_regions_says_so(app):
    run_dir = _runs(app) / "empty-regions"
    val = {
        "WT": {"dice": 0.0, "iou": 0.0, "dice_slice": 0.0, "dice_small": 0.0},
        "TC": {"dice": 1.0, "iou": 1.0, "dice_slice": None, "dice_small": None},
        "ET": {"dice": 1.0, "iou": 1.0, "dice_slice": None, "dice_small": None},
    }
    meta = dict(
        epoch=1,
        step=1,
        total_steps=1,
        val=val,
        val_mean_dice=2 / 3,
        best_val_mean_dice=2 / 3,
        train_config={"epochs": 1},
    )
    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, {"train": {"preset": "demo", "epochs": 1}})
    _checkpoint(run_dir, "best", **meta)
    _checkpoint(run_dir, "last", **meta)
    rundir.append_metrics(
        run_dir,
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 1,
            "total_steps": 1,
            "val_loss": 0.8,
            "val": val,
            "val_mean_dice": 2 / 3,
            "best_val_mean_dice": 2 / 3,
        },
    )
    rundir.write_status(run_dir, "finished", epoch=1, step=1, total_steps=1, best_val_mean_dice=2 / 3)

    _open(app, "pages/train.py")
    app.selectbox(key="train_selected_run").set_value("empty-regions").run()
    assert not app.exception and not app.error
    assert "`finished · epoch 1/1 · step 1/1`" in _status(app)
    assert [m.value for m in app.metric if m.label == "Best mean val Dice"] == ["0.667"]
    assert "Best validation (epoch 1): WT 0.000 · TC 1.000 · ET 1.000" in _values(app.caption)
    assert NOTE in _values(app.info)
    assert _row(app, "empty-regions")["best mean val Dice"] == "0.667 (TC, ET: no tumour in validation)"
    [dice_chart] = [c for c in app.get("plotly_chart") if '"Validation Dice"' in c.proto.spec]
    assert [t["mode"] for t in _traces(dice_chart)] == ["lines+markers"] * 3

    _select_model(app, "Run empty-regions")
    _open(app, "pages/models.py")
    assert not app.error
    assert NOTE in _values(app.info)
    assert "Validation after epoch 1 of 1 (step 1 of 1)." in _values(app.caption)
    assert any(c.startswith("The best mean includes TC, ET at 1.000") for c in _values(app.caption))


def test_the_smallest_settings_train_and_show_per_region_validation(app):
    """A real run of one step (batch 1, base filters 2): the page names each region's Dice and explains
    any that are 1.000 only because there was nothing to find."""
    _open(app, "pages/train.py")
    app.text_input(key="train_run_name").set_value("smallest")
    for key, value in {
        "epochs": 1,
        "batch_size": 1,
        "base_filters": 2,
        "steps_per_epoch": 1,
        "val_max_slices": 4,
    }.items():
        app.number_input(key=f"train_{key}").set_value(value)
    app.button(key="train_launch").click().run()
    assert any("Started run smallest" in s for s in _values(app.success)), _values(app.error)
    run_dir = _runs(app) / "smallest"
    deadline = time.time() + 120
    while launcher.is_busy(run_dir) and time.time() < deadline:
        assert "None" not in _status(app) and "unknown" not in _status(app)
        time.sleep(1)
        app.run()
        assert not app.exception
    app.run()
    assert "`finished · epoch 1/1 · step 1/1`" in _status(app), (_values(app.error), _values(app.code))
    assert not app.error
    [record] = rundir.read_metrics(run_dir, "epoch")
    shown = " · ".join(f"{k} {v['dice']:.3f}" for k, v in record["val"].items())
    assert f"Best validation (epoch 1): {shown}" in _values(app.caption)
    from medvision.app_support import figures

    empty = figures.empty_regions(record["val"])
    assert (figures.empty_regions_note(empty) in _values(app.info)) == bool(empty)
    # One step and one validation: every curve is a single point, drawn as a marker.
    traces = [t for chart in app.get("plotly_chart") for t in _traces(chart)]
    assert {"val loss", "WT Dice", "TC Dice", "ET Dice"} <= {t["name"] for t in traces}
    assert all(t["mode"] == "lines+markers" and len(t["x"]) == 1 for t in traces)
