"""Unit tests of medvision.app_support: the app's pure-Python helpers (no Streamlit involved)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvision.app_support import catalog, explore, figures, launcher, mesh, render, uploads, viewer
from medvision.app_support.workspace import PathNotAllowedError, Workspace, confine, settings_from_env
from medvision.data.case import Case, case_to_nifti_axes
from medvision.errors import InputDataError, RunBusyError
from medvision.train.config import TrainConfig

# ------------------------------------------------------------------------------------------ helpers


def _case(shape=(12, 20, 24), with_label=True, seed=0) -> Case:
    rng = np.random.default_rng(seed)
    image = np.zeros((4,) + shape, dtype=np.float32)
    image[:, 2:-2, 3:-3, 3:-3] = rng.integers(100, 1000, size=(4, shape[0] - 4, shape[1] - 6, shape[2] - 6))
    label = None
    if with_label:
        label = np.zeros(shape, dtype=np.uint8)
        label[4:8, 6:14, 8:16] = 2
        label[5:7, 8:12, 10:14] = 1
        label[6, 9:11, 11:13] = 4
    return Case("Demo_001", image, np.diag([-1.0, -1.0, 1.0, 1.0]), (1.0, 1.0, 1.0), label)


def _write_nifti(path: Path, volume: np.ndarray, dtype=np.int16) -> Path:
    nib.save(nib.Nifti1Image(case_to_nifti_axes(volume).astype(dtype), np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    return path


# ------------------------------------------------------------------------------------------ render


def test_take_slice_orients_each_view_from_the_affine_and_checks_range():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (D, H, W) = (k, i, j)
    lps = render.DisplayFrame.from_affine(np.diag([-1.0, -1.0, 1.0, 1.0]))  # i -> left, j -> posterior
    axial = render.take_slice(volume, "axial", 1, lps)
    assert axial.shape == (4, 3)  # rows j from anterior (j=0) down, columns i from right (i=0) to left
    assert axial[0, 0] == volume[1, 0, 0] and axial[3, 2] == volume[1, 2, 3]
    coronal = render.take_slice(volume, "coronal", 2, lps)
    assert coronal.shape == (2, 3) and coronal[0, 0] == volume[1, 0, 2]  # superior (k=1) on top
    sagittal = render.take_slice(volume, "sagittal", 0, lps)
    assert sagittal.shape == (2, 4) and sagittal[1, 3] == volume[0, 0, 3]  # anterior (j=0) on the left
    ras = render.DisplayFrame.from_affine(np.eye(4))  # i -> right, j -> anterior: both flipped
    assert render.take_slice(volume, "axial", 1, ras)[0, 0] == volume[1, 2, 3]
    assert render.view_shape(volume.shape, "coronal", lps) == 4
    assert render.pixel_spacing((3.0, 1.0, 2.0), "sagittal", lps) == (3.0, 2.0)
    with pytest.raises(IndexError):
        render.take_slice(volume, "axial", 2, lps)
    with pytest.raises(ValueError, match="unknown view"):
        render.take_slice(volume, "oblique", 0, lps)


def test_window_maps_level_and_width_to_grey():
    window = render.Window(level=100.0, width=200.0)
    grey = render.to_gray(np.array([[-50.0, 0.0, 100.0, 200.0, 500.0]]), window)
    assert grey.tolist() == [[0, 0, 127, 255, 255]]
    with pytest.raises(ValueError):
        render.Window(level=0.0, width=0.0)
    auto = render.auto_window(np.concatenate([np.zeros(1000), np.linspace(10, 20, 1000)]))
    assert 10.0 <= auto.low < auto.high <= 20.0


def test_overlay_colours_only_the_chosen_labels():
    grey = np.full((2, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, 2], [4, 0, 2]], dtype=np.uint8)
    rgb = render.overlay(grey, label, labels_shown=(1, 4), opacity=1.0)
    assert tuple(rgb[0, 1]) == render.LABEL_COLOURS[1]
    assert tuple(rgb[1, 0]) == render.LABEL_COLOURS[4]
    assert tuple(rgb[0, 2]) == (100, 100, 100)  # ED hidden
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    half = render.overlay(grey, label, opacity=0.5)
    assert tuple(half[0, 2]) == tuple(int(0.5 * 100 + 0.5 * c) for c in render.LABEL_COLOURS[2])
    with pytest.raises(ValueError):
        render.overlay(grey, label, labels_shown=(3,))
    with pytest.raises(ValueError):
        render.overlay(grey, label[:1], opacity=0.5)


def test_error_map_counts_and_colours():
    grey = np.zeros((2, 2), dtype=np.uint8)
    pred = np.array([[1, 1], [0, 0]], dtype=bool)
    truth = np.array([[1, 0], [1, 0]], dtype=bool)
    rgb, counts = render.error_map(grey, pred, truth, opacity=1.0)
    assert counts == {"TP": 1, "FP": 1, "FN": 1}
    assert tuple(rgb[0, 0]) == render.ERROR_COLOURS["TP"]
    assert tuple(rgb[0, 1]) == render.ERROR_COLOURS["FP"]
    assert tuple(rgb[1, 0]) == render.ERROR_COLOURS["FN"]
    assert tuple(rgb[1, 1]) == (0, 0, 0)


def test_heatmap_keeps_grey_where_map_is_zero_and_png_roundtrips():
    grey = np.full((4, 4), 50, dtype=np.uint8)
    values = np.zeros((4, 4), dtype=np.float32)
    values[0, 0] = 1.0
    rgb = render.heatmap(grey, values, opacity=1.0)
    assert tuple(rgb[3, 3]) == (50, 50, 50) and tuple(rgb[0, 0]) == (255, 255, 0)
    data = render.png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert render.png_data_uri(rgb).startswith("data:image/png;base64,")


# ------------------------------------------------------------------------------------------ figures


def test_slice_figure_uses_one_png_image_with_pixel_aspect():
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    fig = figures.slice_figure(rgb, pixel_mm=(2.0, 1.0), title="x")
    trace = fig.data[0]
    assert trace.type == "image" and trace.source.startswith("data:image/png") and trace.dy == 2.0
    assert fig.layout.yaxis.scaleanchor == "x"


def test_training_figures_and_progress_from_metrics_records():
    metrics = [
        {
            "kind": "step",
            "epoch": 1,
            "step": 5,
            "total_steps": 20,
            "loss": 0.9,
            "lr": 1e-3,
            "slices_per_s": 50.0,
            "eta_s": 30.0,
        },
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 10,
            "val_loss": 0.7,
            "val": {"WT": {"dice": 0.5}, "ET": {"dice": 0.2}},
        },
        {
            "kind": "step",
            "epoch": 2,
            "step": 15,
            "total_steps": 20,
            "loss": 0.5,
            "lr": 5e-4,
            "slices_per_s": 60.0,
            "eta_s": 10.0,
        },
        {
            "kind": "epoch",
            "epoch": 2,
            "step": 20,
            "val_loss": 0.6,
            "val": {"WT": {"dice": 0.7}, "ET": {"dice": 0.1}},
        },
    ]
    assert [t.name for t in figures.loss_figure(metrics).data] == ["train loss", "val loss"]
    dice = figures.dice_figure(metrics)
    assert {t.name for t in dice.data} == {"WT Dice", "ET Dice"}
    assert list(dice.data[0].y) == [0.5, 0.7]
    progress = figures.latest_progress(
        metrics, {"state": "running", "step": 15, "total_steps": 20, "epoch": 1}
    )
    assert progress["fraction"] == 0.75 and progress["eta_s"] == 10.0
    assert progress["best_dice"] == {"WT": 0.7, "ET": 0.2}
    assert figures.format_duration(3725) == "1h 02m" and figures.format_duration(None) == "–"


def test_dice_strip_marks_current_slice_and_empty_slices():
    fig = figures.dice_strip(np.array([np.nan, 0.5, 1.0]), current=1)
    assert list(fig.data[0].y) == [0.0, 0.5, 1.0]
    assert fig.layout.shapes[0].x0 == 1


# ------------------------------------------------------------------------------------------ mesh


def test_region_meshes_are_nested_surfaces_in_mm():
    case = _case()
    traces = mesh.region_meshes(case.label, np.diag([1.0, 1.0, 2.0, 1.0]), step=1)  # k spacing 2 mm
    assert [t.name for t in traces] == ["WT", "TC", "ET"]
    wt = traces[0]
    # WT spans k 4..7 -> z from ~4*2 to ~8*2 mm.
    assert min(wt.z) >= 6.0 and max(wt.z) <= 16.0
    assert len(wt.i) > 0 and max(wt.i) < len(wt.x)
    assert mesh.region_meshes(np.zeros((8, 8, 8), np.uint8), np.eye(4)) == []
    small = mesh.downsample_mask(np.pad(np.ones((1, 1, 1), bool), 2), 2)
    assert small.shape == (3, 3, 3) and small.sum() == 1
    assert mesh.brain_mesh(case.image, case.affine, step=2) is not None
    lps = mesh.region_meshes(case.label, case.affine, step=1)[0]  # i grows toward left: x = -i
    assert max(lps.x) <= -5.0 and min(lps.x) >= -15.0


# ------------------------------------------------------------------------------------------ workspace


def test_settings_from_env_and_path_confinement(tmp_path):
    home = tmp_path / "home"
    data = tmp_path / "data"
    (data / "cases").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"MEDVISION_HOME": str(home), "MEDVISION_DATA_ROOTS": str(data), "MEDVISION_DEMO_SIZE": "32,48,48"}
    settings = settings_from_env(env)
    assert settings.workspace.home == home.resolve() and settings.demo_size == (32, 48, 48)
    assert settings.data_roots == (data.resolve(),)
    assert confine(str(data / "cases"), settings.data_roots) == (data / "cases").resolve()
    assert confine("cases", settings.data_roots) == (data / "cases").resolve()  # relative to the first root
    for bad in (str(outside), str(data / ".." / "elsewhere"), "/etc", ""):
        with pytest.raises(PathNotAllowedError):
            confine(bad, settings.data_roots)
    link = data / "escape"
    link.symlink_to(outside)
    with pytest.raises(PathNotAllowedError, match="outside the allowed"):
        confine(str(link), settings.data_roots)
    with pytest.raises(PathNotAllowedError, match="does not exist"):
        confine(str(data / "missing"), settings.data_roots)
    default = settings_from_env({"MEDVISION_HOME": str(home)})
    assert default.data_roots[0] == home.resolve()
    ws = Workspace(home).ensure()
    assert all(p.is_dir() for p in (ws.data, ws.runs, ws.cache, ws.uploads, ws.models))


# ------------------------------------------------------------------------------------------ uploads


def test_classify_uploads():
    f = uploads.UploadedFile
    four = [f(f"X_{m}.nii.gz", b"x") for m in ("flair", "t1", "t1ce", "t2")]
    assert uploads.classify(four) == "modalities"
    assert uploads.classify(four + [f("X_seg.nii.gz", b"x")]) == "modalities"
    assert uploads.classify([f(f"X-{m}.nii", b"x") for m in ("t2f", "t1n", "t1c", "t2w")]) == "modalities"
    assert uploads.classify([f("case.zip", b"x")]) == "zip"
    assert uploads.classify([f("BRATS_001.nii.gz", b"x")]) == "nifti4d"
    with pytest.raises(InputDataError, match="notes.txt: unsupported file type"):
        uploads.classify(four + [f("notes.txt", b"x")])
    assert uploads.classify(four[:3]) == "modalities"  # a subset: the model says whether it can use it
    assert uploads.classify(four[:1]) == "modalities"  # one file named like a modality is that modality
    with pytest.raises(InputDataError, match="second flair"):
        uploads.classify(four + [f("Y_flair.nii", b"x")])
    with pytest.raises(InputDataError, match="cannot tell the modality"):
        uploads.classify(four[:3] + [f("scan.nii.gz", b"x")])
    assert uploads.safe_name("../../etc/passwd") == "passwd"
    assert uploads.safe_name("a b/..\\c d.nii.gz") == "c_d.nii.gz"


def test_case_from_uploads_reads_four_files_and_names_bad_files(tmp_path):
    case = _case()
    files = []
    for c, m in enumerate(("flair", "t1", "t1ce", "t2")):
        path = _write_nifti(tmp_path / f"Demo_001_{m}.nii.gz", case.image[c])
        files.append(uploads.UploadedFile(path.name, path.read_bytes()))
    seg = _write_nifti(tmp_path / "Demo_001_seg.nii.gz", case.label, np.uint8)
    root = tmp_path / "uploads"
    loaded = uploads.case_from_uploads(
        files + [uploads.UploadedFile(seg.name, seg.read_bytes())], root, max_bytes=10**8
    )
    assert loaded.shape == case.shape and np.array_equal(loaded.label, case.label)
    assert np.allclose(loaded.image, case.image)
    assert list(root.iterdir()) == []  # the temporary copy is gone

    broken = files[:3] + [
        uploads.UploadedFile("Demo_001_t2.nii.gz", gzip.compress(b"not a nifti at all" * 10))
    ]
    with pytest.raises(InputDataError) as info:
        uploads.case_from_uploads(broken, root, max_bytes=10**8)
    assert "Demo_001_t2.nii.gz" in str(info.value) and str(root) not in str(info.value)
    assert list(root.iterdir()) == []
    with pytest.raises(InputDataError, match="limit"):
        uploads.case_from_uploads(files, root, max_bytes=10)
    with pytest.raises(InputDataError, match="empty"):
        uploads.case_from_uploads(
            files[:3] + [uploads.UploadedFile("Demo_001_t2.nii", b"")], root, max_bytes=10**8
        )

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for m in ("flair", "t1", "t1ce", "t2"):
            zf.write(tmp_path / f"Demo_001_{m}.nii.gz", f"Demo_001/Demo_001_{m}.nii.gz")
    zipped = uploads.case_from_uploads(
        [uploads.UploadedFile("Demo_001.zip", archive.getvalue())], root, max_bytes=10**8
    )
    assert zipped.shape == case.shape and zipped.label is None


# ------------------------------------------------------------------------------------------ viewer


def test_viewer_planes_scores_and_exports(tmp_path):
    case = _case()
    window = viewer.auto_windows(case)["flair"]
    rgb = viewer.render_plane(case, "axial", 6, "flair", window, case.label)
    assert rgb.shape == (24, 20, 3) and rgb.dtype == np.uint8
    plain = viewer.render_plane(case, "axial", 6, "flair", window, None)
    assert (rgb != plain).any(axis=-1).sum() == (case.label[6] > 0).sum()
    sliced = viewer.render_slice_label(case, 6, "flair", window, case.label[6])
    assert np.array_equal(sliced, rgb)
    error_rgb, counts = viewer.render_error(case, "coronal", 10, "t1", window, case.label, case.label, "WT")
    assert counts["FP"] == 0 and counts["FN"] == 0 and counts["TP"] > 0 and error_rgb.shape == (12, 20, 3)

    predicted = case.label.copy()
    predicted[predicted == 4] = 1  # miss ET
    frame = viewer.display_frame(case)
    dice = viewer.per_slice_dice(predicted, case.label, "axial", "ET", frame=frame)
    assert np.isnan(dice[0]) and dice[6] == 0.0
    assert viewer.per_slice_dice(predicted, case.label, "sagittal", "WT", frame=frame).shape == (20,)
    rows = viewer.case_scores(predicted, case.label, case.spacing)
    by_region = {r["region"]: r for r in rows}
    assert by_region["WT"]["Dice"] == pytest.approx(1.0) and by_region["ET"]["Dice"] == pytest.approx(0.0)

    from medvision.volumetry import volumetry

    volumes = volumetry(predicted, case.spacing)
    table = viewer.volumetry_rows(volumes)
    assert table[0]["measure"] == "Whole tumour (WT)" and table[0]["value"] == pytest.approx(4 * 8 * 8 / 1000)
    text = viewer.report_csv(case.case_id, "tiny", volumes, rows, 0.01234)
    record = next(csv.DictReader(io.StringIO(text)))
    assert record["case_id"] == "Demo_001" and record["WT_dice"] == "1.0000" and record["uncertainty_score"]

    data = viewer.segmentation_nifti_bytes(predicted, case, tmp_path / "exports")
    path = tmp_path / "pred.nii.gz"
    path.write_bytes(data)
    image = nib.load(path)
    assert np.allclose(image.affine, case.affine)
    assert np.array_equal(np.asarray(image.dataobj), case_to_nifti_axes(predicted))
    assert list((tmp_path / "exports").iterdir()) == []


# ------------------------------------------------------------------------------------------ explore


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from medvision.data.store import prepare_store

    cases = [
        Case(f"C{i}", _case(seed=i).image, np.eye(4), (1.0, 1.0, 1.0), _case(seed=i).label) for i in range(4)
    ]
    return prepare_store(cases, tmp_path_factory.mktemp("store") / "s.h5", workers=1, progress=False)


def test_explore_frame_filters_and_figures(tiny_store):
    table = explore.slice_frame(str(tiny_store))
    assert set(table["split"]) <= {"train", "val", "test"} and table["case_id"].nunique() == 4
    test_only = explore.filter_split(table, "test")
    assert 0 < test_only["case_id"].nunique() < 4
    numbers = explore.headline(table, "WT")
    assert numbers["tumour_slices"] == 4 * 4 and numbers["cases"] == 4
    assert numbers["small_slices"] == numbers["tumour_slices"]  # 64-pixel tumours are all "small"
    size = explore.size_figure(table, "WT")
    assert size.layout.shapes[0].x0 == explore.SMALL_TUMOUR_PIXELS
    prob = explore.probability_figure(table, "ET")
    assert np.nanmax(np.asarray(prob.data[0].y, dtype=float)) <= 1.0
    for build in (explore.tumour_vs_healthy_figure, explore.slices_per_patient_figure):
        assert build(table, "TC").data
    assert explore.volume_figure(table).data and explore.class_balance_figure(table).data
    from medvision.eda import compute_eda, load_sample

    report = compute_eda(tiny_store, cache_dir=tiny_store.parent / "eda")
    assert {t.name for t in explore.intensity_figure(report).data} == {"flair", "t1", "t1ce", "t2"}
    picks = explore.gallery_picks(str(tiny_store), test_only, "WT", 3, seed=0)
    assert picks and all(c in set(test_only["case_id"]) for c, _ in picks)
    tile = explore.render_sample(load_sample(tiny_store, *picks[0]))
    assert tile.ndim == 3 and tile.shape[-1] == 3


def test_catalog_lists_runs_and_dropped_in_models(tmp_path):
    import torch

    from medvision.checkpoint import save_checkpoint
    from medvision.models import build_model
    from medvision.train import rundir

    settings = settings_from_env({"MEDVISION_HOME": str(tmp_path)}, repo_root=tmp_path / "repo")
    settings.workspace.ensure()
    torch.manual_seed(0)
    model = build_model(
        {
            "in_channels": 4,
            "out_channels": 3,
            "base_filters": 2,
            "depth": 1,
            "dropout": 0.0,
            "attention": True,
        }
    )
    run = settings.workspace.runs / "r1"
    save_checkpoint(
        rundir.checkpoint_path(run, "best"),
        model,
        {
            "target": "regions",
            "val": {"WT": {"dice": 0.5, "hd95": 3.0}},
            "test": {"by_size": {"small": {"dice": 0.4}}},
        },
    )
    rundir.write_status(run, "finished", epoch=1)
    rundir.append_metrics(run, {"kind": "step", "step": 1, "loss": 1.0})
    save_checkpoint(settings.workspace.models / "extra.safetensors", model, {"target": "regions"})
    rundir.write_status(settings.workspace.runs / "r2", "failed", error="boom")
    choices = catalog.model_choices(settings)
    assert [c.label for c in choices] == ["Run r1", "Model extra"]
    meta = catalog.model_meta(choices[0])
    assert catalog.run_dir_of(choices[0], meta) == run
    titles = [t for t, _ in catalog.metric_tables(meta)]
    assert titles == ["val", "test / by_size"]
    assert catalog.summary_fields(meta)["target"] == "regions"
    assert catalog.run_dir_of(choices[1], catalog.model_meta(choices[1])) is None


# ------------------------------------------------------------------------------------------ launcher


def test_train_command_and_run_names(tmp_path):
    config = TrainConfig.from_preset("demo", epochs=1, steps_per_epoch=2, batch_size=2)
    command = launcher.train_command(tmp_path / "s.h5", tmp_path / "run", config, python="py")
    assert command[:4] == ["py", "-m", "medvision", "train"]
    assert command[command.index("--epochs") + 1] == "1" and command[command.index("--preset") + 1] == "demo"
    assert command[command.index("--data") + 1] == str(tmp_path / "s.h5")
    resume = launcher.train_command(tmp_path / "s.h5", tmp_path / "run", config, resume=True, python="py")
    assert resume[-1] == "--resume" and "--data" not in resume
    assert launcher.check_run_name("run-1.a_b") == "run-1.a_b"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ValueError):
            launcher.check_run_name(bad)


def test_launch_survives_as_own_session_refuses_busy_folder_and_stops(tmp_path):
    run_dir = tmp_path / "run"
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
        "print('ready', flush=True); time.sleep(60)"
    )
    started = launcher.launch([sys.executable, "-c", code], run_dir)
    try:
        deadline = time.time() + 20
        while "ready" not in launcher.launch_log_tail(run_dir).splitlines()[1:] and time.time() < deadline:
            time.sleep(0.05)
        assert os.getsid(started.pid) == started.pid  # its own session: a page reload cannot take it down
        assert launcher.is_busy(run_dir)
        with pytest.raises(RunBusyError, match="busy"):
            launcher.launch([sys.executable, "-c", "pass"], run_dir)
        assert launcher.stop_training(run_dir)
        deadline = time.time() + 10
        while launcher.exit_code(run_dir) is None and time.time() < deadline:
            time.sleep(0.05)
        assert launcher.exit_code(run_dir) == 3
        assert not launcher.is_busy(run_dir) and not launcher.stop_training(run_dir)
        assert launcher.launch_log_tail(run_dir).startswith("$ ")
        assert [r.name for r in launcher.app_runs(tmp_path)] == ["run"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(started.pid, signal.SIGKILL)


def test_start_training_refuses_an_existing_run(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    with pytest.raises(RunBusyError, match="already holds a run"):
        launcher.start_training(tmp_path / "s.h5", tmp_path, "old", TrainConfig.from_preset("demo"))
    with pytest.raises(ValueError):
        launcher.start_training(tmp_path / "s.h5", tmp_path, "../escape", TrainConfig.from_preset("demo"))


def test_a_failed_launch_is_reported(tmp_path):
    run_dir = tmp_path / "bad"
    launcher.launch([sys.executable, "-c", "import sys; print('no data'); sys.exit(2)"], run_dir)
    deadline = time.time() + 10
    while launcher.exit_code(run_dir) is None and time.time() < deadline:
        time.sleep(0.05)
    assert launcher.exit_code(run_dir) == 2
    assert "no data" in launcher.train_log_tail(run_dir)
    # Nobody stopped it and it wrote no status: the page reports a launch that failed.
    assert launcher.run_state(run_dir) == "did not start"
    assert launcher.app_runs(tmp_path)[0].label == "did not start"


def _wait_exit(run_dir: Path, seconds: float = 10) -> None:
    deadline = time.time() + seconds
    while launcher.is_busy(run_dir) and time.time() < deadline:
        time.sleep(0.05)
    assert not launcher.is_busy(run_dir)


def _write_run_config(run_dir: Path, epochs: int) -> None:
    from medvision.train import rundir

    rundir.write_json_atomic(run_dir / rundir.CONFIG_FILE, {"train": {"preset": "demo", "epochs": epochs}})


# Exits 0.3 s after SIGTERM, as the trainer does after finishing its step, so "stopping" can be seen.
_SLOW_TO_STOP = (
    "import signal, time; stop = []; signal.signal(signal.SIGTERM, lambda *a: stop.append(1)); "
    "print('ready', flush=True); [time.sleep(0.05) for _ in range(1200) if not stop]; time.sleep(0.3)"
)


def test_a_starting_run_reads_starting_then_running_then_stopping_and_stopped(tmp_path):
    from medvision.train import rundir

    run_dir = tmp_path / "r"
    started = launcher.launch([sys.executable, "-c", _SLOW_TO_STOP], run_dir)
    try:
        # Nothing written yet but the launcher's log: the run is starting, not "unknown".
        assert launcher.run_state(run_dir) == "starting"
        [run] = launcher.app_runs(tmp_path)
        assert (run.state, run.label, run.error, run.busy) == ("starting", "starting", None, True)
        _write_run_config(run_dir, epochs=16)
        # The trainer writes "running" before preparing data; until it knows its steps it is starting.
        rundir.write_status(run_dir, "running", pid=started.pid, epoch=0, step=0, total_steps=None)
        assert launcher.app_runs(tmp_path)[0].label == "starting"
        rundir.write_status(run_dir, "running", pid=started.pid, epoch=0, step=5, total_steps=1600)
        assert launcher.app_runs(tmp_path)[0].label == "running · epoch 1/16 · step 5/1600"
        deadline = time.time() + 20
        # (The first log line is the command itself, which contains the word too.)
        while "ready" not in launcher.launch_log_tail(run_dir).splitlines()[1:] and time.time() < deadline:
            time.sleep(0.05)
        assert launcher.stop_training(run_dir) and launcher.stop_requested(run_dir)
        assert launcher.app_runs(tmp_path)[0].label == "stopping · epoch 1/16 · step 5/1600"
        _wait_exit(run_dir)
        # Its status still says "running" (the process never wrote another): the stop request decides.
        run = launcher.app_runs(tmp_path)[0]
        assert (run.state, run.label, run.busy) == ("stopped", "stopped · epoch 1/16 · step 5/1600", False)
        assert not launcher.can_resume(run_dir)  # no checkpoint
        (run_dir / rundir.STATE_FILE).write_bytes(b"state")
        assert launcher.can_resume(run_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(started.pid, signal.SIGKILL)


def test_stop_before_the_first_status_is_a_stop_not_a_failed_launch(tmp_path):
    from medvision.train import rundir

    run_dir = tmp_path / "early"
    started = launcher.launch([sys.executable, "-c", "import time; time.sleep(60)"], run_dir)
    try:
        assert launcher.stop_training(run_dir)
        _wait_exit(run_dir)
        assert launcher.exit_code(run_dir) == -signal.SIGTERM
        run = launcher.app_runs(tmp_path)[0]
        assert (run.state, run.label, run.error) == ("stopped", "stopped · before training started", None)
        assert not launcher.can_resume(run_dir) and not launcher.has_checkpoint(run_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(started.pid, signal.SIGKILL)

    # A relaunch in the folder forgets the old stop, and the old process's final status is not its own.
    rundir.write_status(run_dir, "stopped", pid=started.pid, epoch=1, step=100, total_steps=1600)
    launcher.launch([sys.executable, "-c", "import time; time.sleep(60)"], run_dir)
    try:
        assert not launcher.stop_requested(run_dir)
        assert launcher.run_state(run_dir) == "starting" and not launcher.can_resume(run_dir)
    finally:
        launcher.stop_training(run_dir)
        _wait_exit(run_dir)


def test_trainer_states_and_labels_of_ended_runs(tmp_path):
    from medvision.train import rundir

    for name, state, fields in (
        ("done", "finished", dict(epoch=16, step=1600, total_steps=1600)),
        ("early", "finished", dict(epoch=8, step=800, total_steps=1600)),
        ("mid", "stopped", dict(epoch=1, step=140, total_steps=1600)),
        ("prep", "failed", dict(epoch=0, step=0, total_steps=None, error="no such store")),
    ):
        _write_run_config(tmp_path / name, epochs=16)
        rundir.write_status(tmp_path / name, state, **fields)
    labels = {r.name: (r.label, r.error) for r in launcher.app_runs(tmp_path)}
    assert labels == {
        "done": ("finished · epoch 16/16 · step 1600/1600", None),
        "early": ("finished · epoch 8/16 · step 800/1600", None),
        "mid": ("stopped · epoch 2/16 · step 140/1600", None),
        "prep": ("failed · before training started", "no such store"),
    }
    assert launcher.can_resume(tmp_path / "prep")  # restarts from its saved settings
    assert not launcher.can_resume(tmp_path / "mid")  # stopped, but no checkpoint to continue from


def test_one_point_curves_have_markers():
    one_step = [{"kind": "step", "epoch": 1, "step": 5, "loss": 0.9, "lr": 1e-3, "slices_per_s": 3.0}]
    for build in (figures.loss_figure, figures.lr_figure, figures.throughput_figure):
        [trace] = build(one_step).data
        assert trace.mode == "lines+markers" and len(trace.x) == 1
    one_epoch = [{"kind": "epoch", "epoch": 1, "step": 1, "val_loss": 0.8, "val": {"WT": {"dice": 0.3}}}]
    [val_loss] = figures.loss_figure(one_epoch).data
    [wt] = figures.dice_figure(one_epoch).data
    assert val_loss.mode == wt.mode == "lines+markers"


def test_empty_vs_empty_regions_are_named_where_the_best_dice_is_shown():
    val = {
        "WT": {"dice": 0.0, "dice_slice": 0.0},
        "TC": {"dice": 1.0, "dice_slice": None},  # no TC in truth or prediction: 1.0 by convention
        "ET": {"dice": 1.0, "dice_slice": float("nan")},
        "NCR": {"dice": 1.0, "dice_slice": 1.0},  # a real perfect score
    }
    assert figures.empty_regions(val) == ["TC", "ET"]
    assert figures.empty_regions({"WT": {"dice": 1.0, "hd95": 0.0}}) == []  # no way to tell: not marked
    assert figures.empty_regions(None) == []
    assert figures.empty_regions_note(["TC", "ET"]) == (
        "TC, ET: no tumour of this kind in the validation data and none predicted; "
        "counted as 1.000 by the BraTS convention."
    )
    metrics = [
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 1,
            "val_mean_dice": 2 / 3,
            "val": {k: val[k] for k in ("WT", "TC", "ET")},
        },
        {
            "kind": "epoch",
            "epoch": 2,
            "step": 2,
            "val_mean_dice": 0.5,
            "val": {
                "WT": {"dice": 0.5, "dice_slice": 0.4},
                "TC": {"dice": 0.5, "dice_slice": 0.5},
                "ET": {"dice": 0.5, "dice_slice": 0.5},
            },
        },
    ]
    progress = figures.latest_progress(metrics, {"state": "finished", "step": 2, "total_steps": 2})
    assert progress["best_epoch"] == 1 and progress["best_mean_dice"] == pytest.approx(2 / 3)
    assert progress["best_val"] == {"WT": 0.0, "TC": 1.0, "ET": 1.0}
    assert progress["best_empty"] == ["TC", "ET"]


def test_validation_note_says_which_validation_or_why_there_is_none():
    config = {"epochs": 16}
    stopped = {"kind": "last", "epoch": 0, "step": 40, "total_steps": 1600, "val": None}
    stopped["train_config"] = config
    assert catalog.validation_note(stopped) == (
        "No validation yet: the run was stopped at step 40 of 1600, before its first validation (it runs "
        "at the end of each epoch). Resume it on the Train page to get one."
    )
    later = {**stopped, "epoch": 1, "step": 140, "val": {"WT": {"dice": 0.4}}}
    assert catalog.validation_note(later) == (
        "Validation after epoch 1 of 16 (step 100); the run was stopped later, at step 140 of 1600."
    )
    best = {**later, "kind": "best", "step": 100}
    assert catalog.validation_note(best) == "Validation after epoch 1 of 16 (step 100 of 1600)."
    assert catalog.validation_note({"target": "regions", "val": {"WT": {"dice": 0.5}}}) is None


def test_kept_widget_values_are_remembered_and_put_back():
    from medvision.app_support.kept_state import came_from_another_page, keep_widget_values

    state = {"view_plane": "sagittal", "view_slice_axial": 7, "other": 1}
    keep_widget_values(state, ("view_plane", "view_slice_axial", "view_3d"), restore=False)
    state.update(view_plane="axial", view_slice_axial=0)  # what a dropped widget reports on its return
    del state["other"]
    keep_widget_values(state, ("view_plane", "view_slice_axial", "view_3d"), restore=True)
    assert state["view_plane"] == "sagittal" and state["view_slice_axial"] == 7 and "view_3d" not in state
    assert came_from_another_page({"mv_previous_page": "model-card", "mv_current_page": "prediction"})
    assert not came_from_another_page({"mv_previous_page": "prediction", "mv_current_page": "prediction"})


def test_model_card_pictures_are_read_from_the_card_folder_only(tmp_path):
    from medvision.app_support.catalog import card_parts

    folder = tmp_path / "checkpoints"
    (folder / "card").mkdir(parents=True)
    (folder / "card" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.png").write_bytes(b"png")
    (folder / "card" / "link.png").symlink_to(tmp_path / "secret.png")
    card = (
        "# Card\n\ntext\n\n  ![inside](card/a.png)\n\nmore\n![up](../secret.png)\n![abs](/etc/x.png)\n"
        "![link](card/link.png)\n![gone](card/none.png)\nend\n"
    )
    parts = card_parts(card, folder)
    images = [(value, alt) for kind, value, alt in parts if kind == "image"]
    assert images == [(folder / "card" / "a.png", "inside")]
    text = "".join(value for kind, value, _ in parts if kind == "markdown")
    # Pictures that lead outside the folder, are absolute or missing stay as their Markdown text.
    for kept in ("../secret.png", "/etc/x.png", "card/link.png", "card/none.png", "# Card", "end"):
        assert kept in text
    assert "card/a.png" not in text
