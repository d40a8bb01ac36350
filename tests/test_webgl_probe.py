"""The Predict page's automatic viewer choice from what the browser says about WebGL2."""

from __future__ import annotations

import pytest

from medvision.app_support.webgl_probe import (
    MAX_RENDERER_CHARS,
    SUPPORT_KEY,
    WebGLSupport,
    automatic_viewer,
    browser_webgl,
    needs_small_volumes,
    parse_probe,
)

GPU = WebGLSupport(webgl2=True, renderer="ANGLE (NVIDIA, NVIDIA GeForce RTX 3060 Direct3D11 vs_5_0 ps_5_0)")
SWIFTSHADER = WebGLSupport(
    webgl2=True, renderer="ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero)))"
)
LLVMPIPE = WebGLSupport(webgl2=True, renderer="llvmpipe (LLVM 15.0.6, 256 bits)")
NONE = WebGLSupport(webgl2=False, renderer="")


def test_a_graphics_card_gets_the_3d_viewer_with_the_whole_grid():
    choice = automatic_viewer(GPU)
    assert choice.niivue
    assert "graphics card" in choice.reason
    assert not needs_small_volumes(GPU)


@pytest.mark.parametrize("support", [SWIFTSHADER, LLVMPIPE])
def test_software_webgl_gets_the_simple_images_and_small_volumes(support):
    assert support.software
    choice = automatic_viewer(support)
    assert not choice.niivue
    assert "software" in choice.reason
    assert needs_small_volumes(support)


def test_no_webgl2_or_no_answer_gets_the_simple_images():
    assert not automatic_viewer(NONE).niivue
    assert "no WebGL2" in automatic_viewer(NONE).reason
    assert not automatic_viewer(None).niivue
    assert "not said yet" in automatic_viewer(None).reason
    assert needs_small_volumes(None) and needs_small_volumes(NONE)


@pytest.mark.parametrize(
    "value",
    [None, "yes", 1, [], {}, {"webgl2": "true"}, {"renderer": "x"}, {"webgl2": 1, "renderer": "x"}],
)
def test_an_answer_not_of_the_probes_shape_is_no_answer(value):
    assert parse_probe(value) is None


def test_the_renderer_name_is_bounded_and_must_be_text():
    long = parse_probe({"webgl2": True, "renderer": "x" * 5000})
    assert long == WebGLSupport(True, "x" * MAX_RENDERER_CHARS)
    assert parse_probe({"webgl2": True, "renderer": {"a": 1}}) == WebGLSupport(True, "")
    assert parse_probe({"webgl2": False}) == NONE


def test_a_kept_answer_is_not_asked_again():
    state = {SUPPORT_KEY: GPU}
    assert browser_webgl(state) is GPU
    # Outside a running app (no script context) the probe answers nothing and nothing is kept.
    empty: dict = {}
    assert browser_webgl(empty) is None
    assert SUPPORT_KEY not in empty
