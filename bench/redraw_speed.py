"""Benchmark: server-side time to redraw one slice of an already predicted case in the Predict viewer.

What a slider move costs on the server once the prediction is cached: take the plane, window it, blend
the label overlay, and build + serialise the Plotly figure that Streamlit sends to the browser. The app's
path (``viewer.render_plane`` + ``figures.slice_figure``: one vectorised lookup-table blend and a PNG in
the figure) is compared with a naive redraw (float blending with one pass per label and ``px.imshow``
of the RGB array, which ships the pixels as JSON numbers). Goal: <= 150 ms per redraw.

    python bench/redraw_speed.py [--repeats 40] [--case ../shared/data/brats2021_00006]

Prints median / p95 per redraw for both paths and their ratio, and appends a row to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medvision.app_support import figures, render, viewer  # noqa: E402
from medvision.data.case import MODALITIES, Case  # noqa: E402

GOAL_MS = 150.0
DEFAULT_CASE = REPO.parent / "shared" / "data" / "brats2021_00006"


def load_case(path: Path | None) -> Case:
    """The real BraTS case when present (240x240x155), else a full-size synthetic phantom."""
    if path is not None and path.exists():
        from medvision.data.readers import load_case as read

        return read(path)
    from medvision.data.synthetic import make_phantom

    return make_phantom("Synth_bench", seed=0)


def fast_redraw(case: Case, label: np.ndarray, view: str, index: int, window: render.Window) -> str:
    rgb = viewer.render_plane(case, view, index, "flair", window, label, opacity=0.45)
    frame = viewer.display_frame(case)
    pixel_mm = render.pixel_spacing(case.spacing, view, frame)
    fig = figures.slice_figure(rgb, pixel_mm=pixel_mm, title="Prediction")
    return fig.to_json()


def naive_redraw(case: Case, label: np.ndarray, view: str, index: int, window: render.Window) -> str:
    import plotly.express as px

    frame = viewer.display_frame(case)
    plane = render.take_slice(case.image[MODALITIES.index("flair")], view, index, frame).astype(np.float64)
    labels = render.take_slice(label, view, index, frame)
    grey = np.clip((plane - window.low) / window.width, 0.0, 1.0) * 255.0
    rgb = np.stack([grey, grey, grey], axis=-1)
    for value, colour in render.LABEL_COLOURS.items():  # one full-plane pass per label, float blending
        mask = (labels == value)[..., None]
        rgb = np.where(mask, rgb * 0.55 + np.asarray(colour, dtype=np.float64) * 0.45, rgb)
    fig = px.imshow(rgb.astype(np.uint8), title="Prediction")
    return fig.to_json()


def time_path(
    fn, case: Case, label: np.ndarray, window: render.Window, repeats: int, seed: int
) -> list[float]:
    rng = np.random.default_rng(seed)
    times = []
    for i in range(repeats):
        view = render.VIEWS[i % len(render.VIEWS)]
        index = int(rng.integers(0, render.view_shape(case.shape, view, viewer.display_frame(case))))
        start = time.perf_counter()
        fn(case, label, view, index, window)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def device_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)

    case = load_case(args.case)
    # A cached prediction stands in as the truth label (or a phantom label): same arrays, same work.
    label = case.label if case.label is not None else np.zeros(case.shape, dtype=np.uint8)
    window = viewer.auto_windows(case)["flair"]
    for fn in (fast_redraw, naive_redraw):  # warm-up: imports, plotly validators
        fn(case, label, "axial", case.shape[0] // 2, window)
    fast = time_path(fast_redraw, case, label, window, args.repeats, seed=0)
    naive = time_path(naive_redraw, case, label, window, args.repeats, seed=0)

    def summary(times: list[float]) -> tuple[float, float]:
        return statistics.median(times), float(np.percentile(times, 95))

    fast_med, fast_p95 = summary(fast)
    naive_med, naive_p95 = summary(naive)
    ratio = naive_med / fast_med
    verdict = "meets" if fast_p95 <= GOAL_MS else "MISSES"
    print(f"case {case.case_id} {case.shape}, {args.repeats} redraws over axial/coronal/sagittal slices")
    print(
        f"app redraw   : median {fast_med:6.1f} ms, p95 {fast_p95:6.1f} ms "
        f"({verdict} the {GOAL_MS:.0f} ms goal)"
    )
    print(f"naive redraw : median {naive_med:6.1f} ms, p95 {naive_p95:6.1f} ms")
    print(f"ratio        : app redraw is {ratio:.1f}x faster than the naive one (median)")

    if not args.no_record:
        results = REPO / "bench" / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n\n")
        command = "python bench/redraw_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        row = (
            f"\n## redraw_speed ({dt.date.today().isoformat()})\n\n"
            f"- device: {device_name()}; command: `{command.strip()}`\n"
            f"- case {case.case_id} {case.shape}, {args.repeats} redraws "
            "(render overlay + build and serialise "
            "the Plotly figure)\n"
            f"- app redraw: median {fast_med:.1f} ms, p95 {fast_p95:.1f} ms "
            f"(goal <= {GOAL_MS:.0f} ms: {verdict})\n"
            "- naive redraw (per-label float blend + px.imshow of the RGB array): "
            f"median {naive_med:.1f} ms, "
            f"p95 {naive_p95:.1f} ms\n"
            f"- ratio naive / app: {ratio:.1f}x\n"
        )
        with results.open("a") as handle:
            handle.write(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
