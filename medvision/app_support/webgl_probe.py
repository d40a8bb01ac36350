"""Ask the browser, once per session, whether it draws WebGL2 and with what, to choose the Predict viewer.

The 3-D viewer (NiiVue) needs WebGL2. With a graphics card it loads a case in about a second and is the
better viewer; where WebGL2 is drawn in software (SwiftShader, llvmpipe: headless browsers, remote
desktops, machines without a GPU driver) the same case takes 10-30 s to load, and without WebGL2 it stays
blank. The page asks with a tiny component (a canvas, never shown) and keeps the answer; the choice itself
(``automatic_viewer``) is a pure function so that it can be tested without a browser.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import streamlit as st

SUPPORT_KEY = "webgl_support"  # the answer, kept in the session (not a widget key: it survives page switches)
PROBE_KEY = "webgl_probe"
# Renderer names of software rasterisers (lower case, as substrings of WebGL's renderer string).
SOFTWARE_RENDERERS = ("swiftshader", "llvmpipe", "softpipe", "software", "basic render")
MAX_RENDERER_CHARS = 200

# Creates a WebGL2 context on a canvas that is never attached, reads the renderer's name (unmasked where the
# browser allows), releases the context and reports {webgl2, renderer, attempt} as the component's state.
# The answer is sent again every RESEND_MS (with the next attempt number, so that it is a new value) until the
# page stops drawing the probe, i.e. until the server has it: one message sent while the server was busy with
# another run was seen lost in CI, and without a user's click nothing else would have carried it.
_PROBE_JS = """
const RESEND_MS = 3000;
const MAX_ATTEMPTS = 60;

function ask() {
  try {
    const gl = document.createElement("canvas").getContext("webgl2");
    if (!gl) return { webgl2: false, renderer: "" };
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const name = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
    const lose = gl.getExtension("WEBGL_lose_context");
    if (lose) lose.loseContext();
    return { webgl2: true, renderer: String(name || "") };
  } catch (error) {
    return { webgl2: false, renderer: "" };
  }
}

export default function (component) {
  const { setStateValue, parentElement } = component;
  if (parentElement.__medvisionProbe) return;  // drawn again with the same mount: one timer only
  const answer = ask();
  let attempt = 0;
  const send = () => {
    attempt += 1;
    setStateValue("support", { ...answer, attempt });
  };
  send();
  const timer = setInterval(() => (attempt < MAX_ATTEMPTS ? send() : clearInterval(timer)), RESEND_MS);
  parentElement.__medvisionProbe = timer;
  return () => {
    clearInterval(timer);
    parentElement.__medvisionProbe = undefined;
  };
}
"""
_probe = st.components.v2.component("medvision_webgl_probe", js=_PROBE_JS)


@dataclass(frozen=True)
class WebGLSupport:
    """What the browser said: whether it has WebGL2, and the renderer's name (text from the browser)."""

    webgl2: bool
    renderer: str

    @property
    def software(self) -> bool:
        name = self.renderer.lower()
        return any(word in name for word in SOFTWARE_RENDERERS)


def parse_probe(value: object) -> WebGLSupport | None:
    """The probe's state as ``WebGLSupport``; None for no answer or one that is not the probe's shape."""
    if not isinstance(value, dict) or not isinstance(value.get("webgl2"), bool):
        return None
    renderer = value.get("renderer")
    renderer = renderer[:MAX_RENDERER_CHARS] if isinstance(renderer, str) else ""
    return WebGLSupport(webgl2=value["webgl2"], renderer=renderer)


def browser_webgl(state: MutableMapping) -> WebGLSupport | None:
    """The browser's answer, asking it on the first run of a session (None until it has answered; its
    answer reruns the page)."""
    known = state.get(SUPPORT_KEY)
    if isinstance(known, WebGLSupport):
        return known
    result = _probe(key=PROBE_KEY, on_support_change=lambda: None)
    support = parse_probe(result.get("support") if result is not None else None)
    if support is not None:
        state[SUPPORT_KEY] = support
    return support


@dataclass(frozen=True)
class ViewerChoice:
    """The automatic choice: NiiVue or the simple images, and why, in words for the page."""

    niivue: bool
    reason: str


def automatic_viewer(support: WebGLSupport | None) -> ViewerChoice:
    """NiiVue where the browser draws WebGL2 on a graphics card; the simple images everywhere else."""
    if support is None:
        return ViewerChoice(False, "the browser has not said yet whether it has WebGL2")
    if not support.webgl2:
        return ViewerChoice(False, "this browser has no WebGL2, which the 3-D viewer needs")
    if support.software:
        return ViewerChoice(
            False,
            "this browser draws WebGL2 in software (no graphics card), where the 3-D viewer takes 10-30 s "
            "to load a case",
        )
    return ViewerChoice(True, "this browser draws WebGL2 on a graphics card")


def needs_small_volumes(support: WebGLSupport | None) -> bool:
    """Send the scan's box rather than the whole grid: in software WebGL2 (or when unknown) loading time
    grows with the bytes (the box of a BraTS case loads about 2.5x faster than its whole grid)."""
    return support is None or not support.webgl2 or support.software
