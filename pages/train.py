"""Train: launch a background training run, watch it live, stop or resume it, and browse past runs."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from medvision.app_support import figures, launcher
from medvision.app_support.failure_summary import failure_summary, shorten_paths
from medvision.app_support.plain_text import code, plain
from medvision.errors import MedVisionError
from medvision.train.config import AMP_MODES, DEVICES, PRESETS, TARGETS, TrainConfig
from medvision.train.rundir import read_metrics, read_status

st.title("Train")
settings = st.session_state.get("mv_settings")
source = st.session_state.get("mv_source")
if settings is None or source is None:
    st.info("Choose a data source in the sidebar to train on it.")
    st.stop()
RUNS = settings.workspace.runs
HOME = settings.workspace.home  # paths in logs and errors are shown relative to it
LIMITS = st.session_state.get("mv_job_limits")  # shared caps on concurrent jobs (set by app.py)
FIELDS = launcher.FORM_FIELDS
OPTIONAL_ZERO = ("steps_per_epoch", "val_max_slices")  # 0 in the form means "not set" (None)


def _apply_preset() -> None:
    preset = PRESETS[st.session_state["train_preset"]]
    for field in FIELDS:
        value = getattr(preset, field)
        st.session_state[f"train_{field}"] = 0 if value is None and field in OPTIONAL_ZERO else value


if "train_preset" not in st.session_state:
    st.session_state["train_preset"] = "demo"
    _apply_preset()
if "train_run_name" not in st.session_state:
    st.session_state["train_run_name"] = launcher.new_run_name()


def _form_config() -> TrainConfig:
    overrides = {}
    for field in FIELDS:
        value = st.session_state[f"train_{field}"]
        overrides[field] = None if field in OPTIONAL_ZERO and not value else value
    return TrainConfig.from_preset(st.session_state["train_preset"], **overrides)


def _launch() -> None:
    name = st.session_state["train_run_name"]
    try:
        config = _form_config()
        started = launcher.start_training(source.store, RUNS, name, config, limits=LIMITS)
    except ValueError as error:
        st.session_state["train_flash"] = ("error", f"Invalid settings: {plain(error)}")
    except MedVisionError as error:
        st.session_state["train_flash"] = ("error", f"Not launched: {plain(error)}")
    else:
        st.session_state["train_flash"] = ("success", f"Started run {plain(name)} (process {started.pid}).")
        st.session_state["train_selected_run"] = name
        st.session_state["train_run_name"] = launcher.new_run_name()


# Stop and Resume sit in the monitor fragment, which reruns alone after their clicks: their messages go
# under their own key and are shown inside it.
def _stop(run_dir) -> None:
    starting = launcher.run_state(run_dir) == "starting"
    stopped = launcher.stop_training(run_dir)
    if not stopped:
        st.session_state["train_run_flash"] = ("warning", f"{plain(run_dir.name)} is not running.")
    elif starting:
        st.session_state["train_run_flash"] = (
            "info",
            f"Asked {plain(run_dir.name)} to stop while it was starting.",
        )
    else:
        st.session_state["train_run_flash"] = (
            "info",
            f"Asked {plain(run_dir.name)} to stop: it finishes its step and saves a checkpoint.",
        )


def _resume(run_dir) -> None:
    try:
        started = launcher.resume_training(run_dir, limits=LIMITS)
    except MedVisionError as error:
        st.session_state["train_run_flash"] = ("error", f"Not resumed: {plain(error)}")
    else:
        st.session_state["train_run_flash"] = (
            "success",
            f"Resumed {plain(run_dir.name)} (process {started.pid}).",
        )


st.caption(f"Training data: {plain(source.label)} ({code(source.store)}). Runs are saved in {code(RUNS)}.")
st.selectbox(
    "Preset",
    list(PRESETS),
    key="train_preset",
    on_change=_apply_preset,
    help="demo: minutes on a laptop CPU · seed: the original project's recipe · brats: our GPU recipe",
)
with st.form("train_form"):
    c1, c2, c3 = st.columns(3)
    c1.text_input("Run name", key="train_run_name")
    c1.selectbox(
        "Target", TARGETS, key="train_target", help="regions: WT, TC, ET · necrotic: the original's target"
    )
    c1.selectbox("Device", DEVICES, key="train_device")
    c2.number_input("Epochs", min_value=1, max_value=1000, key="train_epochs")
    c2.number_input("Batch size", min_value=1, max_value=1024, key="train_batch_size")
    c2.number_input("Learning rate", min_value=1e-7, max_value=1.0, step=1e-4, format="%.1e", key="train_lr")
    c3.selectbox("Mixed precision (AMP)", AMP_MODES, key="train_amp")
    c3.number_input("Base filters", min_value=2, max_value=128, key="train_base_filters")
    c3.number_input(
        "Steps per epoch (0: one pass)", min_value=0, max_value=1_000_000, key="train_steps_per_epoch"
    )
    c3.number_input(
        "Validation slices (0: all)", min_value=0, max_value=1_000_000, key="train_val_max_slices"
    )
    st.form_submit_button("Launch training", type="primary", on_click=_launch, key="train_launch")

flash = st.session_state.pop("train_flash", None)
if flash:
    getattr(st, flash[0])(flash[1])

runs = launcher.app_runs(RUNS)
if not runs:
    st.info("No training runs yet: launch one above.")
    st.stop()

st.subheader("Run monitor")
names = [r.name for r in runs]
if st.session_state.get("train_selected_run") not in names:
    st.session_state["train_selected_run"] = names[0]
selected = st.selectbox("Run", names, key="train_selected_run")
run_dir = RUNS / selected
# Polled while any run has a process, including one that is only exiting (Resume waits for it to end).
live_at_start = frozenset(r.name for r in runs if r.busy)
BADGES = {
    "running": ":green[:material/play_circle:]",
    "finished": ":green[:material/check_circle:]",
    "stopping": ":orange[:material/stop_circle:]",
    "stopped": ":orange[:material/stop_circle:]",
    "failed": ":red[:material/error:]",
    "did not start": ":red[:material/error:]",
    "interrupted": ":orange[:material/warning:]",
}


def _best_text(run: launcher.AppRun) -> str:
    if run.best_dice is None:
        return "–"
    empty = figures.empty_regions(run.best_val)
    return f"{run.best_dice:.3f}" + (f" ({', '.join(empty)}: no tumour in validation)" if empty else "")


def _state_message(run: launcher.AppRun) -> None:
    """What the user should know about how the run ended: one line, and its log behind an expander.

    The trainer's message and log name server paths and end in a traceback: the line shows the
    exception with paths relative to the workspace, the expander the log as plain text.
    """
    log_text = (
        launcher.train_log_tail(run.path) if run.state in ("failed", "interrupted", "did not start") else ""
    )
    if run.state == "failed":
        reason = shorten_paths(run.error, HOME) if run.error else failure_summary(log_text, HOME)
        st.error(f"Run failed: {plain(reason or 'see the log below')}")
    elif run.state == "interrupted":
        st.warning("The training process ended without saying why (killed?). Resume to continue.")
    elif run.state == "did not start":
        exit_status = launcher.exit_code(run.path)
        reason = failure_summary(launcher.launch_log_tail(run.path), HOME)
        st.error(
            "The training process ended before it started training"
            + (f" (exit status {exit_status})" if exit_status is not None else "")
            + (f": {plain(reason)}" if reason else ".")
        )
    elif run.state == "stopped":
        if launcher.can_resume(run.path):
            st.info(f"Stopped at step {run.step or 0}; Resume continues from its last checkpoint.")
        elif not launcher.has_checkpoint(run.path):
            st.info("Stopped before its first checkpoint; start a new run.")
    if log_text:
        with st.expander("Log of the run"):
            st.code(shorten_paths(log_text, HOME), language="text")


@st.fragment(run_every=2 if live_at_start else None)
def _monitor() -> None:
    runs_now = launcher.app_runs(RUNS)
    run = next((r for r in runs_now if r.name == selected), None)
    if run is None or frozenset(r.name for r in runs_now if r.busy) != live_at_start:
        st.rerun()  # a run started or ended (or its folder went): refresh the polling and the run picker
    b1, b2, _ = st.columns([1, 1, 4])
    b1.button(
        "Stop",
        icon=":material/stop:",
        key="train_stop",
        disabled=run.state not in ("starting", "running"),
        on_click=_stop,
        args=(run_dir,),
    )
    b2.button(
        "Resume",
        icon=":material/play_arrow:",
        key="train_resume",
        disabled=not launcher.can_resume(run_dir),
        on_click=_resume,
        args=(run_dir,),
    )
    flash = st.session_state.pop("train_run_flash", None)
    if flash:
        getattr(st, flash[0])(flash[1])

    status = read_status(run_dir) or {}
    metrics = read_metrics(run_dir)
    progress = figures.latest_progress(metrics, status)
    device = f" · device {code(status['device'])}" if status.get("device") and run.state != "starting" else ""
    st.markdown(
        f"**Status:** {BADGES.get(run.state, ':material/hourglass_empty:')} {code(run.label)}{device}"
    )
    text = run.label
    if run.state == "running":
        text += f" · ETA {figures.format_duration(progress['eta_s'])}"
    st.progress(progress["fraction"], text=text)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Loss", f"{progress['loss']:.4f}" if progress["loss"] is not None else "–")
    m2.metric("Learning rate", f"{progress['lr']:.2e}" if progress["lr"] is not None else "–")
    m3.metric("Throughput", f"{progress['slices_per_s']:.1f} slices/s" if progress["slices_per_s"] else "–")
    best, best_mean = progress["best_dice"], progress["best_mean_dice"]
    m4.metric(
        "Best mean val Dice",
        f"{best_mean:.3f}" if best_mean is not None else "–",
        help="best per region: " + ", ".join(f"{plain(k)} {v:.3f}" for k, v in best.items())
        if best
        else None,
    )
    if progress["best_val"]:
        st.caption(
            f"Best validation (epoch {progress['best_epoch']}): "
            + " · ".join(f"{plain(k)} {v:.3f}" for k, v in progress["best_val"].items())
        )
    if progress["best_empty"]:
        st.info(figures.empty_regions_note(progress["best_empty"]), icon=":material/info:")
    _state_message(run)
    if metrics:
        a, b = st.columns(2)
        a.plotly_chart(figures.loss_figure(metrics), key="train_fig_loss")
        b.plotly_chart(figures.dice_figure(metrics), key="train_fig_dice")
        a, b = st.columns(2)
        a.plotly_chart(figures.lr_figure(metrics), key="train_fig_lr")
        b.plotly_chart(figures.throughput_figure(metrics), key="train_fig_speed")
    samples = launcher.sample_images(run_dir)
    if samples:
        st.image(
            str(samples[-1]),
            caption=f"Sample predictions after {plain(samples[-1].stem.replace('_', ' '))} "
            "(truth | prediction)",
            width=900,
        )
        if len(samples) > 1:
            with st.expander(f"Sample predictions of all {len(samples)} epochs"):
                for path in reversed(samples):
                    st.image(str(path), caption=plain(path.stem.replace("_", " ")), width=900)

    # Inside the fragment, so the list follows the runs live too.
    st.subheader("All runs")
    table = pd.DataFrame(
        [
            {
                "run": r.name,
                "state": r.state,
                "progress": r.label.removeprefix(r.state).removeprefix(" · ") or "–",
                "preset": r.preset or "–",
                "best mean val Dice": _best_text(r),
                "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)) if r.updated else "–",
                "error": r.error or "",
            }
            for r in runs_now
        ]
    )
    st.dataframe(table, hide_index=True)


_monitor()
