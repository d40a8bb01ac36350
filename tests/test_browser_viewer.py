"""The Predict page's browser-side viewer (NiiVue) in a real browser, tried as a new user would.

Headless Chromium here draws WebGL2 in software (SwiftShader), so a volume takes seconds to load; the
tests wait for the viewer's own "matrix size" line and for the canvas to hold still. What they check:
the real case loads into the viewer with its prediction, what was sent stays under 10 MB, a mouse-wheel
slice change repaints the canvas without any message to the server (no script rerun), a rerun caused by
another widget does not send the volumes again, the page's automatic choice names the software renderer, and a
browser without WebGL gets the simple images, chosen automatically and said on the page.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
import test_browser
from test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REAL_CASE,
    _assert_overlay_controls_at_defaults,
    _open_page,
    _settle,
    _shot,
)

# The same fixtures as the page tour: a real `streamlit run app.py` and headless Chromium.
server = test_browser.server
browser = test_browser.browser

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed"),
    pytest.mark.skipif(not REAL_CASE.is_dir(), reason="real BraTS case not available in ../shared/data"),
]
NIIVUE_FRAME = "iframe[title*='niivue']"


class _Wire:
    """Counts the websocket traffic of a page: frames the browser sent, bytes it received."""

    def __init__(self, page) -> None:
        self.sent = 0
        self.received = 0
        page.on("websocket", self._watch)

    def _watch(self, ws) -> None:
        ws.on("framesent", lambda payload: setattr(self, "sent", self.sent + 1))
        ws.on("framereceived", lambda payload: setattr(self, "received", self.received + len(payload)))


def _canvas(page):
    return page.frame_locator(NIIVUE_FRAME).first.locator("canvas").first


def _still_canvas(page, timeout_s: float = 240) -> bytes:
    """A screenshot of the viewer's canvas once two taken a second apart are equal (loading is over)."""
    deadline = time.time() + timeout_s
    last = b""
    while time.time() < deadline:
        shot = _canvas(page).screenshot(timeout=120_000)
        if shot == last:
            return shot
        last = shot
        page.wait_for_timeout(1000)
    raise AssertionError("the viewer's canvas did not settle")


def _sent_megabytes(page) -> float:
    caption = page.get_by_text(re.compile(r"^Sent to the browser:")).first.inner_text()
    number, unit = re.match(r"Sent to the browser: ([\d.]+) (MB|kB)", caption).groups()
    return float(number) / (1 if unit == "MB" else 1000)


def test_niivue_viewer_shows_the_real_case_and_scrolls_in_the_browser(server, browser):
    url, home = server
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    wire = _Wire(page)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Research demo — not for clinical use").first.wait_for(timeout=120_000)
    _settle(page)
    _open_page(page, "Predict")
    page.get_by_text("Upload files").click()
    _settle(page)
    page.locator("input[type=file]").set_input_files(sorted(str(p) for p in REAL_CASE.glob("*.nii*")))
    page.get_by_text("In use: simple images", exact=False).first.wait_for(timeout=240_000)
    # The page asked the browser: headless Chromium draws WebGL2 with SwiftShader, so the automatic choice
    # is the simple images, and the renderer's name is on the page.
    page.get_by_text(
        "chosen automatically: this browser draws WebGL2 in software", exact=False
    ).first.wait_for(timeout=60_000)
    assert page.get_by_text("SwiftShader", exact=False).count() >= 1
    _settle(page)
    page.get_by_text("3-D WebGL (NiiVue)", exact=True).click()
    page.get_by_text("In use: 3-D WebGL viewer", exact=False).first.wait_for(timeout=120_000)
    frame = page.frame_locator(NIIVUE_FRAME).first
    frame.get_by_text("matrix size", exact=False).first.wait_for(timeout=240_000)
    page.get_by_text("Scores against the ground truth").wait_for(timeout=240_000)
    _settle(page)
    assert page.get_by_text("Prediction: NCR/NET red", exact=False).count() >= 1
    assert page.locator("[data-testid=stException]").count() == 0
    assert 0.5 < _sent_megabytes(page) < 10.0
    _assert_overlay_controls_at_defaults(page)
    before = _still_canvas(page)
    _shot(page, "viewer_1_niivue")

    # A rerun caused by another widget sends a reference to the cached viewer message, not its megabytes.
    received = wire.received
    page.get_by_text("Uncertainty map", exact=True).click()
    page.get_by_role("button", name="Estimate uncertainty").wait_for(timeout=60_000)
    _settle(page)
    assert wire.received - received < 1_000_000, wire.received - received

    # Scroll one slice with the mouse wheel: the canvas changes, the server hears nothing.
    _still_canvas(page)
    sent, received = wire.sent, wire.received
    box = _canvas(page).bounding_box()
    # The middle of the first tile of the multi-plane layout (the canvas centre is where tiles meet).
    page.mouse.move(box["x"] + box["width"] / 4, box["y"] + box["height"] / 4)
    page.mouse.wheel(0, 120)
    after = _still_canvas(page)
    assert after != before
    assert (wire.sent, wire.received) == (sent, received)
    _shot(page, "viewer_2_scrolled")

    # The simple images are one click away, with the analyses they carry.
    page.get_by_text("Simple images", exact=True).click()
    page.get_by_text("In use: simple images", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Errors (WT)", exact=False).first.wait_for(timeout=120_000)
    _settle(page)
    _assert_overlay_controls_at_defaults(page)  # through both viewers and a full rerun
    assert not errors, errors
    page.close()
    shutil.rmtree(home / "uploads", ignore_errors=True)


def test_a_browser_without_webgl_gets_the_simple_images(server, browser):
    url, _home = server
    # A second browser from the same Playwright, with WebGL switched off.
    no_webgl = browser.browser_type.launch(
        executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, "--disable-webgl", "--disable-webgl2"]
    )
    try:
        page = no_webgl.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("Research demo — not for clinical use").first.wait_for(timeout=120_000)
        _settle(page)
        _open_page(page, "Predict")
        page.get_by_text("In use: simple images", exact=False).first.wait_for(timeout=240_000)
        # The probe's answer comes after the first drawing; on a loaded 2-core machine that took over 60 s.
        page.get_by_text("chosen automatically: this browser has no WebGL2", exact=False).first.wait_for(
            timeout=180_000
        )
        page.locator(".stPlotlyChart").first.wait_for(timeout=60_000)
        _settle(page)
        # The simple images are the automatic choice: they need no WebGL, and their labels are drawn from the
        # start.
        for label in ("NCR", "ED", "ET"):
            assert page.get_by_role("checkbox", name=label).last.is_checked(), label
        assert page.locator(NIIVUE_FRAME).count() == 0
        assert page.locator("[data-testid=stException]").count() == 0
        _shot(page, "viewer_3_no_webgl")
    finally:
        no_webgl.close()
