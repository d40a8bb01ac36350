"""MedVision Streamlit entry point: `streamlit run app.py`.

Builds the sidebar (data source + model) that every page shares through ``st.session_state`` and
routes to the pages in ``pages/`` with ``st.navigation``. On first start with nothing configured it makes
a small synthetic cohort in the workspace so a new user sees a working app without downloads.
Research demo: not for clinical use.
"""

from __future__ import annotations

import os

import streamlit as st

from medvision.app_support import catalog
from medvision.app_support.job_limits import limits_from_env
from medvision.app_support.plain_text import code, plain
from medvision.app_support.workspace import PathNotAllowedError, data_folders, settings_from_env
from medvision.errors import MedVisionError

st.set_page_config(page_title="MedVision", page_icon=":material/neurology:", layout="wide")

SOURCE_DEMO = "Synthetic demo cohort"
SOURCE_SERVER = "Folder or store on the server"

try:
    settings = settings_from_env()
    job_limits = limits_from_env(os.environ, settings.workspace.home)
except ValueError as error:  # a mistyped MEDVISION_* variable: say which, do not show a traceback
    st.error(f"MedVision settings are invalid: {plain(error)}")
    st.stop()
st.session_state["mv_settings"] = settings
# Shared by every session: how many training runs and prepares may run at once on this workspace.
st.session_state["mv_job_limits"] = job_limits


def _demo_source() -> catalog.DataSource:
    """The synthetic cohort, made on first start (seconds) with visible progress."""
    demo = catalog.demo_source(settings.workspace)
    if st.session_state.get("mv_demo_ready") == str(demo.store) and demo.store.is_file():
        return demo
    from medvision.data.store import is_store

    if not is_store(demo.store):
        with st.status("First start: making a small synthetic cohort…", expanded=True) as status:
            demo = catalog.ensure_demo_cohort(settings, progress=status.write)
            status.update(label="Synthetic demo cohort ready", state="complete", expanded=False)
    st.session_state["mv_demo_ready"] = str(demo.store)
    return demo


def _server_source(path_text: str) -> catalog.DataSource | None:
    """A confined server folder or store; a folder is prepared into a store by a background process."""
    from medvision.app_support import launcher
    from medvision.app_support.failure_summary import failure_summary, shorten_paths
    from medvision.app_support.workspace import confine

    try:
        path = confine(path_text, settings.data_roots)
        source = catalog.server_source(path, settings.workspace.ensure())
    except PathNotAllowedError as error:
        st.sidebar.error(f"Path refused: {plain(error)}")
        return None
    if catalog.is_ready(source):
        return source
    job_dir = launcher.prepare_dir(source.store)
    if not launcher.is_busy(job_dir):
        if st.session_state.get("mv_prepare_started") == str(source.store):
            # The process ended without a store: say why in one line, the output on request.
            output = launcher.launch_log_tail(job_dir, 20)
            reason = failure_summary(output, settings.workspace.home)
            st.sidebar.error(f"Preparing {plain(path.name)} failed: {plain(reason)}")
            with st.sidebar.expander("Output of the prepare process"):
                st.code(shorten_paths(output, settings.workspace.home), language="text")
            if st.sidebar.button("Try again", key="prepare_retry"):
                st.session_state.pop("mv_prepare_started", None)
                st.rerun()
            return None
        try:
            launcher.start_prepare(path, source.store, limits=job_limits)
        except MedVisionError as error:
            st.sidebar.error(f"Cannot prepare {plain(path.name)}: {plain(error)}")
            return None
        st.session_state["mv_prepare_started"] = str(source.store)

    @st.fragment(run_every=2)
    def _wait() -> None:
        if not launcher.is_busy(job_dir):
            st.rerun()
        st.info(
            f"Preparing {plain(path.name)} into a slice store (crop to brain, z-score)… this runs in the "
            "background; large datasets take minutes.",
            icon=":material/hourglass_top:",
        )

    with st.sidebar:
        _wait()
    return None


with st.sidebar:
    st.markdown("### :material/neurology: MedVision")
    kind = st.radio("Data source", (SOURCE_DEMO, SOURCE_SERVER), key="source_kind")
    source: catalog.DataSource | None
    if kind == SOURCE_SERVER:
        roots = plain(", ".join(str(r) for r in settings.data_roots))
        folders = [str(p) for p in data_folders(settings)]
        if folders:

            def _pick() -> None:
                st.session_state["server_path"] = st.session_state["server_pick"] or ""

            st.selectbox(
                "Folders in the data folders (real cases, e.g.)",
                [""] + folders,
                key="server_pick",
                on_change=_pick,
                format_func=lambda p: plain(p) if p else "choose, or type a path below",
            )
        st.text_input(
            "Server path (BraTS folder, case folder or prepared store)",
            key="server_path",
            help=f"Must lie under one of the allowed data folders: {roots}",
        )
        source = _server_source(st.session_state["server_path"]) if st.session_state["server_path"] else None
        if source is None and not st.session_state["server_path"]:
            st.caption(f"Allowed folders: {roots}")
    else:
        source = None
    models = catalog.model_choices(settings)
    labels = [m.label for m in models]
    if labels:
        if st.session_state.get("model_label") not in labels:
            st.session_state["model_label"] = labels[0]
        st.selectbox("Model", labels, key="model_label")
        model = models[labels.index(st.session_state["model_label"])]
    else:
        st.caption("No model yet: train one on the Train page.")
        model = None
    st.caption(f"Workspace: {code(settings.workspace.home)}")

if kind == SOURCE_DEMO:
    source = _demo_source()

st.session_state["mv_source"] = source
st.session_state["mv_model"] = model

# URL paths differ from the file names on purpose: with a pages/ folder present, a URL equal to a file
# name also matches Streamlit's old folder-based page lookup, which runs the page without this script.
pages = [
    st.Page(
        "pages/explore.py",
        title="Explore data",
        icon=":material/bar_chart:",
        url_path="explore-data",
        default=True,
    ),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="training"),
    st.Page("pages/predict.py", title="Predict", icon=":material/search:", url_path="prediction"),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:", url_path="model-card"),
]
page = st.navigation(pages)
# Written after st.navigation so it is part of every page, not only the first one shown.
st.warning(
    "Research demo — not for clinical use. Predictions are not a diagnosis.", icon=":material/warning:"
)
# Pages that keep their widgets' values across visits (kept_state.py) ask which page ran before them.
st.session_state["mv_previous_page"] = st.session_state.get("mv_current_page")
st.session_state["mv_current_page"] = page.url_path
page.run()
