"""Load: 8 concurrent sessions of the real app scrolling predictions on one server.

A real ``streamlit run app.py`` on a free 127.0.0.1 port, driven by 8 websocket clients that speak the
browser's protocol (bench/app_load.py, which also has the larger run): each opens the Predict page, picks
its own case of an 8-case synthetic cohort (32x64x64) and clicks "next slice" 8 times while its whole-volume
prediction runs in the background, answering the page's auto-rerun fragments like a browser. The server
counts load_checkpoint calls and bounds the predictor's result cache at 6 MiB, below what the 8 cases'
results need (about 1.7 MiB each), so the bound has to hold by evicting.

MEDVISION_LOAD_REPORT=path writes the figures (latency percentiles, memory, cache) there as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import streamlit  # noqa: F401  (a requirement: fail, never skip, where it is missing)
import websockets  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SESSIONS, CLICKS, SIZE, CACHE_MB = 8, 8, (32, 64, 64), 6.0


def _harness():
    spec = importlib.util.spec_from_file_location("medvision_bench_app_load", REPO / "bench" / "app_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    harness = _harness()
    work = tmp_path_factory.mktemp("load")
    result = harness.measure(
        sessions=SESSIONS, clicks=CLICKS, size=SIZE, cache_mb=CACHE_MB, think_s=0.05, work=work
    )
    print("\n".join(harness.summary_lines(result, "tests/test_load.py")))
    target = os.environ.get("MEDVISION_LOAD_REPORT")
    if target:
        Path(target).write_text(json.dumps({k: v for k, v in result.items() if k != "results"}, indent=1))
    return result


@pytest.mark.timeout(240)
def test_every_request_of_eight_concurrent_sessions_is_served(figures):
    assert figures["failed_sessions"] == [], figures["server_log"]
    assert figures["request_errors"] == [], figures["request_errors"]
    assert figures["served"] == figures["requests"] >= SESSIONS * (CLICKS + 2)
    for session in figures["results"]:
        kinds = [r["kind"] for r in session["requests"]]
        assert kinds.count("next") == CLICKS and kinds[:2] == ["open", "select"], kinds
        # Every click redrew the viewer (the prediction panel and the ground truth at least)...
        assert all(r["charts"] >= 2 for r in session["requests"] if r["kind"] == "next"), session
        # ...one slice further on (clamped at the last slice).
        slices = session["slices"]
        assert all(b == min(a + 1, SIZE[0] - 1) for a, b in zip(slices, slices[1:], strict=False)), slices
    lat = figures["latency"]["next"]
    assert lat["n"] == SESSIONS * CLICKS and lat["max"] < 60


def test_the_model_is_loaded_once_for_all_sessions(figures):
    after = figures["after"]
    assert after["loads"] == 1 and after["predictors"] == 1, after


def test_the_result_cache_stays_within_its_bound_by_evicting(figures):
    after = figures["after"]
    limit = int(CACHE_MB * 2**20)
    assert after["cache_limit"] == limit
    assert 0 < after["cache_peak"] <= limit and after["cache_now"] <= limit
    assert after["cache_evictions"] > 0  # the 8 cases' results did not fit: older ones made room
    assert after["prepared_peak"] <= after["prepared_limit"]
    # The server's memory: the model, 8 cases and bounded caches; nowhere near a leak's size.
    assert after["rss_peak"] - figures["before"]["rss"] < 1024 * 2**20, (figures["before"]["rss"], after)
