"""Models: the card of the selected checkpoint: how it was trained, its metrics, its training curves."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from medvision.app_support import catalog, figures
from medvision.app_support.plain_text import code, plain
from medvision.errors import MedVisionError
from medvision.train.rundir import epochs_summary, read_metrics

st.title("Models")
settings = st.session_state.get("mv_settings")
model = st.session_state.get("mv_model")
if settings is None or model is None:
    st.info("No model selected: train one on the Train page, or ship checkpoints/default.safetensors.")
    st.stop()

try:
    meta = catalog.model_meta(model)
except MedVisionError as error:
    st.error(f"Cannot read the checkpoint {plain(model.checkpoint.name)}: {plain(error)}")
    st.stop()

# Labels, metadata values and keys come from checkpoint files in the workspace: shown as plain text.
st.subheader(plain(model.label))
st.caption(code(model.checkpoint))
summary = catalog.summary_fields(meta)
architecture = meta.get("model", {})
c1, c2, c3, c4 = st.columns(4)
train_config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
c1.metric("Target", plain(meta.get("target", "–")))
c2.metric("Preset", plain(meta.get("preset") or train_config.get("preset", "–")))
c3.metric("Epochs trained", plain(epochs_summary(meta)))
best = meta.get("best_val_mean_dice")
val = meta.get("val") if isinstance(meta.get("val"), dict) else None
# The best mean is this checkpoint's own validation only when it is the best checkpoint.
best_empty = figures.empty_regions(val) if meta.get("kind") == "best" else []
c4.metric(
    "Best val mean Dice",
    f"{best:.3f}" if isinstance(best, (int, float)) else "–",
    help=figures.empty_regions_note(best_empty) if best_empty else None,
)
if best_empty:
    st.caption(
        f"The best mean includes {plain(', '.join(best_empty))} at 1.000 without any such tumour in the "
        "validation data: see Metrics below."
    )

members = catalog.ensemble_rows(meta)
if members:
    # Each member's own validation; the ensemble's figures are its cross-validation in the card below.
    specialists = [m for m in members if m["predicts"] != "any subset"]
    if specialists:
        st.markdown(
            f"**An ensemble of {len(members) - len(specialists)} networks** whose probabilities are averaged,"
            f" and {len(specialists)} more trained for one subset alone, which predict that subset instead."
        )
        if any(m["val mean Dice"] is None for m in specialists):
            st.caption(
                "A specialist whose own validation ran with all four modalities, which it never gets in use, "
                "has its figure left out here; its cross-validated figures are the model card's row of its "
                "subset."
            )
        else:
            st.caption("Each specialist's own validation gave it its one subset, the input it gets in use.")
    else:
        st.markdown(f"**An ensemble of {len(members)} networks**: their probabilities are averaged.")
    # As text: the grid draws a missing number (a specialist's) as "None" whatever the style says.
    table = pd.DataFrame(members).set_index("member")
    table["val mean Dice"] = ["–" if pd.isna(v) else f"{v:.3f}" for v in table["val mean Dice"]]
    st.dataframe(table)
set_aside = catalog.set_aside_note(meta)
if set_aside:
    st.markdown(plain(set_aside))
teacher = catalog.teacher_note(meta)
if teacher:
    st.markdown(plain(teacher))

card = catalog.model_card_text(model, settings)
if card:
    with st.expander("Model card", expanded=True):
        if model.checkpoint in settings.shipped_checkpoints:
            # The card shipped with the repository's checkpoints; its pictures are read from that folder.
            for kind, value, alt in catalog.card_parts(card, model.checkpoint.parent):
                if kind == "image":
                    st.image(str(value), caption=alt)
                else:
                    st.markdown(value)
        else:  # any other card is the workspace's: its text, never its links or images
            st.code(card, language="markdown", wrap_lines=True)

tables = catalog.metric_tables(meta)
note = catalog.validation_note(meta)
if tables:
    st.subheader("Metrics")
    names = {"val": "Validation", "test": "Test", "train": "Training"}
    for title, rows in tables:
        pretty = " / ".join(
            names.get(part, part.replace("_", " ").capitalize()) for part in title.split(" / ")
        )
        st.markdown(f"**{plain(pretty)}**")
        if title == "val" and note:
            st.caption(note)  # built from integers of the metadata only
        st.dataframe(pd.DataFrame(rows).T.style.format(precision=3, na_rep="–"))
        empty = figures.empty_regions(rows)
        if empty:
            st.info(figures.empty_regions_note(empty), icon=":material/info:")
elif note:
    st.info(note)
else:
    st.info("This checkpoint's metadata holds no metrics.")

left, right = st.columns(2)
with left:
    st.markdown("**Architecture**")
    st.dataframe(pd.DataFrame({"value": {k: str(v) for k, v in architecture.items()}}))
with right:
    st.markdown("**Facts**")
    st.dataframe(pd.DataFrame({"value": {k: str(v) for k, v in summary.items()}}))
if isinstance(meta.get("train_config"), dict):
    with st.expander("Training settings"):
        st.dataframe(pd.DataFrame({"value": {k: str(v) for k, v in meta["train_config"].items()}}))
with st.expander("Checkpoint metadata (JSON)"):
    st.json(meta, expanded=False)

run_dir = catalog.run_dir_of(model, meta)
if run_dir is None:
    st.caption("The training log of this model is not available, so no training curves are shown.")
    st.stop()
metrics = read_metrics(run_dir)
st.subheader("Training curves")
st.caption(f"From {code(run_dir / 'metrics.jsonl')}")
a, b = st.columns(2)
a.plotly_chart(figures.loss_figure(metrics), key="models_fig_loss")
b.plotly_chart(figures.dice_figure(metrics), key="models_fig_dice")
a, b = st.columns(2)
a.plotly_chart(figures.lr_figure(metrics), key="models_fig_lr")
b.plotly_chart(figures.throughput_figure(metrics), key="models_fig_speed")
