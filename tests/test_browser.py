"""End-to-end test in a real browser: `streamlit run app.py` driven by headless Chromium (playwright).

Skipped, with the reason, where /usr/bin/chromium is missing (a developer machine; `.ci/run` installs it with
apt-get and fails on any skip that is not CUDA-only; `playwright install` is not used). Screenshots of every
page go to test-artifacts/.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021_00006"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed"),
    pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `streamlit run app.py` on a free loopback port with a fresh workspace."""
    from tiny_checkpoint import save_tiny_checkpoint

    from medvision.app_support.workspace import settings_from_env

    home = tmp_path_factory.mktemp("browser_home")
    env = dict(os.environ)
    env.update(
        MEDVISION_HOME=str(home),
        MEDVISION_DEMO_CASES="4",
        MEDVISION_DEMO_SIZE="48,64,64",
        PYTHONPATH=str(REPO),
    )
    env.pop("MEDVISION_DATA_ROOTS", None)
    settings = settings_from_env(env)
    if not settings.default_checkpoint.is_file():
        save_tiny_checkpoint(settings.workspace.ensure().models / "tiny.safetensors")
    port = _free_port()
    log = open(home / "streamlit.log", "wb")  # noqa: SIM115 - closed in the teardown
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start: {(home / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, home
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def _settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running…' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _chart_png(page, index: int, attempts: int = 8) -> bytes:
    """A screenshot of the ``index``-th Plotly chart once it holds still.

    A chart the page re-renders is replaced in the DOM; capturing it at that moment fails with "Element is
    not attached to the DOM", and the copy being replaced can sit hidden ("element is not visible") while
    a loaded machine renders the new one. So settle, take the freshly located visible chart, and retry.
    """
    for attempt in range(attempts):
        _settle(page)
        try:
            return page.locator(".stPlotlyChart:visible").nth(index).screenshot(timeout=15_000)
        except sync_api.Error as error:
            passing = "not attached" in str(error) or "not visible" in str(error)
            if not passing or attempt == attempts - 1:
                raise
            page.wait_for_timeout(500)
    raise AssertionError("unreachable")


def _coloured_pixels(png: bytes) -> int:
    """Pixels that are clearly coloured (an overlay), not grey (the MRI)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return int((spread > 80).sum())


def _shift(caption: str, delta: int) -> str:
    """'Axial slice 73 of 154 · ...' -> 'Axial slice 74 of 154' for delta 1."""
    head = caption.split(" · ")[0]
    number = int(head.split()[2])
    return head.replace(f"slice {number} ", f"slice {number + delta} ")


def _wait_for_change(page, pattern, old: str, timeout_s: float = 90) -> str:
    """The slice caption once it differs from ``old`` (a redraw may wait for the first slice prediction)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = page.get_by_text(pattern).first.inner_text()
        if text != old:
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"the slice did not change from {old!r}")


def _until_no_stale_elements(page, timeout_ms: int = 120_000) -> None:
    """Wait until the page shows no faded copy of an element from an earlier run: a key pressed on such a
    copy is lost when the run that replaces it ends."""
    _settle(page, timeout_ms)
    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=timeout_ms)


def _assert_overlay_controls_at_defaults(page) -> None:
    """The NCR/ED/ET toggles ticked and the opacity at 0.45, as the browser shows them."""
    for label in ("NCR", "ED", "ET"):
        assert page.get_by_role("checkbox", name=label, exact=True).last.is_checked(), label
    assert page.get_by_role("slider", name="Opacity").first.input_value() == "0.45"


def _open_page(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.wait_for_timeout(500)
    _settle(page)


def _choose_upload(page) -> None:
    """Pick "Upload files" and wait for the uploader. A click that lands while a rerun is replacing the
    radio is lost (on a slow machine the stale copy is still on screen), so it is clicked again, as a user
    would, until the uploader shows; each try waits up to 20 s."""
    for _ in range(4):
        page.get_by_text("Upload files").first.click()
        _settle(page)
        try:
            page.locator("input[type=file]").first.wait_for(state="attached", timeout=20_000)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError("choosing 'Upload files' never showed the uploader")


def _step_forward(page, pattern, before: str, tries: int = 3) -> str:
    """Click "▶" and return the new slice caption. The whole-volume progress reruns every second and
    replaces the page's elements; a click on a faded copy that is being replaced is lost (as a user sees,
    nothing happens), so wait for a page with no faded copies first and, as a user would, click again
    when nothing happened within 30 s."""
    for attempt in range(tries):
        _until_no_stale_elements(page)
        page.get_by_role("button", name="▶").click()
        try:
            return _wait_for_change(page, pattern, before, timeout_s=30)
        except AssertionError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def test_every_page_and_an_uploaded_case_in_a_real_browser(server, browser):
    url, _home = server
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Research demo — not for clinical use").first.wait_for(timeout=120_000)
    _settle(page)
    page.get_by_text("Tumour volume per patient").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # let plotly draw
    assert page.locator(".stPlotlyChart").count() >= 7
    _shot(page, "1_explore")

    _open_page(page, "Train")
    page.get_by_role("button", name="Launch training").wait_for()
    assert page.get_by_text("Research demo — not for clinical use").count() >= 1
    _shot(page, "2_train")

    _open_page(page, "Models")
    page.get_by_text("Architecture", exact=True).wait_for()  # not the model card's text
    page.locator("[data-testid=stDataFrame]").first.wait_for()
    page.wait_for_timeout(1500)  # data frames draw on a canvas after they mount
    _shot(page, "3_models")

    _open_page(page, "Predict")
    slice_caption = re.compile(r"^Axial slice \d+ of \d+")
    # A demo case is shown first; the run after "Upload files" stops before the viewer (nothing uploaded
    # yet), and the viewer drawn after the upload must show the overlay controls as they were.
    page.get_by_text(slice_caption).first.wait_for(timeout=120_000)
    _settle(page)
    _assert_overlay_controls_at_defaults(page)
    _choose_upload(page)
    files = sorted(str(p) for p in REAL_CASE.glob("*.nii*"))
    page.locator("input[type=file]").set_input_files(files)
    page.get_by_text("BraTS2021_00006", exact=False).first.wait_for(timeout=120_000)
    _settle(page)
    page.get_by_text("Ground truth").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    _assert_overlay_controls_at_defaults(page)
    before = page.get_by_text(slice_caption).first.inner_text()
    # Panel 2 is the ground truth: its tumour overlay must be visible on the first slice shown.
    assert _coloured_pixels(_chart_png(page, 1)) > 200
    _shot(page, "4_predict_upload")

    after = _step_forward(page, slice_caption, before)
    assert after.split(" · ")[0] == _shift(before, 1), (before, after)
    _until_no_stale_elements(page)
    slider = page.get_by_role("slider").last  # the slice slider (after the opacity slider)
    slider.focus()
    page.keyboard.press("ArrowLeft")
    moved = _wait_for_change(page, slice_caption, after)
    assert moved.split(" · ")[0] == _shift(after, -1), (after, moved)
    assert _coloured_pixels(_chart_png(page, 1)) > 200
    _assert_overlay_controls_at_defaults(page)  # two reruns later, still what the server draws with
    _shot(page, "5_predict_scrolled")

    # The whole volume finishes in the background; then error map and Dice strip appear.
    page.get_by_text("Scores against the ground truth").wait_for(timeout=240_000)
    _settle(page)
    page.get_by_text("Sagittal", exact=True).click()
    page.get_by_text(re.compile(r"^Sagittal slice \d+ of \d+")).first.wait_for(timeout=60_000)
    _settle(page)
    page.wait_for_timeout(1000)
    assert page.get_by_text("Errors (WT)", exact=False).count() >= 1
    _shot(page, "6_predict_volume")
    assert not errors, errors
    page.close()
    shutil.rmtree(_home / "uploads", ignore_errors=True)


def test_choosing_upload_right_after_the_predict_page_opens_keeps_the_app_alive(server, browser):
    """A new session opens Predict and at once picks "Upload files", as a quick user does. The browser's
    WebGL answer (sent again every few seconds) used to rerun the viewer's fragment after the full rerun
    of that click had shortened the page: the app stopped with "Bad delta path index" and went blank
    (about every second try on a 2-core machine). Several fresh sessions, each must show the uploader."""
    url, _ = server
    for attempt in range(4):
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error, seen=errors: seen.append(str(error)))
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("Research demo — not for clinical use").first.wait_for(timeout=240_000)
        _settle(page)
        page.get_by_test_id("stSidebarNav").get_by_text("Predict", exact=True).click()
        _settle(page)
        page.get_by_text("Upload files").first.click()
        _settle(page)
        page.wait_for_timeout(4_000)  # past the probe's next resend
        assert not [e for e in errors if "delta path" in e], (attempt, errors)
        page.locator("input[type=file]").first.wait_for(state="attached", timeout=20_000)
        context.close()
