"""Streamlit AppTest runs of every page and of the main flows (no browser).

All tests share one workspace (MEDVISION_HOME in a temporary folder) with a tiny synthetic cohort, made
once, and a tiny checkpoint when the shipped demo checkpoint is not there yet. The training test
starts a real background run of a few steps and waits for it to finish.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest
import streamlit  # noqa: F401  (a requirement: fail, never skip, where it is missing)
from streamlit.testing.v1 import AppTest  # noqa: E402

from medvision.app_support import job_limits

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021_00006"
TIMEOUT = 120  # seconds per script run: the first run imports torch and makes the cohort


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A workspace with a 4-case synthetic cohort (48x64x64) and a model to predict with."""
    from tiny_checkpoint import save_tiny_checkpoint

    from medvision.app_support import catalog
    from medvision.app_support.workspace import settings_from_env

    home = tmp_path_factory.mktemp("medvision_home")
    env = {"MEDVISION_HOME": str(home), "MEDVISION_DEMO_CASES": "4", "MEDVISION_DEMO_SIZE": "48,64,64"}
    settings = settings_from_env(env)
    catalog.ensure_demo_cohort(settings)
    if not settings.default_checkpoint.is_file():
        save_tiny_checkpoint(
            settings.workspace.models / "tiny.safetensors", val={"WT": {"dice": 0.1, "hd95": 9.0}}
        )
    return home, env


@pytest.fixture()
def app(home, monkeypatch):
    _, env = home
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MEDVISION_DATA_ROOTS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    yield at
    # Background predictions must not outlive the test (a thread killed inside torch at exit aborts).
    for key in ("predict_job", "predict_mc_job"):
        job = at.session_state.get(key)
        if job is not None:
            job.cancel()
            job.wait(120)


def _values(elements) -> list[str]:
    return [str(e.value) for e in elements]


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _wait_for_volume(at: AppTest, seconds: float = 90) -> None:
    """Rerun until the whole-volume prediction is done (its progress bar is gone)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        job = at.session_state.get("predict_job")
        if job is not None and job.finished:
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            return
        time.sleep(0.5)
    pytest.fail("whole-volume prediction did not finish in time")


# -------------------------------------------------------------------------------------------- pages


def test_every_page_renders_with_the_clinical_use_note(app):
    assert any("not for clinical use" in w for w in _values(app.warning))
    assert app.radio(key="source_kind").value == "Synthetic demo cohort"
    for page in ("pages/explore.py", "pages/train.py", "pages/predict.py", "pages/models.py"):
        _open(app, page)
        assert any("not for clinical use" in w for w in _values(app.warning)), page
        assert not app.error, (page, _values(app.error))


def test_explore_dashboards_and_filters(app):
    _open(app, "pages/explore.py")
    assert len(app.get("plotly_chart")) == 7
    assert _values(app.metric)[0] == "4"  # patients
    app.segmented_control(key="eda_split").set_value("test").run()
    assert not app.exception
    assert int(_values(app.metric)[0]) < 4
    app.segmented_control(key="eda_region").set_value("ET").run()
    assert not app.exception
    app.segmented_control(key="eda_split").set_value("all")
    app.segmented_control(key="eda_region").set_value("WT")
    app.slider(key="eda_gallery_n").set_value(3).run()
    assert not app.exception and len(app.image) == 3


def test_server_path_outside_the_data_roots_is_refused(app):
    app.radio(key="source_kind").set_value("Folder or store on the server").run()
    app.text_input(key="server_path").set_value("/etc").run()
    assert not app.exception
    assert any("outside the allowed data folders" in e for e in _values(app.sidebar.error))
    _open(app, "pages/explore.py")
    assert any("Choose a data source" in i for i in _values(app.info))


def test_models_page_shows_metrics_of_the_selected_model(app):
    _open(app, "pages/models.py")
    assert app.get("arrow_data_frame") or app.dataframe
    assert not app.error


def test_models_page_lists_the_members_of_the_shipped_ensemble(app):
    from medvision.checkpoint import read_checkpoint_meta

    shipped = REPO / "checkpoints" / "default.safetensors"
    meta = read_checkpoint_meta(shipped)
    config = meta["model"]
    members, routes = config["members"], config.get("routes") or {}
    specialists = sum(len(indices) for indices in routes.values())
    _open(app, "pages/models.py")  # the shipped default model is the one selected at first
    assert any(f"An ensemble of {members - specialists} networks" in m for m in _values(app.markdown))
    member_tables = [d for d in app.dataframe if "val mean Dice" in d.value.columns]
    assert len(member_tables) == 1 and len(member_tables[0].value) == members
    predicts = list(member_tables[0].value["predicts"])
    assert predicts.count("any subset") == members - specialists
    expected = sorted(f"{name} alone" for name, indices in routes.items() for _ in indices)
    assert sorted(p for p in predicts if p != "any subset") == expected
    figures = list(member_tables[0].value["val mean Dice"])
    assert all(f == "–" or 0.0 <= float(f) <= 1.0 for f in figures)
    # A specialist validated on all four modalities has its figure left out, and the page says why.
    if specialists:
        assert f"and {specialists} more trained for one subset alone" in " ".join(_values(app.markdown))
        records = meta["ensemble"]["members"]
        own = [r.get("val_modalities") == r["route"] for r in records if r.get("route")]
        shown = [f != "–" for f, p in zip(figures, predicts, strict=True) if p != "any subset"]
        assert shown == own
        assert any("never gets in use" in c for c in _values(app.caption)) == (not all(own))
    notes = [m for m in _values(app.markdown) if "Predicted as a smaller input" in m]
    assert len(notes) == (1 if config.get("route_supersets") else 0), notes


# -------------------------------------------------------------------------------------------- train


def test_train_launch_refuse_busy_and_finish(app):
    _open(app, "pages/train.py")
    settings = {
        "train_epochs": 1,
        "train_batch_size": 2,
        "train_base_filters": 4,
        "train_steps_per_epoch": 2,
        "train_val_max_slices": 4,
    }
    app.text_input(key="train_run_name").set_value("tiny-run")
    for key, value in settings.items():
        app.number_input(key=key).set_value(value)
    app.button(key="train_launch").click().run()
    assert not app.exception
    assert any("Started run tiny-run" in s for s in _values(app.success)), _values(app.error)

    app.text_input(key="train_run_name").set_value("tiny-run")
    app.button(key="train_launch").click().run()
    assert any("tiny-run" in e and ("busy" in e or "already holds a run" in e) for e in _values(app.error))

    deadline = time.time() + 150
    state = ""
    while time.time() < deadline:
        time.sleep(2)
        app.run()
        assert not app.exception
        status = [m for m in _values(app.markdown) if m.startswith("**Status:**")]
        state = status[0] if status else ""
        if "finished" in state or "failed" in state:
            break
    assert "finished" in state, (state, _values(app.error), _values(app.code))
    assert app.selectbox(key="train_selected_run").value == "tiny-run"
    assert len(app.get("plotly_chart")) == 4
    assert app.button(key="train_stop").disabled
    table = app.dataframe[-1].value
    assert table.loc[table["run"] == "tiny-run", "state"].item() == "finished"
    # The finished run is now offered as a model in the sidebar.
    app.run()
    assert any("tiny-run" in o for o in app.selectbox(key="model_label").options)
    # Its process writes "finished" and then still tears down for a moment (longer on a slow machine); the
    # next test's launch counts live processes against the one-run limit, so wait for this one to end.
    registry = app.session_state["mv_settings"].workspace.home / "jobs"
    deadline = time.time() + 60
    while job_limits.live_jobs(registry, "training") and time.time() < deadline:
        time.sleep(0.5)
    assert not job_limits.live_jobs(registry, "training")


def _launch(app: AppTest, name: str, **settings: int) -> None:
    app.text_input(key="train_run_name").set_value(name)
    for key, value in settings.items():
        app.number_input(key=f"train_{key}").set_value(value)
    app.button(key="train_launch").click().run()
    assert any(f"Started run {name}" in s for s in _values(app.success)), _values(app.error)


def _wait_state(app: AppTest, wanted: tuple[str, ...], seconds: float = 120) -> str:
    deadline = time.time() + seconds
    state = ""
    while time.time() < deadline:
        time.sleep(1)
        app.run()
        assert not app.exception
        status = [m for m in _values(app.markdown) if m.startswith("**Status:**")]
        state = status[0] if status else ""
        if any(w in state for w in wanted):
            return state
    return state


def test_stop_and_resume_a_run(app):
    _open(app, "pages/train.py")
    _launch(app, "stop-me", epochs=2, batch_size=2, base_filters=4, steps_per_epoch=40, val_max_slices=4)
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(1)
        app.run()
        steps = [m for m in _values(app.markdown) if m.startswith("**Status:**") and "running" in m]
        if steps and not app.button(key="train_stop").disabled:
            break
    app.button(key="train_stop").click().run()
    assert any("Asked stop-me to stop" in i for i in _values(app.info)), _values(app.warning)
    assert "stopped" in _wait_state(app, ("stopped", "finished", "failed"))
    deadline = time.time() + 30
    while app.button(key="train_resume").disabled and time.time() < deadline:
        time.sleep(0.5)
        app.run()  # the page keeps polling until the stopping process has exited
    assert not app.button(key="train_resume").disabled
    app.button(key="train_resume").click().run()
    assert any("Resumed stop-me" in s for s in _values(app.success)), _values(app.error)
    assert app.button(key="train_resume").disabled
    # Do not leave the resumed run training behind the remaining tests.
    from medvision.app_support import launcher

    run_dir = app.session_state["mv_settings"].workspace.runs / "stop-me"
    deadline = time.time() + 60
    while launcher.is_busy(run_dir) and time.time() < deadline:
        launcher.stop_training(run_dir)
        time.sleep(1)
    assert not launcher.is_busy(run_dir)


def test_a_failed_run_shows_its_error(app, home):
    from medvision.train import rundir

    run = Path(home[0]) / "runs" / "broken-run"
    rundir.write_status(run, "failed", error="CUDA out of memory (simulated)")
    (run / "train.log").write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    _open(app, "pages/train.py")
    app.selectbox(key="train_selected_run").set_value("broken-run").run()
    assert any("Run failed: CUDA out of memory (simulated)" in e for e in _values(app.error))
    assert any("RuntimeError" in c for c in _values(app.code))


# -------------------------------------------------------------------------------------------- predict


def test_predict_a_case_of_the_data_source_and_scroll(app):
    _open(app, "pages/predict.py")
    assert app.selectbox(key="predict_case").value == "Synth_000"
    # The visible slice is predicted first: the prediction panel is there before the volume is done.
    assert len(app.get("plotly_chart")) >= 2
    _wait_for_volume(app)
    charts = len(app.get("plotly_chart"))
    assert charts == 4  # prediction, truth, error map, per-slice Dice strip
    start = app.slider(key="view_slice_axial").value
    app.button(key="view_next").click().run()
    assert app.slider(key="view_slice_axial").value == start + 1
    app.slider(key="view_slice_axial").set_value(3).run()
    app.radio(key="view_plane").set_value("sagittal").run()
    app.slider(key="view_slice_sagittal").set_value(10).run()
    app.radio(key="view_plane").set_value("axial").run()
    assert app.slider(key="view_slice_axial").value == 3  # each view keeps its slice
    app.selectbox(key="view_modality").set_value("t1ce")
    app.checkbox(key="view_show_ed").uncheck()
    app.selectbox(key="view_error_region").set_value("TC")
    app.checkbox(key="view_attention").check().run()
    assert not app.exception
    assert len(app.get("plotly_chart")) == 5  # + attention map
    assert len(app.dataframe) == 2  # volumetry and scores
    assert {b.label for b in app.get("download_button")} == {"Segmentation (NIfTI)", "Report (CSV)"}
    app.toggle(key="view_3d").set_value(True).run()
    assert not app.exception and len(app.get("plotly_chart")) == 6

    from medvision.inference import forward

    app.checkbox(key="view_uncertainty").check().run()
    assert app.checkbox(key="predict_mc_focus").value is True  # focused MC dropout by default
    app.number_input(key="predict_mc_samples").set_value(2)
    app.button(key="predict_mc_start").click().run()
    assert app.session_state["predict_mc_job"].options["mc_focus"] == forward.MC_FOCUS_PROBABILITY
    deadline = time.time() + 60
    while time.time() < deadline and not app.session_state["predict_mc_job"].finished:
        time.sleep(0.5)
    app.run()
    assert any(m.label == "Case uncertainty score" for m in app.metric)
    assert not app.exception and not app.error

    app.selectbox(key="predict_case").set_value("Synth_001").run()
    assert not app.exception
    assert "Synth_001" in " ".join(_values(app.caption))


def test_predict_chooses_the_viewer_from_what_the_browser_said(app):
    from medvision.app_support.webgl_probe import SUPPORT_KEY, WebGLSupport

    _open(app, "pages/predict.py")
    # No browser here: the probe never answers, so the simple images are drawn and the page says why.
    captions = " ".join(_values(app.caption))
    assert "In use: simple images" in captions
    assert "chosen automatically: the browser has not said yet whether it has WebGL2" in captions
    # A browser that draws WebGL2 on a graphics card gets the 3-D viewer with the whole grid (no box).
    app.session_state[SUPPORT_KEY] = WebGLSupport(True, "ANGLE (NVIDIA GeForce RTX 3060)")
    app.run()
    captions = " ".join(_values(app.caption))
    assert not app.exception
    assert "In use: 3-D WebGL viewer (NiiVue)" in captions
    assert "chosen automatically: this browser draws WebGL2 on a graphics card" in captions
    assert "box only" not in captions and "Sent to the browser:" in captions
    # Once the volume is predicted: the label legend under the cursor, a probability layer with a colour bar.
    _wait_for_volume(app)
    assert "value under the cursor is the colour code (255 = NCR/NET (label 1)" in " ".join(
        _values(app.caption)
    )
    assert "WT probability" in app.radio(key="view_nv_layer").options
    app.radio(key="view_nv_layer").set_value("WT probability").run()
    assert not app.exception and "with its colour bar" in " ".join(_values(app.caption))
    app.radio(key="view_nv_layer").set_value("Prediction").run()
    # Software WebGL2: the simple images again, unless the user picks the 3-D viewer, which then gets the box.
    app.session_state[SUPPORT_KEY] = WebGLSupport(True, "SwiftShader Device")
    app.run()
    assert "draws WebGL2 in software" in " ".join(_values(app.caption))
    app.radio(key="view_renderer").set_value("3-D WebGL (NiiVue)").run()
    captions = " ".join(_values(app.caption))
    assert "chosen by you" in captions and "box only" in captions
    assert not app.exception


def _upload(files):
    return [(path.name, path.read_bytes(), "application/gzip") for path in files]


def test_upload_a_corrupt_file_shows_an_error(app, tmp_path):
    _open(app, "pages/predict.py")
    app.radio(key="predict_input").set_value("Upload files").run()
    assert any("Upload a scan" in i for i in _values(app.info))
    broken = [
        (f"X_{m}.nii.gz", gzip.compress(b"\x00" * 400), "application/gzip") for m in ("flair", "t1", "t1ce")
    ]
    broken.append(("X_t2.nii.gz", b"\x1f\x8b\x08\x00 truncated", "application/gzip"))
    app.get("file_uploader")[0].set_value(broken).run()
    assert not app.exception
    errors = _values(app.error)
    assert errors and errors[0].startswith("Cannot use this upload") and "X_" in errors[0]
    app.get("file_uploader")[0].set_value([("notes.txt", b"hello", "text/plain")]).run()
    assert not app.exception
    assert any("notes.txt" in e and "unsupported file type" in e for e in _values(app.error))
    # The app keeps working afterwards.
    app.radio(key="predict_input").set_value("Case from the data source").run()
    assert not app.exception and not app.error


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data")
def test_a_server_case_folder_becomes_the_data_source(app):
    app.radio(key="source_kind").set_value("Folder or store on the server").run()
    app.text_input(key="server_path").set_value(str(REAL_CASE)).run()
    assert not app.exception and not app.sidebar.error, _values(app.sidebar.error)
    # The folder is prepared into a store by a background process; the sidebar says so meanwhile.
    assert any("Preparing brats2021_00006" in i for i in _values(app.sidebar.info))
    deadline = time.time() + 120
    while app.session_state["mv_source"] is None and time.time() < deadline:
        time.sleep(1)
        app.run()
        assert not app.exception and not app.sidebar.error, _values(app.sidebar.error)
    assert app.session_state["mv_source"].cases_root == REAL_CASE.resolve()
    _open(app, "pages/explore.py")
    assert _values(app.metric)[0] == "1"
    _open(app, "pages/predict.py")
    assert app.selectbox(key="predict_case").value == "BraTS2021_00006"
    assert not app.error


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data")
def test_upload_the_real_brats_case(app):
    _open(app, "pages/predict.py")
    app.radio(key="predict_input").set_value("Upload files").run()
    files = sorted(REAL_CASE.glob("*.nii*"))
    app.get("file_uploader")[0].set_value(_upload(files)).run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, _values(app.error)
    caption = " ".join(_values(app.caption))
    assert "BraTS2021_00006" in caption and "155×240×240" in caption and "with ground truth" in caption
    # The truth's tumour centre is the first slice shown (tumour on axial slices 44-111).
    assert 44 <= app.slider(key="view_slice_axial").value <= 111
    assert len(app.get("plotly_chart")) >= 2  # predicted slice + ground truth
    app.button(key="view_prev").click().run()
    assert not app.exception
    app.session_state["predict_job"].cancel()  # no need to finish the 155-slice volume here


def test_predict_keeps_its_state_across_page_switches(app, tmp_path):
    """Leaving Predict for another page and coming back keeps the case, the view, the slice, the display
    choices and the computed results; an uploaded case is kept even though the uploader is empty again."""
    _open(app, "pages/predict.py")
    app.selectbox(key="predict_case").set_value("Synth_001").run()
    _wait_for_volume(app)
    app.radio(key="view_plane").set_value("sagittal").run()
    app.slider(key="view_slice_sagittal").set_value(10).run()
    app.selectbox(key="view_convention").set_value("neurological")
    app.checkbox(key="view_show_ed").uncheck()
    app.checkbox(key="view_uncertainty").check().run()
    job = app.session_state["predict_job"]
    _open(app, "pages/models.py")
    _open(app, "pages/predict.py")
    assert app.selectbox(key="predict_case").value == "Synth_001"
    assert app.radio(key="view_plane").value == "sagittal"
    assert app.slider(key="view_slice_sagittal").value == 10
    assert app.selectbox(key="view_convention").value == "neurological"
    assert app.checkbox(key="view_show_ed").value is False and app.checkbox(key="view_uncertainty").value
    assert app.session_state["predict_job"] is job  # the prediction is not computed again
    assert len(app.dataframe) == 2 and not app.error
    assert [w.value for w in app.warning] == [app.warning[0].value] and "not for clinical use" in app.warning[
        0
    ].value

    from medvision.data.synthetic import make_phantom
    from medvision.data.writers import write_brats_folder

    folder = write_brats_folder(make_phantom("Upload_007", seed=3, size=(48, 64, 64)), tmp_path)
    app.radio(key="predict_input").set_value("Upload files").run()
    app.get("file_uploader")[0].set_value(_upload(sorted(folder.glob("*.nii*")))).run()
    assert "Upload_007" in " ".join(_values(app.caption))
    _open(app, "pages/explore.py")
    _open(app, "pages/predict.py")
    assert app.radio(key="predict_input").value == "Upload files"
    assert "Upload_007" in " ".join(_values(app.caption)) and not app.info
    app.button(key="predict_forget_upload").click().run()
    assert any("Upload a scan" in i for i in _values(app.info))


def test_upload_a_dicom_study_and_change_its_mapping(app, tmp_path):
    """BRAINIX zipped as a user would send it: series table, mapping, pictures, DICOM-SEG download."""
    import io
    import zipfile

    from dicom_fixtures import BRAINIX

    if not (BRAINIX / "DICOM").is_dir():
        pytest.skip("BRAINIX DICOM study not available in ../shared/data")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((BRAINIX / "DICOM").rglob("*.dcm")):
            zf.write(path, path.relative_to(BRAINIX).as_posix())
    _open(app, "pages/predict.py")
    app.radio(key="predict_input").set_value("Upload files").run()
    app.get("file_uploader")[0].set_value([("study.zip", buffer.getvalue(), "application/zip")]).run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.error, _values(app.error)
    assert any("DICOM study study.zip" in e.label for e in app.expander)
    assert app.selectbox(key="predict_dicom_pick_flair").value.startswith("series")
    assert app.selectbox(key="predict_dicom_pick_t1ce").value == "none"  # BRAINIX has no T1ce
    assert len(app.get("image")) == 4  # checkerboards of T1 and T2 against FLAIR, brain outline and cut
    captions = " ".join(_values(app.caption))
    assert "FLAIR" in captions and "A at the top" in captions
    # Refine the alignment: read again with rigid registration; before and after boards for T1 and T2.
    app.checkbox(key="predict_dicom_register").check().run()
    assert not app.exception and not app.error, _values(app.error)
    assert app.session_state["predict_dicom"].study.options.register
    assert len(app.get("image")) == 6
    assert any("rigid refinement" in step for step in app.session_state["predict_dicom"].study.steps)
    # Leave T1 out: the study is read again and the case has FLAIR and T2 only.
    app.selectbox(key="predict_dicom_pick_t1").set_value("none").run()
    assert not app.exception and not app.error, _values(app.error)
    assert app.session_state["predict_upload_case"][1].available == ("flair", "t2")
    _wait_for_volume(app, 180)
    keys = {b.key for b in app.get("download_button")}
    assert {"predict_download_dicom_nifti", "predict_download_dicom_seg"} <= keys
    # The 3-D viewer shows the study on its reference series' own grid by default, the prediction with it.
    app.radio(key="view_renderer").set_value("3-D WebGL (NiiVue)").run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.radio(key="view_nv_grid").value == "Reference series (as acquired)"
    assert app.radio(key="view_nv_layer").options == ["Prediction", "None"]
    captions = " ".join(_values(app.caption))
    assert "On the reference series' own grid (22×288×288 voxels" in captions
    assert "Sent to the browser:" in captions and "prediction" in captions
    app.radio(key="view_nv_grid").set_value("Model grid").run()
    assert not app.exception
    assert "On the reference series' own grid" not in " ".join(_values(app.caption))


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data")
def test_an_upload_says_which_given_modality_the_model_sets_aside(app):
    # Tried as a new user would with T1 and T1ce: the shipped model predicts that input as T1ce alone (its
    # cross-validation scored it higher without T1), and the page says so rather than listing T1 as used.
    _open(app, "pages/predict.py")
    app.radio(key="predict_input").set_value("Upload files").run()
    files = sorted(REAL_CASE.glob("*_t1.nii*")) + sorted(REAL_CASE.glob("*_t1ce.nii*"))
    app.get("file_uploader")[0].set_value(_upload(files)).run()
    assert not app.exception, [e.value for e in app.exception]
    captions = " ".join(_values(app.caption))
    assert "Given: T1, T1CE · missing: FLAIR, T2 · T1 set aside" in captions, captions
    app.session_state["predict_job"].cancel()


@pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data")
def test_a_t1_only_upload_warns_that_the_tumour_is_mostly_missed(app):
    # Tried as a new user would with only a plain T1: the cross-validation says the model then mostly
    # misses the tumour (model card), so the page says so and what to add, before any result is read.
    _open(app, "pages/predict.py")
    app.radio(key="predict_input").set_value("Upload files").run()
    app.get("file_uploader")[0].set_value(_upload(sorted(REAL_CASE.glob("*_t1.nii*")))).run()
    assert not app.exception, [e.value for e in app.exception]
    assert "Given: T1 · missing: FLAIR, T1CE, T2" in " ".join(_values(app.caption))
    warnings = [w for w in _values(app.warning) if "mostly misses the tumour" in w]
    assert warnings and "Adding FLAIR gives" in warnings[0], _values(app.warning)
    app.session_state["predict_job"].cancel()
    app.radio(key="predict_input").set_value("Case from the data source").run()
    assert not any("mostly misses" in w for w in _values(app.warning)), "all four given: no such warning"
