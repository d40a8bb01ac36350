"""Predict: segment an uploaded scan or a case of the data source and scroll through the result."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd
import streamlit as st
from niivue_component import niivue_viewer

from medvision.app_support import (
    browser_volumes,
    catalog,
    dicom_panel,
    dicom_upload,
    figures,
    mesh,
    render,
    subset_expectations,
    viewer,
    webgl_probe,
)
from medvision.app_support.catalog import CaseChoice, case_choices
from medvision.app_support.kept_state import came_from_another_page, keep_widget_values, resend_widget_values
from medvision.app_support.plain_text import plain
from medvision.app_support.session_life import current_session_alive
from medvision.app_support.uploads import case_from_uploads, streamed_upload
from medvision.data.case import MODALITIES, Case
from medvision.errors import MedVisionError
from medvision.inference import Predictor, forward
from medvision.volume_job import VolumeJob
from medvision.volumetry import volumetry

st.title("Predict")
# The progress bars of the background jobs are fragments that rerun every second. Each is drawn into its own
# container made here, above everything that depends on the input, so that a fragment rerun arriving just
# after a full rerun has changed the page (e.g. the choice of "Upload files", which ends the page early)
# still finds its place: drawn further down, its update named a position the shorter page no longer had
# and the browser's app stopped with "Bad delta path index" (a blank page; seen in bench/viewer_latency.py).
volume_progress_slot, mc_progress_slot = st.container(), st.container()
# The browser is asked whether it draws WebGL2 here, outside the viewer's fragment, for the same reason: its
# answer (sent again every few seconds until the server has it) reran the viewer fragment, which a page
# just shortened by "Upload files" no longer had.
webgl_probe.browser_webgl(st.session_state)
settings = st.session_state.get("mv_settings")
source = st.session_state.get("mv_source")
model = st.session_state.get("mv_model")
if settings is None:
    st.info("Open the app from its start page.")
    st.stop()
if model is None:
    st.info(
        "No model to predict with yet: train one on the Train page (or ship checkpoints/default.safetensors)."
    )
    st.stop()

INPUT_SOURCE = "Case from the data source"
VIEWER_AUTO = "Automatic"
VIEWER_NIIVUE = "3-D WebGL (NiiVue)"
VIEWER_SIMPLE = "Simple images"
NV_LAYOUTS = {
    "multiplanar": "Three planes + 3-D",
    "axial": "Axial",
    "coronal": "Coronal",
    "sagittal": "Sagittal",
    "3d": "3-D rendering",
}
NV_PREDICTION, NV_TRUTH, NV_ERRORS, NV_PROBABILITY, NV_UNCERTAINTY, NV_NONE = (
    "Prediction",
    "Ground truth",
    "Errors",
    "WT probability",
    "Uncertainty",
    "None",
)
INPUT_UPLOAD = "Upload files"
NV_GRID_NATIVE, NV_GRID_MODEL = "Reference series (as acquired)", "Model grid"
LABEL_TOGGLES = {
    1: ("view_show_ncr", "NCR", "necrotic / non-enhancing core, drawn red"),
    2: ("view_show_ed", "ED", "peritumoral edema, drawn yellow"),
    4: ("view_show_et", "ET", "GD-enhancing tumour, drawn blue"),
}
# The page's choices, kept while the user visits other pages (Streamlit drops undrawn widgets' values).
# The uploaded files cannot be put back into the uploader; the case read from them is kept instead.
KEPT_WIDGETS = (
    "predict_input",
    "predict_case",
    "predict_mc_samples",
    "predict_mc_focus",
    "view_plane",
    "view_modality",
    "view_convention",
    "view_opacity",
    "view_level",
    "view_width",
    "view_error_region",
    "view_attention",
    "view_uncertainty",
    "view_3d",
    "view_renderer",
    "view_nv_layer",
    "view_nv_layout",
    "view_nv_size",
    "view_nv_grid",
    *(key for key, _, _ in LABEL_TOGGLES.values()),
    *(f"view_slice_{view}" for view in render.VIEWS),
)
keep_widget_values(st.session_state, KEPT_WIDGETS, restore=came_from_another_page(st.session_state))
# Defaults set here rather than as widget arguments: a widget given both warns.
for key, default in (
    *((key, True) for key, _, _ in LABEL_TOGGLES.values()),
    ("view_opacity", 0.45),
    ("predict_mc_samples", 6),
    ("predict_mc_focus", True),
    ("view_renderer", VIEWER_AUTO),
    ("view_nv_layout", "multiplanar"),
):
    st.session_state.setdefault(key, default)
# Every run sends these values with their widgets: after a run that stopped before the viewer (an upload
# still to come) the browser would otherwise draw the label toggles unticked and the opacity at 0.
resend_widget_values(st.session_state, KEPT_WIDGETS)


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(checkpoint: str, mtime_ns: int, onnx_cache: str) -> Predictor:  # noqa: ARG001 - mtime: key
    # The ONNX export (CPUs without native bf16) is cached in the workspace, not in ~/.cache.
    return Predictor(checkpoint, device="auto", onnx_cache_dir=onnx_cache)


@st.cache_resource(max_entries=3, show_spinner="Reading the case…")
def _case(key: str, _choice: CaseChoice):  # noqa: ARG001 - the key identifies the choice
    return _choice.load()


@st.cache_data(max_entries=8, show_spinner=False)
def _choices(label: str, store: str, cases_root: str | None, _source) -> list[CaseChoice]:  # noqa: ARG001
    return case_choices(_source)


def _read_upload(uploads: list) -> None:
    """Read the uploaded files into a case held in the session (once per set of files)."""
    digest = hashlib.sha1()
    for f in sorted(uploads, key=lambda f: f.name):
        digest.update(f"{f.name}:{f.size}:{f.file_id}".encode())
    upload_key = "upload:" + digest.hexdigest()
    held = st.session_state.get("predict_upload_case")
    if held is not None and held[0] == upload_key:
        return
    files = [streamed_upload(f) for f in uploads]  # sizes checked before any byte is copied
    max_bytes = settings.max_upload_mb * 1_000_000
    if dicom_panel.holds(upload_key) or dicom_upload.is_dicom_upload(files):
        # Keyed by the files and the mapping: read once each (dicom_panel), not on every rerun.
        case_key, study = dicom_panel.read_upload(files, upload_key, settings.workspace.uploads, max_bytes)
        st.session_state["predict_upload_case"] = (case_key, study.case)
        return
    st.session_state.pop("predict_upload_case", None)
    dicom_panel.forget()
    try:
        with st.spinner("Reading the upload…"):
            uploaded_case = case_from_uploads(files, settings.workspace.uploads, max_bytes=max_bytes)
    except MedVisionError as error:
        st.error(f"Cannot use this upload — {plain(error)}")
        st.stop()
    st.session_state["predict_upload_case"] = (upload_key, uploaded_case)


# Loaded before the input is asked for, so that the model (and, on CPUs without native bf16, its one-time
# ONNX export) is ready while the user picks files, not after the upload.
try:
    predictor = _predictor(
        str(model.checkpoint), model.checkpoint.stat().st_mtime_ns, str(settings.workspace.cache / "onnx")
    )
except (MedVisionError, OSError) as error:
    st.error(f"Cannot load the model {plain(model.label)}: {plain(error)}")
    st.stop()
model_key = f"{model.checkpoint}:{predictor.checkpoint_hash[:12]}"

# ---------------------------------------------------------------------------------------------- input
mode = st.radio("Input", (INPUT_SOURCE, INPUT_UPLOAD), key="predict_input", horizontal=True)
dicom_study = None  # the DICOM study behind an uploaded case
if mode == INPUT_UPLOAD:
    uploads = st.file_uploader(
        "Four NIfTI files of one case (FLAIR, T1, T1ce, T2, optionally the seg), a .zip of a case folder, "
        "one 4-D NIfTI (Decathlon channel order), or a DICOM study (a .zip of it, or its files)",
        accept_multiple_files=True,
        key="predict_upload",
    )
    if uploads:
        _read_upload(uploads)
    elif st.session_state.get("predict_upload_case") is not None:
        # Back from another page: the uploader is empty again, but the case read from it is kept.
        held_id = st.session_state["predict_upload_case"][1].case_id
        st.caption(f"Showing the case uploaded earlier, **{plain(held_id)}**; upload files to replace it.")
        if st.button("Forget this upload", key="predict_forget_upload"):
            st.session_state.pop("predict_upload_case")
            dicom_panel.forget()
            st.rerun()
    else:
        st.info("Upload a scan to segment it. Files stay on this server only while they are read.")
        st.stop()
    case_key, case = st.session_state["predict_upload_case"]
    dicom_study = dicom_panel.held_study(case_key)
else:
    if source is None:
        st.info("Choose a data source in the sidebar, or upload a scan.")
        st.stop()
    try:
        choices = _choices(source.label, str(source.store), str(source.cases_root), source)
    except MedVisionError as error:
        st.error(f"Cannot list the cases of {plain(source.label)}: {plain(error)}")
        st.stop()
    if not choices:
        st.info("This data source has no cases.")
        st.stop()
    ids = [c.case_id for c in choices]
    if st.session_state.get("predict_case") not in ids:
        st.session_state["predict_case"] = ids[0]
    chosen = choices[ids.index(st.selectbox("Case", ids, key="predict_case"))]
    try:
        case = _case(chosen.key, chosen)
    except MedVisionError as error:
        st.error(f"Cannot read case {plain(chosen.case_id)}: {plain(error)}")
        st.stop()
    case_key = chosen.key

if case.missing and not predictor.engine.spec.availability:
    st.error(
        f"{plain(model.label)} needs all four modalities; this case has "
        f"{', '.join(m.upper() for m in case.available)}. Choose the shipped default model in the sidebar: "
        "it takes any subset."
    )
    st.stop()

# --------------------------------------------------------------------- new case or model: reset state
active = (case_key, model_key)
if st.session_state.get("predict_active") != active:
    old = st.session_state.get("predict_job")
    if old is not None:
        old.cancel()
    for stale in ("predict_mc_job", "predict_derived"):
        st.session_state.pop(stale, None)
    st.session_state["predict_active"] = active
    # Started once the visible slice is drawn (below): on 2 cores the whole volume would otherwise take
    # the CPU from the first view, and it reuses the normalised case that the visible slice prepared.
    st.session_state["predict_job"] = VolumeJob(predictor, case, still_wanted=current_session_alive())
    st.session_state["predict_derived"] = {}
    # Open every view through the tumour's centre (or the volume's), along the axis the affine gives it.
    centre = [s // 2 for s in case.shape]
    if case.label is not None and (case.label > 0).any():
        centre = [int(a.mean()) for a in (case.label > 0).nonzero()]
    for view in render.VIEWS:
        st.session_state[f"view_slice_{view}"] = centre[viewer.display_frame(case).slice_axis(view)]
derived: dict = st.session_state["predict_derived"]
job: VolumeJob = st.session_state["predict_job"]
if job.state == "cancelled":  # its session went away (a closed tab) and has come back: predict again
    job = VolumeJob(predictor, case, still_wanted=current_session_alive())
    st.session_state["predict_job"] = job
if "windows" not in derived:
    derived["windows"] = viewer.auto_windows(case)
windows = derived["windows"]

spacing_text = " × ".join(f"{s:.2f}" for s in case.spacing)
truth_text = "with" if case.label is not None else "no"
st.caption(
    f"Case **{plain(case.case_id)}** · {case.shape[0]}×{case.shape[1]}×{case.shape[2]} voxels · spacing "
    f"{spacing_text} mm · {truth_text} ground truth · "
    f"model: {plain(model.label)} ({predictor.target}, {predictor.device})"
)
try:
    model_meta = catalog.model_meta(model)
except MedVisionError:  # the metadata went away since the model was loaded: say nothing about it
    model_meta = {}
expected = subset_expectations.expectation_line(model_meta, case.available)
given_line = subset_expectations.modalities_line(case.available, predictor.set_aside(case.available))
st.caption(given_line + (f" · {expected}" if expected else ""))
weak = subset_expectations.weak_subset_warning(model_meta, case.available)
if weak:
    st.warning(weak)  # built from modality names and numbers only, never from the data
if dicom_study is not None:
    dicom_panel.study_panel(
        dicom_study,
        can_reread=bool(uploads),
        convention=st.session_state.get("view_convention", render.CONVENTIONS[0]),
    )


def _start_volume_job() -> None:
    """Start the whole-volume job if it is still waiting (it waits for the visible slice to be drawn)."""
    if job.state == "pending":
        job.start()


if not job.finished:

    @st.fragment(run_every=1)
    def _volume_progress() -> None:
        _start_volume_job()  # where a run stopped before the viewer
        if job.finished:
            st.rerun()
        st.progress(
            job.progress,
            text=f"Predicting the whole volume in the background… {job.progress:.0%} "
            "(the visible axial slice is predicted first)",
        )

    with volume_progress_slot:
        _volume_progress()
elif job.state == "failed":
    st.error(f"Whole-volume prediction failed: {plain(job.error)}")
result = job.result if job.state == "done" else None


# ------------------------------------------------------------------------------------------- viewer
def _frame() -> render.DisplayFrame:
    """The case's orientation from its affine, in the display convention chosen on the page."""
    return viewer.display_frame(case, st.session_state.get("view_convention", render.CONVENTIONS[0]))


def _step(view: str, delta: int) -> None:
    key = f"view_slice_{view}"
    n = render.view_shape(case.shape, view, _frame())
    st.session_state[key] = min(max(int(st.session_state[key]) + delta, 0), n - 1)


def _auto_window() -> None:
    w = windows[st.session_state.get("view_modality", "flair")]
    st.session_state["view_level"], st.session_state["view_width"] = float(w.level), float(w.width)


@dataclass(frozen=True)
class _Shown:
    """What the viewer draws: one slice of one view, in one modality and window, with these labels."""

    view: str
    index: int
    modality: str
    window: render.Window
    labels: list[int]
    opacity: float
    frame: render.DisplayFrame


# Widgets only one of the two viewers draws; the other keeps their values (undrawn widget state is dropped).
ONE_VIEWER_WIDGETS = (
    "view_plane",
    "view_level",
    "view_width",
    "view_nv_layer",
    "view_nv_layout",
    "view_nv_size",
    "view_nv_grid",
)


def _keep_slice_state() -> None:
    # Keep each view's slice while another view's slider is shown, and each viewer's choices while the
    # other viewer is shown.
    for key in (*(f"view_slice_{name}" for name in render.VIEWS), *ONE_VIEWER_WIDGETS):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def _label_toggles() -> tuple[list[int], float]:
    """(labels shown, overlay opacity) from four small columns."""
    shown = []
    toggles = st.columns(4)
    for col, (value, (key, text, meaning)) in zip(toggles, LABEL_TOGGLES.items(), strict=False):
        if col.checkbox(text, key=key, help=meaning):
            shown.append(value)
    opacity = float(toggles[3].slider("Opacity", 0.0, 1.0, key="view_opacity", step=0.05))
    return shown, opacity


def _plane_and_overlay() -> tuple[str, str, list[int], float]:
    """(view, modality, labels shown, overlay opacity) from the viewer's top row."""
    c1, c2, c3 = st.columns([2, 2, 3])
    view = c1.radio("View", render.VIEWS, key="view_plane", horizontal=True, format_func=str.capitalize)
    modality = c2.selectbox("Modality", MODALITIES, key="view_modality", format_func=str.upper)
    with c3:
        shown, opacity = _label_toggles()
    return view, modality, shown, opacity


def _window_controls(modality: str) -> render.Window:
    if st.session_state.get("wl_for") != (case_key, modality) or "view_level" not in st.session_state:
        st.session_state["wl_for"] = (case_key, modality)
        _auto_window()
    lo, hi = viewer.intensity_range(case, modality)
    with st.expander("Window / level"):
        w1, w2, w3 = st.columns([3, 3, 1])
        level = w1.slider("Level", lo, max(hi, lo + 1.0), key="view_level")
        width = w2.slider("Width", 1e-3, max(hi - lo, 1.0), key="view_width")
        w3.button("Auto", key="view_auto_window", on_click=_auto_window)
    return render.Window(level=float(level), width=float(width))


def _slice_controls(view: str, n: int) -> int:
    s1, s2, s3 = st.columns([1, 12, 1])
    s1.button("◀", key="view_prev", on_click=_step, args=(view, -1), help="previous slice")
    index = s2.slider("Slice", 0, n - 1, key=f"view_slice_{view}", label_visibility="collapsed")
    s3.button("▶", key="view_next", on_click=_step, args=(view, 1), help="next slice")
    return index


def _prediction_panel(s: _Shown) -> tuple[str, object]:
    # Until the whole volume is done only the axial slice on screen can be predicted on its own.
    if result is not None:
        rgb = viewer.render_plane(
            case,
            s.view,
            s.index,
            s.modality,
            s.window,
            result.label,
            labels_shown=s.labels,
            opacity=s.opacity,
            frame=s.frame,
        )
    elif s.view == "axial" and viewer.can_show_single_slices(s.frame):
        slice_pred = predictor.predict_slice(case, s.index)
        rgb = viewer.render_slice_label(
            case,
            s.index,
            s.modality,
            s.window,
            slice_pred.label,
            frame=s.frame,
            labels_shown=s.labels,
            opacity=s.opacity,
        )
    else:
        rgb = viewer.render_plane(case, s.view, s.index, s.modality, s.window, None, frame=s.frame)
        st.caption("The overlay on this view appears when the whole volume is predicted.")
    return "Prediction", rgb


def _truth_panels(s: _Shown) -> list[tuple[str, object]]:
    """Ground truth and, once the volume is predicted, the error map (none for a case without truth)."""
    if case.label is None:
        return []
    truth = viewer.render_plane(
        case,
        s.view,
        s.index,
        s.modality,
        s.window,
        case.label,
        labels_shown=s.labels,
        opacity=s.opacity,
        frame=s.frame,
    )
    panels: list[tuple[str, object]] = [("Ground truth", truth)]
    if result is not None:
        region = st.session_state.get("view_error_region", "WT")
        error_rgb, counts = viewer.render_error(
            case, s.view, s.index, s.modality, s.window, result.label, case.label, region, frame=s.frame
        )
        panels.append((f"Errors ({region}): FP {counts['FP']} · FN {counts['FN']}", error_rgb))
    return panels


def _attention_panels(s: _Shown) -> list[tuple[str, object]]:
    if not st.session_state.get("view_attention"):
        return []
    if s.view != "axial" or not viewer.can_show_single_slices(s.frame):
        st.caption("The attention-gate map is shown on axial slices of scans stored slice by slice axially.")
        return []
    try:
        attention = predictor.attention_map(case, s.index)
        rgb = viewer.render_attention(case, s.index, s.modality, s.window, attention, frame=s.frame)
        return [("Attention gate", rgb)]
    except ValueError as error:
        st.caption(f"No attention map: {plain(error)}")
        return []


def _uncertainty_panels(s: _Shown) -> list[tuple[str, object]]:
    mc_job = st.session_state.get("predict_mc_job")
    if not (st.session_state.get("view_uncertainty") and mc_job is not None and mc_job.state == "done"):
        return []
    uncertainty = viewer.render_map(
        case, s.view, s.index, s.modality, s.window, mc_job.result.uncertainty, vmax=0.5, frame=s.frame
    )
    return [("Uncertainty (MC dropout)", uncertainty)]


# Heat overlays and the top of their colour scale (render.heatmap's vmax for each).
COLOUR_SCALES = {"Attention gate": (1.0, "gate"), "Uncertainty (MC dropout)": (0.5, "std")}


def _show_panels(panels: list[tuple[str, object]], s: _Shown) -> None:
    columns = st.columns(len(panels))
    height = {1: 560, 2: 480, 3: 380}.get(len(panels), 300)  # panels get narrower as they multiply
    pixel_mm = render.pixel_spacing(case.spacing, s.view, s.frame)
    edges = s.frame.edge_labels(s.view)
    for column, (title, rgb) in zip(columns, panels, strict=True):
        column.markdown(f"**{plain(title)}**")  # above the chart: Plotly's toolbar would cover it
        column.plotly_chart(
            figures.slice_figure(
                rgb, pixel_mm=pixel_mm, height=height, edges=edges, colour_scale=COLOUR_SCALES.get(title)
            ),
            key=f"view_fig_{title.split()[0].lower()}",
            config={"displaylogo": False, "scrollZoom": True},
        )


def _dice_strip(view: str, index: int) -> None:
    if result is None or case.label is None:
        return
    key = ("dice_strip", view, st.session_state.get("view_error_region", "WT"))
    if key not in derived:
        derived[key] = viewer.per_slice_dice(result.label, case.label, view, key[2], frame=_frame())
    st.plotly_chart(
        figures.dice_strip(derived[key], index), key="view_dice_strip", config={"displayModeBar": False}
    )


# ------------------------------------------------------------------------------- browser-side viewer
def _derived(key: tuple, make):
    """A value computed once per case and prediction (the page's ``derived`` store)."""
    if key not in derived:
        derived[key] = make()
    return derived[key]


def _nv_layers() -> list[str]:
    layers = [NV_PREDICTION]
    if case.label is not None:
        layers += [NV_TRUTH, NV_ERRORS]
    if result is not None and "WT" in result.regions:
        layers.append(NV_PROBABILITY)
    mc_job = st.session_state.get("predict_mc_job")
    if mc_job is not None and mc_job.state == "done":
        layers.append(NV_UNCERTAINTY)
    return [*layers, NV_NONE]


def _nv_overlay(layer: str, labels: list[int], box: browser_volumes.Box) -> browser_volumes.Overlay | None:
    """The one overlay sent with the scan (None: nothing to draw, or the prediction is not done yet)."""
    region = st.session_state.get("view_error_region", "WT")
    mc_job = st.session_state.get("predict_mc_job")
    if layer == NV_PREDICTION and result is not None:
        make = lambda: browser_volumes.label_overlay(  # noqa: E731
            result.label, case.affine, box, labels_shown=labels, name="prediction.nii.gz"
        )
    elif layer == NV_TRUTH and case.label is not None:
        make = lambda: browser_volumes.label_overlay(  # noqa: E731
            case.label, case.affine, box, labels_shown=labels, name="truth.nii.gz"
        )
    elif layer == NV_ERRORS and result is not None and case.label is not None:
        make = lambda: browser_volumes.error_overlay(result.label, case.label, region, case.affine, box)  # noqa: E731
    elif layer == NV_PROBABILITY and result is not None and "WT" in result.regions:
        probability = result.probabilities[result.regions.index("WT")]
        make = lambda: browser_volumes.heat_overlay(  # noqa: E731
            probability, case.affine, box, vmax=1.0, name="wt_probability.nii.gz"
        )
    elif layer == NV_UNCERTAINTY and mc_job is not None and mc_job.state == "done":
        uncertainty = mc_job.result.uncertainty
        make = lambda: browser_volumes.heat_overlay(  # noqa: E731
            uncertainty, case.affine, box, vmax=0.5, name="uncertainty.nii.gz"
        )
    else:
        return None
    return _derived(("nv_overlay", layer, tuple(labels), region, box, id(mc_job)), make)


def _nv_layer_caption(layer: str, overlay: browser_volumes.Overlay | None) -> str:
    if layer == NV_PREDICTION and result is None:
        return "The prediction overlay appears when the whole volume is predicted. "
    if layer == NV_ERRORS:
        region = st.session_state.get("view_error_region", "WT")
        return (
            f"Errors ({region}): true positive green, false positive magenta, false negative cyan; the "
            f"value under the cursor is the colour code ({browser_volumes.code_legend('errors')}). "
        )
    if layer == NV_PROBABILITY:
        return "WT probability of the plain pass, 0 (clear) to 1 (white), with its colour bar. "
    if layer == NV_UNCERTAINTY:
        return (
            "Uncertainty: std of the WT probability over the MC passes, 0 (clear) to 0.5 (white), with its "
            "colour bar. "
        )
    if layer in (NV_PREDICTION, NV_TRUTH):
        empty = "nothing to draw with these labels; " if overlay is None else ""
        return (
            f"{layer}: {empty}NCR/NET red, ED yellow, ET blue; the value under the cursor is the colour "
            f"code ({browser_volumes.code_legend('labels')}). "
        )
    return ""


def _nv_caption(
    report: browser_volumes.TransferReport,
    layer: str,
    overlay: browser_volumes.Overlay | None,
    box: browser_volumes.Box,
    frame: render.DisplayFrame,
    shown_case: Case,
) -> str:
    """What was sent, what happens in the browser, the overlay's colours and the geometry."""
    text = (
        f"Sent to the browser: **{report.text()}**, once: scrolling (mouse wheel), plane and layout (the "
        "viewer's View menu), crosshair (click), zoom and window/level (right-drag) happen in the browser; "
        f"a new modality or overlay is sent again. {_nv_layer_caption(layer, overlay)}"
        f"{frame.convention.capitalize()} convention, orientation from the affine ({frame.axis_codes()})."
    )
    if box != browser_volumes.full_box(shown_case):
        size = "×".join(str(n) for n in box.shape)
        text += (
            f" This browser {_webgl_words()}, so it gets the scan's box only ({size} voxels, same world "
            "coordinates; voxel numbers in the viewer count from the box's corner)."
        )
    if overlay is not None and overlay.outside_box:
        text += f" {overlay.outside_box} overlay voxels lie outside that box and are not drawn."
    return text


def _nv_native_grid() -> bool:
    """For a DICOM study: show it on its reference series' own grid (the default) or on the model grid."""
    if dicom_study is None:
        return False
    grid = st.radio("Grid", (NV_GRID_NATIVE, NV_GRID_MODEL), key="view_nv_grid", horizontal=True)
    return grid == NV_GRID_NATIVE


def _nv_native_overlay(
    layer: str, labels: list[int], box: browser_volumes.Box
) -> browser_volumes.Overlay | None:
    """The prediction brought back onto the reference series' grid, as the downloads write it."""
    if layer != NV_PREDICTION or result is None or dicom_study is None:
        return None
    native = dicom_study.native
    label = _derived(("native_label",), lambda: native(result.label))
    return _derived(
        ("nv_native_overlay", tuple(labels), box),
        lambda: browser_volumes.label_overlay(
            label, native.case.affine, box, labels_shown=labels, name="prediction.nii.gz"
        ),
    )


def _niivue_viewer() -> None:
    """The scan and one overlay, sent once; slices, planes, zoom and window/level change in the browser."""
    native = _nv_native_grid()
    shown_case = dicom_study.native.case if native else case
    c1, c2, c3, c5, c4 = st.columns([2, 3, 2, 1.5, 4])
    modality = c1.selectbox("Modality", MODALITIES, key="view_modality", format_func=str.upper)
    # On the reference grid only the prediction exists (truth, errors and uncertainty are model-grid maps).
    layers = [NV_PREDICTION, NV_NONE] if native else _nv_layers()
    if st.session_state.get("view_nv_layer") not in layers:
        st.session_state["view_nv_layer"] = layers[0]
    layer = c2.radio("Overlay", layers, key="view_nv_layer", horizontal=True)
    layout = c3.selectbox("Layout", tuple(NV_LAYOUTS), key="view_nv_layout", format_func=NV_LAYOUTS.get)
    support = st.session_state.get(webgl_probe.SUPPORT_KEY)
    small = webgl_probe.needs_small_volumes(support)
    st.session_state.setdefault("view_nv_size", browser_volumes.default_viewer_height(small))
    height = c5.selectbox(
        "Size",
        tuple(browser_volumes.VIEWER_HEIGHTS),
        key="view_nv_size",
        format_func=browser_volumes.VIEWER_HEIGHTS.get,
        help="The viewer's height. Without a graphics card the browser draws every pixel on the CPU: "
        "there Compact is the default and scrolls faster.",
    )
    with c4:
        labels, opacity = _label_toggles()
    # Software WebGL (no GPU) loads the whole 240x240x155 volume about 2.5x slower than the scan's box (a
    # third of the bytes, see browser_volumes); with a graphics card the whole grid keeps the file's voxel
    # numbers.
    box = browser_volumes.scan_box(shown_case) if small else browser_volumes.full_box(shown_case)
    shown_windows = (
        _derived(("native_windows",), lambda: viewer.auto_windows(shown_case)) if native else windows
    )
    window = shown_windows[modality]
    scan = _derived(
        ("nv_scan", native, modality, box),
        lambda: browser_volumes.scan_nifti(shown_case, modality, (window.low, window.high), box),
    )
    overlay = _nv_native_overlay(layer, labels, box) if native else _nv_overlay(layer, labels, box)
    frame = _frame()
    niivue_viewer(
        **browser_volumes.niivue_arguments(
            scan,
            overlay,
            opacity=opacity,
            radiological=frame.convention == "radiological",
            layout=layout,
            height=int(height),
        ),
        key="view_niivue",
    )
    report = browser_volumes.transfer_report(scan, [(layer.lower(), overlay.data)] if overlay else [])
    st.caption(_nv_caption(report, layer, overlay, box, frame, shown_case))
    if native:
        shape = "×".join(str(n) for n in shown_case.shape)
        spacing = " × ".join(f"{x:.2f}" for x in shown_case.spacing)
        st.caption(
            f"On the reference series' own grid ({shape} voxels, {spacing} mm), as acquired and as the "
            "downloads are written; the model ran on its slices resampled to about 1 mm in-plane."
        )
    if st.session_state.get("view_attention"):
        st.caption("The attention-gate map is drawn in the simple images view.")
    _dice_strip("axial", int(st.session_state.get("view_slice_axial", 0)))


def _webgl_words() -> str:
    support = st.session_state.get(webgl_probe.SUPPORT_KEY)
    if support is None:
        return "has not said whether it draws WebGL2 on a graphics card"
    return "draws WebGL2 in software" if support.software else "has no WebGL2"


def _viewer_choice() -> bool:
    """The viewer radio; True when NiiVue is to be drawn. Automatic (the default) asks the browser whether
    it draws WebGL2 on a graphics card (webgl_probe) and says what it chose and why."""
    support = st.session_state.get(webgl_probe.SUPPORT_KEY)  # asked at the top of the page
    v1, v2 = st.columns([3, 5])
    wanted = v1.radio(
        "Viewer", (VIEWER_AUTO, VIEWER_SIMPLE, VIEWER_NIIVUE), key="view_renderer", horizontal=True
    )
    if wanted == VIEWER_AUTO:
        choice = webgl_probe.automatic_viewer(support)
        why = f"chosen automatically: {choice.reason}"
        if support is not None and support.renderer:
            why += f" (renderer: {plain(support.renderer)})"
        niivue = choice.niivue
    else:
        why, niivue = "chosen by you", wanted == VIEWER_NIIVUE
    if not niivue:
        v2.caption(
            f"In use: simple images (each slice drawn on the server), {why}. They need no WebGL; the 3-D "
            "WebGL viewer scrolls, zooms and windows in the browser itself."
        )
        return False
    warning = ""
    if support is None or not support.webgl2:
        warning = " It needs WebGL2: if it stays blank, choose Simple images."
    v2.caption(f"In use: 3-D WebGL viewer (NiiVue), drawn in your browser, {why}.{warning}")
    return True


@st.fragment
def _viewer() -> None:
    keep_widget_values(st.session_state, KEPT_WIDGETS, restore=False)  # fragment reruns skip the top
    _keep_slice_state()
    if _viewer_choice():
        _niivue_viewer()
        return
    view, modality, labels, opacity = _plane_and_overlay()
    window = _window_controls(modality)
    frame = _frame()
    n = render.view_shape(case.shape, view, frame)
    index = _slice_controls(view, n)
    shown = _Shown(view, index, modality, window, labels, opacity, frame)

    panels = [_prediction_panel(shown)]
    panels += _truth_panels(shown)
    panels += _attention_panels(shown)
    panels += _uncertainty_panels(shown)
    _show_panels(panels, shown)
    st.caption(
        f"{view.capitalize()} slice {index} of {n - 1} (voxel index, growing toward "
        f"{frame.index_direction(view)}) · {frame.convention} convention, case axes "
        f"{frame.axis_codes()} from the affine · overlay: NCR/NET red, ED yellow, ET blue · "
        "errors: true positive green, false positive magenta, false negative cyan"
    )
    _dice_strip(view, index)


o1, o2, o3, o4 = st.columns(4)
if case.label is not None:
    o1.selectbox("Error map region", ("WT", "TC", "ET"), key="view_error_region")
o2.checkbox("Attention-gate map", key="view_attention", help="the shallowest attention gate's coefficients")
o3.checkbox("Uncertainty map", key="view_uncertainty", help="MC dropout: run the model several times")
o4.selectbox(
    "Display convention",
    render.CONVENTIONS,
    key="view_convention",
    format_func=str.capitalize,
    help="Radiological: the patient's left on the image's right (ITK-SNAP, Slicer default). "
    "Neurological: the patient's left on the image's left. Anterior (axial) and superior (coronal, "
    "sagittal) are at the top in both; sagittal views have anterior on the left.",
)
_viewer()
_start_volume_job()

# ------------------------------------------------------------------------------------- uncertainty
if st.session_state.get("view_uncertainty"):
    mc_job = st.session_state.get("predict_mc_job")
    if mc_job is not None and mc_job.state == "cancelled":  # its session went away: offer it again
        st.session_state.pop("predict_mc_job")
        mc_job = None
    u1, u2 = st.columns([1, 3])
    samples = u1.number_input("MC samples", min_value=2, max_value=30, key="predict_mc_samples")
    focus = u1.checkbox(
        "Only near the tumour",
        key="predict_mc_focus",
        help=(
            f"Dropout passes only on slices within {forward.MC_FOCUS_MARGIN} of one where the prediction "
            f"gives some voxel a tumour probability of {forward.MC_FOCUS_PROBABILITY:g} or more, and there "
            f"only in a window around those voxels ({forward.MC_FOCUS_CONTEXT} pixels of context, at least "
            "the training patch); elsewhere no spread is shown. Measured on the 9 held-out real cases "
            "(slices only, bench/mc_focus.py): it left out 2.6% of the uncertainty on average (6.4% at "
            "worst) and ranked wrong voxels as well (AUROC 0.913 vs 0.907); the windows leave out about "
            "1% more. On the real case, 6 passes took 17.1 s instead of 30.3 s on 2 cores of an AVX2 CPU "
            "(1.78x) and 3.9 s instead of 5.9 s on a native-bf16 CPU (1.51x), with one network. An "
            "ensemble runs one of its networks per pass, so its passes cost about the same "
            "(1.13x, bench/ensemble_cost.py)."
        ),
    )
    if mc_job is None:
        if u2.button("Estimate uncertainty", key="predict_mc_start"):
            st.session_state["predict_mc_job"] = VolumeJob(
                predictor,
                case,
                mc_samples=int(samples),
                seed=0,
                mc_focus=forward.MC_FOCUS_PROBABILITY if focus else None,
                still_wanted=current_session_alive(),
            ).start()
            st.rerun()
    elif not mc_job.finished:

        @st.fragment(run_every=1)
        def _mc_progress() -> None:
            if mc_job.finished:
                st.rerun()
            left = mc_job.seconds_left
            where = "near the tumour" if mc_job.options.get("mc_focus") else "every brain slice"
            st.progress(
                mc_job.progress,
                text=(
                    f"MC dropout ({mc_job.options['mc_samples']} passes, {where})… {mc_job.progress:.0%}"
                    + (f", about {left:.0f} s left" if left is not None else "")
                ),
            )

        with mc_progress_slot:  # at the top of the page, for the reason given where the slot is made
            _mc_progress()
        u2.caption("Estimating the uncertainty: its progress is shown at the top of the page.")
    elif mc_job.state == "failed":
        st.error(f"Uncertainty estimation failed: {plain(mc_job.error)}")
    else:
        score = mc_job.result.uncertainty_score
        u2.metric(
            "Case uncertainty score",
            f"{score:.4f}" if score is not None else "–",
            help="mean std of the WT probability over the MC passes, inside the predicted tumour (0–0.5)",
        )

if result is None:
    st.stop()

# ------------------------------------------------------------------------------- scores and volumetry
left, right = st.columns(2)
with left:
    st.subheader("Volumetry")
    if "volumetry" not in derived:
        derived["volumetry"] = volumetry(result.label, case.spacing, regions=result.regions)
    st.dataframe(pd.DataFrame(viewer.volumetry_rows(derived["volumetry"])), hide_index=True)
scores = None
if case.label is not None:
    with right:
        st.subheader("Scores against the ground truth")
        if "scores" not in derived:
            with st.spinner("Computing Dice and HD95…"):
                derived["scores"] = viewer.case_scores(result.label, case.label, case.spacing)
        scores = derived["scores"]
        st.dataframe(pd.DataFrame(scores).style.format(precision=3, na_rep="–"), hide_index=True)

mc_job = st.session_state.get("predict_mc_job")
uncertainty_score = mc_job.result.uncertainty_score if mc_job is not None and mc_job.state == "done" else None
d1, d2, _ = st.columns([1, 1, 2])
d1.download_button(
    "Segmentation (NIfTI)",
    icon=":material/download:",
    data=lambda: viewer.segmentation_nifti_bytes(result.label, case, settings.workspace.cache / "exports"),
    file_name=f"{case.case_id}_medvision_seg.nii.gz",
    mime="application/gzip",
    key="predict_download_nifti",
    on_click="ignore",
)
d2.download_button(
    "Report (CSV)",
    icon=":material/download:",
    data=viewer.report_csv(case.case_id, model.label, derived["volumetry"], scores, uncertainty_score),
    file_name=f"{case.case_id}_medvision_report.csv",
    mime="text/csv",
    key="predict_download_csv",
    on_click="ignore",
)
if dicom_study is not None:
    dicom_panel.downloads(dicom_study, result.label, case.case_id, st.columns([1, 1, 2]))

# ------------------------------------------------------------------------------------------- 3-D view
if st.toggle("3-D view of the predicted regions", key="view_3d"):
    if "meshes" not in derived:
        with st.spinner("Building surfaces…"):
            step = 2 if max(case.shape) > 128 else 1
            traces = mesh.region_meshes(result.label, case.affine, step=step)
            brain = mesh.brain_mesh(case.image, case.affine, step=2 * step)
            derived["meshes"] = ([brain] if brain is not None else []) + traces
    if len(derived["meshes"]) <= 1:
        st.info("No tumour predicted in this case.")
    st.plotly_chart(mesh.volume_figure(derived["meshes"]), key="view_3d_fig")
