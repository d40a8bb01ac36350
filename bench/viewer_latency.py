"""Benchmark: slice change to repaint on the Predict page, NiiVue (in the browser) vs the Streamlit slider.

Starts ``streamlit run app.py`` on a free loopback port with a fresh workspace (the shipped demo model),
drives headless Chromium (Debian's /usr/bin/chromium; WebGL2 there is SwiftShader, i.e. drawn by the CPU),
uploads the real case BraTS2021_00006, times the upload to its first visible prediction (the visible
slice, drawn before the whole volume) and to the whole volume's scores. Then, in one run:

- **NiiVue**: the 3-D WebGL viewer in its axial layout with the prediction overlay, at both of the page's
  viewer sizes (compact, then large); one slice step is a
  mouse-wheel event on its canvas, timed until the browser has presented the next two animation frames
  (NiiVue draws in the event handler; no message goes to the server). The same step is also timed to
  NiiVue's finished drawing (one pixel read back at once, so the figure holds the drawing but not the wait
  for the display's next frame, up to 16.7 ms at 60 Hz; two frames hold at least one such wait), with a
  check that each frame read back is a new picture.
- **slider**: the simple images; one slice step is ArrowRight on the slice slider, timed until the slice
  caption shows the new slice, Streamlit has finished the fragment rerun and the browser has presented
  two frames (the server cuts and colours the slices and Plotly draws them).

    python bench/viewer_latency.py [--steps 20] [--busy-sessions 7] [--note TEXT] [--no-record] [--under-load]

``--busy-sessions N``: while both paths are timed, N more sessions (websocket clients of bench/app_load.py,
one synthetic case each) scroll the simple images on the same server, so the browser's session is one of
N + 1: the NiiVue figure shows what server load does to scrolling that needs no server.

Prints median and 90th percentile per path and their ratio; appends a section to bench/RESULTS.md.
Run it on a quiet machine (``uptime`` load below 0.5): other processes slow both paths unevenly.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
REAL_CASE = ROOT.parent / "shared" / "data" / "brats2021_00006"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
NIIVUE_FRAME = "iframe[title*='niivue']"
SLICE_CAPTION = re.compile(r"^Axial slice \d+ of \d+")

# One wheel step on the NiiVue canvas, resolved once the browser has presented two more frames.
WHEEL_AND_PAINT = """
async (canvas) => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const box = canvas.getBoundingClientRect();
  const start = performance.now();
  canvas.dispatchEvent(new WheelEvent("wheel", {
    deltaY: 100, clientX: box.left + box.width / 2, clientY: box.top + box.height / 2,
    bubbles: true, cancelable: true }));
  await frame();
  await frame();
  return performance.now() - start;
}
"""
# The same step timed to the end of NiiVue's drawing: it draws in the event handler, so reading one pixel back
# right after the event waits until SwiftShader has finished the new frame (no vsync in the figure). A
# central block read after the timing shows that this frame is the new slice (it differs from the last one).
WHEEL_AND_DRAW = """
(canvas) => {
  const gl = canvas.getContext("webgl2");
  const box = canvas.getBoundingClientRect();
  const pixel = new Uint8Array(4);
  const start = performance.now();
  canvas.dispatchEvent(new WheelEvent("wheel", {
    deltaY: 100, clientX: box.left + box.width / 2, clientY: box.top + box.height / 2,
    bubbles: true, cancelable: true }));
  gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
  const ms = performance.now() - start;
  const size = 64, block = new Uint8Array(size * size * 4);
  gl.readPixels((gl.drawingBufferWidth - size) >> 1, (gl.drawingBufferHeight - size) >> 1, size, size,
                gl.RGBA, gl.UNSIGNED_BYTE, block);
  let sum = 0, hash = 0;
  for (let i = 0; i < block.length; i++) { sum += block[i]; hash = (hash * 31 + block[i]) >>> 0; }
  return [ms, sum > 0 ? hash : -1];
}
"""
TWO_FRAMES = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_app(home: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, **(extra_env or {}), "MEDVISION_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("MEDVISION_DATA_ROOTS", None)
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true"]
    command += ["--server.port", str(port), "--browser.gatherUsageStats", "false"]
    log = (home / "streamlit.log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"streamlit did not start: {(home / 'streamlit.log').read_text()[-2000:]}")


def _settle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=240_000
    )


def _canvas(page):
    """The NiiVue viewer's canvas (a locator inside the component's frame)."""
    return page.frame_locator(NIIVUE_FRAME).first.locator("canvas").first


def _still_canvas(page) -> None:
    """Wait until two screenshots of the viewer's canvas a second apart are equal (loading is over)."""
    canvas = _canvas(page)
    last = b""
    for _ in range(300):
        shot = canvas.screenshot(timeout=240_000)
        if shot == last:
            return
        last = shot
        page.wait_for_timeout(1000)
    raise SystemExit("the viewer did not settle")


@dataclass
class UploadTimes:
    first_prediction_s: float  # files handed to the uploader -> the visible slice's prediction drawn
    whole_volume_s: float  # -> the whole volume's scores shown
    upload_clicks: int  # clicks on "Upload files" until the uploader showed (a lost click is clicked again)


def _choose_upload(page, tries: int = 4) -> int:
    """Click "Upload files" until the uploader shows, as a user would when a click is lost (the open
    lost-click defect: a click while a rerun replaces the radio can do nothing); returns the clicks."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # imported with playwright in main()

    for click in range(1, tries + 1):
        try:
            page.get_by_text("Upload files").first.click(timeout=20_000)
            _settle(page)
            page.locator("input[type=file]").first.wait_for(state="attached", timeout=20_000)
            return click
        except PlaywrightTimeout:
            continue
    raise SystemExit(f"choosing 'Upload files' never showed the uploader ({tries} clicks)")


def _open_case(page, url: str) -> UploadTimes:
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Research demo — not for clinical use").first.wait_for(timeout=240_000)
    _settle(page)
    page.get_by_test_id("stSidebarNav").get_by_text("Predict", exact=True).click()
    _settle(page)
    clicks = _choose_upload(page)
    # The run after "Upload files" stops before the viewer (nothing uploaded yet): no chart is on the page.
    assert page.locator(".stPlotlyChart").count() == 0
    start = time.perf_counter()
    page.locator("input[type=file]").set_input_files(sorted(str(p) for p in REAL_CASE.glob("*.nii*")))
    # First visible prediction: the prediction panel's figure has drawn its slice image.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stPlotlyChart')].some((c) => c.querySelector('image'))",
        polling="raf",
        timeout=240_000,
    )
    page.evaluate(TWO_FRAMES)
    first = time.perf_counter() - start
    page.get_by_text("Scores against the ground truth").wait_for(timeout=600_000)
    whole = time.perf_counter() - start
    # The simple images are the automatic choice here (SwiftShader); the 3-D viewer is one click away.
    page.get_by_text("In use: simple images", exact=False).first.wait_for(timeout=240_000)
    _settle(page)
    page.get_by_text("3-D WebGL (NiiVue)", exact=True).click()
    page.get_by_text("In use: 3-D WebGL viewer", exact=False).first.wait_for(timeout=240_000)
    page.get_by_label("Layout").click()
    page.get_by_role("option", name="Axial", exact=True).click()
    _settle(page)
    return UploadTimes(first, whole, clicks)


class BusySessions:
    """``n`` websocket sessions scrolling the simple images on the server until stopped (app_load's)."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.stop_event = threading.Event()
        self.results: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        from app_load import run_session

        async def together() -> list:
            return await asyncio.gather(
                *(
                    run_session(self.port, f"Synth_{i:03d}", 100_000, 0.1, i, stop=self.stop_event)
                    for i in range(self.n)
                )
            )

        self.results = asyncio.run(together())

    def __enter__(self) -> BusySessions:
        if self.n:
            self.thread.start()
            time.sleep(10)  # let every session open the page and start its volume
        return self

    def __exit__(self, *_exc) -> None:
        self.stop_event.set()
        if self.n:
            self.thread.join(300)

    def summary(self) -> str:
        clicks = [r.seconds for s in self.results for r in s.requests if r.kind == "next"]
        failed = sum(1 for s in self.results if s.error)
        if not clicks:
            return f"{self.n} busy sessions: no slice step finished ({failed} failed)"
        return (
            f"{self.n} busy sessions (synthetic cases, simple images, 'next slice' every 0.05-0.15 s): "
            f"{len(clicks)} server-drawn slice steps meanwhile, "
            f"median {statistics.median(clicks) * 1000:.0f} ms; "
            f"failed sessions: {failed}"
        )


def time_niivue(page, steps: int) -> list[float]:
    """Milliseconds from a wheel event on the canvas to two presented frames, ``steps`` times."""
    _still_canvas(page)
    canvas = _canvas(page)
    handle = canvas.element_handle()
    times = []
    for _ in range(steps):
        times.append(float(handle.evaluate(WHEEL_AND_PAINT)))
        page.wait_for_timeout(100)
    return times


def time_niivue_draw(page, steps: int) -> tuple[list[float], int]:
    """Milliseconds from a wheel event to NiiVue's finished drawing (pixels readable), ``steps`` times, and
    how many of those frames were a new, non-blank picture (the check that the draw happened in time)."""
    _still_canvas(page)
    handle = _canvas(page).element_handle()
    times, new_frames, last = [], 0, None
    for _ in range(steps):
        ms, picture = handle.evaluate(WHEEL_AND_DRAW)
        times.append(float(ms))
        new_frames += int(picture != -1 and picture != last)
        last = picture
        page.evaluate(TWO_FRAMES)
        page.wait_for_timeout(100)
    return times, new_frames


def choose_viewer_size(page, label: str) -> int:
    """Pick the NiiVue viewer's size on the page; returns the canvas height in CSS pixels once it is drawn."""
    page.get_by_role("combobox", name="Size", exact=True).click()
    page.get_by_role("option", name=label, exact=True).click()
    _settle(page)
    _still_canvas(page)
    return int(round(_canvas(page).bounding_box()["height"]))


def time_slider(page, steps: int) -> list[float]:
    """Milliseconds from ArrowRight on the slice slider to the redrawn slice, ``steps`` times."""
    page.get_by_text("Simple images", exact=True).click()
    page.get_by_text("In use: simple images", exact=False).first.wait_for(timeout=120_000)
    _settle(page)
    page.locator(".stPlotlyChart").first.wait_for(timeout=120_000)
    times = []
    for _ in range(steps):
        old = page.get_by_text(SLICE_CAPTION).first.inner_text()
        page.get_by_role("slider").last.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "(old) => [...document.querySelectorAll('p')].some("
            "(p) => /^Axial slice \\d+ of/.test(p.innerText) && p.innerText !== old)",
            arg=old,
            polling="raf",
            timeout=120_000,
        )
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
            polling="raf",
            timeout=120_000,
        )
        page.evaluate(TWO_FRAMES)
        times.append((time.perf_counter() - start) * 1000.0)
        page.wait_for_timeout(100)
    return times


def _summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="slice steps timed per path")
    parser.add_argument(
        "--busy-sessions", type=int, default=0, help="more sessions scrolling on the same server meanwhile"
    )
    parser.add_argument("--note", default="", help="a line for RESULTS.md (e.g. how quiet the machine was)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument(
        "--under-load",
        action="store_true",
        help="other work shares the cores: say so in the RESULTS.md heading and next to the figures",
    )
    args = parser.parse_args()
    if not CHROMIUM.is_file() or not REAL_CASE.is_dir():
        raise SystemExit("needs /usr/bin/chromium and ../shared/data/brats2021_00006")
    from bench_report import Reporter, finish_report, machine_calibration
    from playwright.sync_api import sync_playwright

    from medvision.app_support.browser_volumes import COMPACT_HEIGHT, LARGE_HEIGHT, VIEWER_HEIGHTS
    from medvision.precision import cpu_kind

    calibration, load_before = machine_calibration(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="viewer_latency_") as tmp:
        extra_env = {}
        if args.busy_sessions:
            from app_load import prepare_workspace

            # The busy sessions' cohort, made before the server starts (as bench/app_load.py does).
            extra_env, _model = prepare_workspace(Path(tmp), max(args.busy_sessions, 2), (96, 128, 128))
        process, url = _start_app(Path(tmp), extra_env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                upload = _open_case(page, url)
                port = int(url.rsplit(":", 1)[1])
                with BusySessions(port, args.busy_sessions) as busy:
                    sizes = {}
                    # Both viewer sizes in this run, compact first (the default in software WebGL).
                    for label in (VIEWER_HEIGHTS[COMPACT_HEIGHT], VIEWER_HEIGHTS[LARGE_HEIGHT]):
                        height = choose_viewer_size(page, label)
                        niivue = time_niivue(page, args.steps)
                        sizes[label] = (height, niivue, *time_niivue_draw(page, args.steps))
                    slider = time_slider(page, args.steps)
                browser.close()
        finally:
            process.terminate()
            process.wait(30)
    report = Reporter()
    report(f"- CPU: {cpu_kind()}; browser: headless Chromium, WebGL2 by SwiftShader (no GPU)")
    report(
        f"- what: one axial slice step on BraTS2021_00006 (240x240x155; NiiVue is sent the scan's box) with "
        f"its prediction, {args.steps} steps per path; sessions on the server while timing: "
        f"{1 + args.busy_sessions}"
    )
    report(
        f"- upload of the case's 4 files to the first visible prediction (the visible slice): "
        f"{upload.first_prediction_s:.1f} s; to the whole volume's scores: {upload.whole_volume_s:.1f} s "
        f"(before the busy sessions started; clicks on 'Upload files' until the uploader showed: "
        f"{upload.upload_clicks})"
    )
    s_med, s_p90 = _summary(slider)
    drawn_medians, frame_medians = {}, {}
    for label, (height, niivue, drawn, new_frames) in sizes.items():
        n_med, n_p90 = _summary(niivue)
        d_med, d_p90 = _summary(drawn)
        drawn_medians[label], frame_medians[label] = d_med, n_med
        report(
            f"- NiiVue {label.lower()} ({height} px tall canvas), wheel to two presented frames: median "
            f"{n_med:.1f} ms, p90 {n_p90:.1f} ms; to its finished drawing (one pixel read back, no wait for "
            f"the display's next frame): median {d_med:.1f} ms, p90 {d_p90:.1f} ms; {new_frames} of "
            f"{args.steps} frames read back were a new picture"
        )
    compact, large = VIEWER_HEIGHTS[COMPACT_HEIGHT], VIEWER_HEIGHTS[LARGE_HEIGHT]
    frame_ratio = frame_medians[large] / frame_medians[compact]
    report(f"- two frames, large / compact: {frame_ratio:.2f}x (medians)")
    if all(new_frames == args.steps for *_, new_frames in sizes.values()):
        drawn_ratio = drawn_medians[large] / drawn_medians[compact]
        report(f"- drawing, large / compact: {drawn_ratio:.2f}x (medians)")
    else:  # some read-backs were not the new slice: those drawing figures do not time a finished frame
        report("- drawing figures not compared: not every frame read back was a new picture")
    report(f"- Streamlit slider (rerun, Plotly redraw): median {s_med:.1f} ms, p90 {s_p90:.1f} ms")
    ratio = s_med / frame_medians[compact]
    report(f"- ratio: the NiiVue slice change (compact, two frames) repaints {ratio:.1f}x sooner (medians)")
    if args.busy_sessions:
        report(f"- {busy.summary()}")
    finish_report(
        "viewer_latency (bench/viewer_latency.py)",
        report,
        calibration=calibration,
        load_before=load_before,
        under_load=args.under_load,
        note=args.note,
        record=not args.no_record,
    )


if __name__ == "__main__":
    main()
