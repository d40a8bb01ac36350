"""Explore data: dashboards of the selected dataset (from its prepared store) and a sample gallery."""

from __future__ import annotations

import streamlit as st

from medvision.app_support import explore
from medvision.app_support.plain_text import code, plain, plotly_text
from medvision.data.store import SliceStore
from medvision.eda import compute_eda, load_sample

st.title("Explore data")
source = st.session_state.get("mv_source")
settings = st.session_state.get("mv_settings")
if source is None or settings is None:
    st.info("Choose a data source in the sidebar to explore it.")
    st.stop()


def _fingerprint(store_path: str) -> str:
    with SliceStore(store_path) as store:
        return store.fingerprint


@st.cache_data(show_spinner="Scanning the store…", max_entries=8)
def _frame(store_path: str, fingerprint: str):  # noqa: ARG001 - the fingerprint is the cache key
    return explore.slice_frame(store_path)


@st.cache_data(show_spinner="Computing dataset statistics…", max_entries=8)
def _report(store_path: str, fingerprint: str, cache_dir: str):  # noqa: ARG001
    return compute_eda(store_path, cache_dir=cache_dir)


@st.cache_data(max_entries=64)
def _tile(store_path: str, fingerprint: str, case_id: str, k: int, modality: str):  # noqa: ARG001
    return explore.render_sample(load_sample(store_path, case_id, k), modality)


store_path = str(source.store)
fingerprint = _fingerprint(store_path)
table = _frame(store_path, fingerprint)
report = _report(store_path, fingerprint, str(settings.workspace.cache / "eda"))

st.caption(
    f"{plain(source.label)} · {report['n_cases']} cases · {report['n_slices']} brain slices · "
    f"store {code(store_path)}"
)

left, right = st.columns(2)
split = (
    left.segmented_control(
        "Split",
        ["all", "train", "val", "test"],
        key="eda_split",
        default="all",
        required=True,
        help="Patient split used by training (70/15/15, seed 88).",
    )
    or "all"
)
region = (
    right.segmented_control(
        "Region",
        list(explore.REGION_CHOICES),
        key="eda_region",
        default="WT",
        required=True,
        help="WT whole tumour, TC tumour core, ET enhancing tumour, NCR necrotic core, ED edema.",
    )
    or "WT"
)

view = explore.filter_split(table, split)
if view.empty:
    st.info(f"No cases in the {split} split.")
    st.stop()

numbers = explore.headline(view, region)
# Case ids become tick and hover labels, where Plotly renders HTML tags: the figures get escaped ids.
shown = view.assign(case_id=view["case_id"].map(plotly_text))
c1, c2, c3, c4 = st.columns(4)
c1.metric("Patients", numbers["cases"])
c2.metric("Brain slices", numbers["slices"])
c3.metric(f"Slices with {region}", numbers["tumour_slices"])
c4.metric(f"Small {region} slices (< {explore.SMALL_TUMOUR_PIXELS} px)", numbers["small_slices"])

a, b = st.columns(2)
a.plotly_chart(explore.tumour_vs_healthy_figure(shown, region), key="eda_fig_balance_slices")
b.plotly_chart(explore.size_figure(shown, region), key="eda_fig_sizes")
a, b = st.columns(2)
a.plotly_chart(explore.probability_figure(shown, region), key="eda_fig_probability")
b.plotly_chart(explore.slices_per_patient_figure(shown, region), key="eda_fig_per_patient")
a, b = st.columns(2)
a.plotly_chart(explore.volume_figure(shown), key="eda_fig_volumes")
b.plotly_chart(explore.class_balance_figure(shown), key="eda_fig_class_balance")
st.plotly_chart(explore.intensity_figure(report), key="eda_fig_intensity")
st.caption(
    "Intensity histograms cover all cases. If a channel's shape does not match its name (FLAIR and T2 bright "
    "edema, T1ce bright enhancing rim), the dataset's channel order differs from the reader's setting."
)

st.subheader("Sample slices")
g1, g2, g3 = st.columns([2, 2, 1])
modality = g1.selectbox("Modality", list(report["modalities"]), key="eda_gallery_modality")
n_tiles = g2.slider("Slices", 3, 12, 6, key="eda_gallery_n")
seed = int(g3.number_input("Seed", 0, 10_000, 0, key="eda_gallery_seed"))
picks = explore.gallery_picks(store_path, view, region, n_tiles, seed)
if not picks:
    st.info(f"No slices with {region} in this selection.")
else:
    columns = st.columns(min(len(picks), 6))
    for i, (case_id, k) in enumerate(picks):
        columns[i % len(columns)].image(
            _tile(store_path, fingerprint, case_id, k, modality),
            caption=f"{plain(case_id)} · slice {k}",
            width="stretch",
        )
    st.caption("Overlay colours: NCR/NET red, ED yellow, ET blue.")
