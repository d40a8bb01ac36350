"""Benchmark: concurrent sessions of the real app scrolling predictions, on one `streamlit run app.py` server.

Each session is a client of the server's websocket (``/_stcore/stream`` on 127.0.0.1) that sends and receives
what a browser tab does (protobuf BackMsg / ForwardMsg), without a browser: it opens the Predict page,
chooses its own case of the synthetic demo cohort, then clicks "next slice" (▶) again and again, each click a
rerun of the viewer fragment, while the page's background whole-volume prediction runs; like a browser it
answers the page's ``run_every`` fragments (the volume progress bar, which reruns the page when the volume is
done). A click's latency is the time from sending it to the server's "script finished" message, i.e. until
every element of the redraw (the Plotly figures included) has arrived.

The server is ``streamlit run app.py`` started through this file (``serve``). Its only additions: it counts
``load_checkpoint`` calls and every Predictor built, can bound the predictor's result cache (``--cache-mb``;
the app's own bound is 512 MiB), and writes a JSON file every 0.2 s: model loads, result-cache bytes
(now, peak, limit, evictions), normalised-case cache bytes and process RSS (now and peak).

    python bench/app_load.py [--sessions 8] [--requests 40] [--size 96,128,128] [--cache-mb N]

Prints request latency percentiles (p50/p95/max) and memory, and appends a section to bench/RESULTS.md
(``--no-record`` to skip). ``measure()`` is what tests/test_load.py runs at a small size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
RESULTS = REPO / "bench" / "RESULTS.md"
PAGE = "prediction"  # the Predict page's url_path in app.py
SERVE = "serve"


# ========================================================================================== server side
def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, amount, _ = line.split()
            values[name[:-1]] = int(amount) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def _serve(stats_path: str, cache_mb: float | None, streamlit_args: list[str]) -> None:
    """Run `streamlit run app.py` in this process, watched (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    import medvision.inference as inference
    import medvision.inference.predictor as predictor_module  # where Predictor looks load_checkpoint up
    from medvision.prediction_cache import ByteLRU

    lock = threading.Lock()
    stats: dict[str, Any] = {
        "loads": 0,
        "predictors": 0,
        "cache_limit": None,
        "cache_peak": 0,
        "cache_evictions": 0,
        "cache_puts": 0,
        "prepared_peak": 0,
    }
    predictors: list[Any] = []
    real_load = predictor_module.load_checkpoint

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        with lock:
            stats["loads"] += 1
        return real_load(*args, **kwargs)

    class WatchedLRU(ByteLRU):
        def __init__(self, max_bytes: int, peak_key: str) -> None:
            super().__init__(max_bytes)
            self.peak_key = peak_key

        def put(self, key: Any, value: Any) -> None:
            had, before = key in self, len(self)
            super().put(key, value)
            with lock:
                stats[self.peak_key] = max(stats[self.peak_key], self.nbytes)
                if self.peak_key == "cache_peak":
                    stats["cache_puts"] += 1
                    stats["cache_evictions"] += max(0, before + (0 if had else 1) - len(self))

    class WatchedPredictor(inference.Predictor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if cache_mb is not None:
                kwargs.setdefault("cache_bytes", int(cache_mb * 2**20))
            super().__init__(*args, **kwargs)
            # Both caches are still empty here: swap in watched ones of the same bounds.
            self._results = WatchedLRU(self._results.max_bytes, "cache_peak")
            self._prepared = WatchedLRU(self._prepared.max_bytes, "prepared_peak")
            with lock:
                stats["predictors"] += 1
                stats["cache_limit"] = self._results.max_bytes
                stats["prepared_limit"] = self._prepared.max_bytes
            predictors.append(self)

    predictor_module.load_checkpoint = counting_load
    inference.Predictor = WatchedPredictor  # what pages/predict.py imports on every run

    def report() -> None:
        while True:
            rss, hwm = _rss()
            with lock:
                snapshot = {
                    **stats,
                    "rss": rss,
                    "rss_peak": hwm,
                    "time": time.time(),
                    "cache_now": sum(p._results.nbytes for p in predictors),
                    "cache_entries": sum(len(p._results) for p in predictors),
                    "prepared_now": sum(p._prepared.nbytes for p in predictors),
                }
            tmp = stats_path + ".tmp"
            Path(tmp).write_text(json.dumps(snapshot))
            os.replace(tmp, stats_path)
            time.sleep(0.2)

    threading.Thread(target=report, name="load-stats", daemon=True).start()
    from streamlit.web.cli import main

    sys.argv = ["streamlit", "run", str(APP), *streamlit_args]
    main()


# ========================================================================================== client side
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_workspace(home: Path, cases: int, size: tuple[int, int, int]) -> tuple[dict[str, str], str]:
    """The app's environment: a workspace holding the synthetic cohort (made here, not by the first session)
    and, when the repository ships no demo checkpoint, an untrained model of the demo preset's size.
    Returns (environment, description of the model the app's sidebar picks first)."""
    sys.path.insert(0, str(REPO))
    from medvision.app_support import catalog
    from medvision.app_support.workspace import settings_from_env

    env = {
        "MEDVISION_HOME": str(home),
        "MEDVISION_DEMO_CASES": str(cases),
        "MEDVISION_DEMO_SIZE": ",".join(map(str, size)),
    }
    settings = settings_from_env(env)
    catalog.ensure_demo_cohort(settings)
    if not settings.default_checkpoint.is_file():
        import torch

        from medvision.checkpoint import save_checkpoint
        from medvision.models import build_model
        from medvision.train.config import PRESETS

        target = settings.workspace.models / "load_demo_sized.safetensors"
        if not target.is_file():
            torch.manual_seed(0)
            model = build_model(PRESETS["demo"].model_config())
            meta = {
                "target": "regions",
                "patch_size": list(PRESETS["demo"].patch_size),
                "note": "untrained, demo preset architecture (load benchmark)",
            }
            save_checkpoint(target, model, meta)
    chosen = catalog.model_choices(settings)[0]
    return env, f"{chosen.label} ({chosen.checkpoint.name})"


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    stats_path: Path
    log_path: Path

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)


def start_server(
    env: dict[str, str],
    work: Path,
    cache_mb: float | None,
    session_ttl: int | None = None,
    timeout: float = 120,
) -> Server:
    port = free_port()
    stats_path, log_path = work / "server_stats.json", work / "server.log"
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        SERVE,
        str(stats_path),
        "none" if cache_mb is None else str(cache_mb),
        "--",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
    ]
    if session_ttl is not None:  # how long the state of a closed session is kept (Streamlit: 120 s)
        args += ["--server.disconnectedSessionTTL", str(session_ttl)]
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=full_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, stats_path, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                if reply.status == 200 and server.stats():
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in {timeout} s: {log_path.read_text()[-3000:]}")


@dataclass
class Request:
    kind: str  # open | select | next | auto
    seconds: float
    status: int
    charts: int
    errors: list[str]


@dataclass
class SessionResult:
    case_id: str
    requests: list[Request] = field(default_factory=list)
    slices: list[float] = field(default_factory=list)  # the axial slider's value after each click
    page_not_found: int = 0
    error: str | None = None


class Session:
    """One browser tab's worth of protocol: send reruns with widget states, read the deltas back."""

    def __init__(self, ws: Any) -> None:
        from streamlit.proto.Alert_pb2 import Alert

        self.ws = ws
        self.alert_error = Alert.ERROR
        self.widgets: dict[str, str] = {}  # user key -> widget id
        self.fragment_of: dict[str, str] = {}  # user key -> fragment id ("" outside fragments)
        self.sliders: dict[str, float] = {}
        self.auto: dict[str, float] = {}  # fragment id -> interval (s), as the page asked
        self.auto_last: dict[str, float] = {}
        self.page_hash = ""  # the page shown, sent back with every rerun like a browser does
        self.finished: asyncio.Queue[int] = asyncio.Queue()
        self.charts = 0
        self.errors: list[str] = []
        self.page_not_found = 0  # see measure(): the first run of a fresh server reports one

    async def read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        async for data in self.ws:
            msg = ForwardMsg()
            msg.ParseFromString(data)
            kind = msg.WhichOneof("type")
            if os.environ.get("MEDVISION_LOAD_DEBUG"):
                print(
                    id(self) % 1000,
                    kind,
                    msg.page_not_found if kind == "page_not_found" else "",
                    msg.navigation.page_script_hash if kind == "navigation" else "",
                    file=sys.stderr,
                )
            if kind == "delta":
                self._delta(msg.delta)
            elif kind == "script_finished":
                await self.finished.put(int(msg.script_finished))
            elif kind == "auto_rerun":
                self.auto[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
            elif kind == "stop_auto_rerun":
                for fragment in msg.stop_auto_rerun.fragment_ids:
                    self.auto.pop(fragment, None)
            elif kind == "navigation":  # only full runs (app.py) send it; they register run_every anew
                self.page_hash = msg.navigation.page_script_hash
                self.auto = {}
            elif kind == "page_not_found":
                self.page_not_found += 1

    def _delta(self, delta: Any) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        kind = element.WhichOneof("type")
        if kind is None:
            return
        if kind == "exception":
            self.errors.append(f"{element.exception.type}: {element.exception.message}")
        elif kind == "alert" and element.alert.format == self.alert_error:
            self.errors.append(element.alert.body)
        elif kind == "plotly_chart":
            self.charts += 1
        widget_id = getattr(getattr(element, kind), "id", "")
        if isinstance(widget_id, str) and widget_id.startswith("$$ID-"):
            key = widget_id.split("-", 2)[2]
            self.widgets[key] = widget_id
            self.fragment_of[key] = delta.fragment_id
            if kind == "slider":
                values = element.slider.value if element.slider.set_value else element.slider.default
                if values:
                    self.sliders[key] = float(values[0])

    async def rerun(
        self, kind: str, widgets: list[Any] = (), fragment: str = "", auto: bool = False, timeout: float = 60
    ) -> Request:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        state = msg.rerun_script
        if self.page_hash:
            state.page_script_hash = self.page_hash
        else:
            state.page_name = PAGE  # the first request opens the page by its URL path
        state.fragment_id = fragment
        state.is_auto_rerun = auto
        for widget in widgets:
            state.widget_states.widgets.append(widget)
        self.charts, self.errors = 0, []
        started = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        while True:
            status = await asyncio.wait_for(self.finished.get(), timeout)
            if status != ForwardMsg.FINISHED_EARLY_FOR_RERUN:  # st.rerun(): the page runs again
                break
        return Request(kind, time.perf_counter() - started, status, self.charts, list(self.errors))

    def widget(self, key: str, **value: Any) -> Any:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        state = WidgetState(id=self.widgets[key])
        for name, item in value.items():
            setattr(state, name, item)
        return state

    async def answer_auto_reruns(self, result: SessionResult) -> None:
        """Like a browser: rerun each run_every fragment whose interval has passed (when no run is going)."""
        now = time.monotonic()
        for fragment, interval in list(self.auto.items()):
            if now - self.auto_last.get(fragment, 0.0) >= interval:
                self.auto_last[fragment] = now
                result.requests.append(await self.rerun("auto", fragment=fragment, auto=True))


async def run_session(
    port: int, case_id: str, clicks: int, think_s: float, seed: int, stop: threading.Event | None = None
) -> SessionResult:
    """One session: open the Predict page, choose ``case_id``, click "next slice" ``clicks`` times (fewer if
    ``stop`` is set meanwhile)."""
    import websockets

    result = SessionResult(case_id)
    rng = random.Random(seed)
    url = f"ws://127.0.0.1:{port}/_stcore/stream"
    try:
        async with websockets.connect(
            url, subprotocols=["streamlit"], origin=f"http://127.0.0.1:{port}", max_size=None, open_timeout=30
        ) as ws:
            session = Session(ws)
            reader = asyncio.create_task(session.read())
            try:
                result.requests.append(await session.rerun("open"))
                pick = session.widget("predict_case", string_value=case_id)
                result.requests.append(await session.rerun("select", [pick]))
                for _ in range(clicks):
                    if stop is not None and stop.is_set():
                        break
                    await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
                    await session.answer_auto_reruns(result)
                    click = session.widget("view_next", trigger_value=True)
                    request = await session.rerun("next", [click], fragment=session.fragment_of["view_next"])
                    result.requests.append(request)
                    result.slices.append(session.sliders.get("view_slice_axial", float("nan")))
            finally:
                result.page_not_found = session.page_not_found
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
    except Exception as error:  # a session that breaks is a result, not a crash of the benchmark
        result.error = f"{type(error).__name__}: {error}"
    return result


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def measure(
    *,
    sessions: int = 8,
    clicks: int = 40,
    size: tuple[int, int, int] = (96, 128, 128),
    cache_mb: float | None = None,
    think_s: float = 0.1,
    waves: int = 1,
    baseline: bool = False,
    session_ttl: int | None = None,
    home: Path | None = None,
    work: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Start the server; optionally one session alone first (``baseline``); then ``waves`` times ``sessions``
    concurrent sessions (one case each; a wave ends when all of them have disconnected); stop the server.
    Returns the figures: latency percentiles per request kind, requests served, server stats after each
    wave (model loads, caches, RSS)."""
    work = Path(work or tempfile.mkdtemp(prefix="medvision-load-"))
    home = Path(home or work / "home")
    started = time.perf_counter()
    env, model = prepare_workspace(home, max(sessions, 2), size)
    setup_s = time.perf_counter() - started
    server = start_server(env, work, cache_mb, session_ttl)
    case_ids = [f"Synth_{i:03d}" for i in range(sessions)]

    def run_wave(ids: list[str], wave_seed: int) -> list[SessionResult]:
        async def together() -> list[SessionResult]:
            return await asyncio.gather(
                *(run_session(server.port, c, clicks, think_s, wave_seed + i) for i, c in enumerate(ids))
            )

        return asyncio.run(together())

    try:
        before = server.stats()
        alone: list[SessionResult] = run_wave(case_ids[:1], seed - 1) if baseline else []
        after_baseline = server.stats() if baseline else None
        results: list[SessionResult] = []
        wave_stats, wave_seconds = [], []
        for wave in range(waves):
            t0 = time.perf_counter()
            results += run_wave(case_ids, seed + 1000 * wave)
            wave_seconds.append(time.perf_counter() - t0)
            # One more stats report; with a short session TTL, also time for closed sessions to be dropped.
            time.sleep(0.5 if session_ttl is None else session_ttl + 3.0)
            wave_stats.append(server.stats())
    finally:
        server.stop()
    requests = [r for s in results for r in s.requests]

    def by_kind(items: list[Request]) -> dict[str, dict[str, float]]:
        return {
            k: percentiles([r.seconds for r in items if r.kind == k])
            for k in ("open", "select", "next", "auto")
        }

    return {
        "sessions": sessions,
        "clicks": clicks,
        "size": list(size),
        "cache_mb": cache_mb,
        "think_s": think_s,
        "model": model,
        "waves": waves,
        "session_ttl": session_ttl,
        "setup_s": setup_s,
        "wall_s": sum(wave_seconds),
        "wave_seconds": wave_seconds,
        "latency": by_kind(requests),
        "baseline": by_kind([r for s in alone for r in s.requests]) if baseline else None,
        "served": sum(1 for r in requests if r.status in (0, 3) and not r.errors),
        "requests": len(requests),
        "failed_sessions": [s.error for s in results + alone if s.error],
        "request_errors": [e for s in results + alone for r in s.requests for e in r.errors][:10],
        "page_not_found": sum(s.page_not_found for s in results + alone),
        "before": before,
        "after_baseline": after_baseline,
        "after_waves": wave_stats,
        "after": wave_stats[-1],
        "results": [asdict(s) for s in results],
        "server_log": server.log_path.read_text(errors="replace")[-2000:],
    }


# =========================================================================================== reporting
def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary_lines(figures: dict[str, Any], command: str) -> list[str]:
    mb = 2**20
    before, after = figures["before"], figures["after"]

    def row(latency: dict[str, dict[str, float]], kind: str, label: str) -> str:
        item = latency[kind]
        if not item.get("n"):
            return f"- {label}: none"
        return (
            f"- {label}: n {item['n']}, p50 {1000 * item['p50']:.0f} ms, "
            f"p95 {1000 * item['p95']:.0f} ms, max {1000 * item['max']:.0f} ms"
        )

    lat = figures["latency"]
    limit = after.get("cache_limit")
    waves = figures["waves"]
    rss_waves = ", ".join(f"{s.get('rss', 0) / mb:.0f}" for s in figures["after_waves"])
    lines = [
        f"- command: `{command}`",
        f"- device: {_cpu_name()}, {os.cpu_count()} cores; load average before/after: "
        f"{figures.get('load_before', '?')} / {figures.get('load_after', '?')}",
        f"- server: `streamlit run app.py` on 127.0.0.1 (watched: bench/app_load.py serve); "
        f"{waves} wave{'s' if waves > 1 else ''} of {figures['sessions']} concurrent websocket sessions, one "
        f'synthetic case each ({"x".join(map(str, figures["size"]))}), {figures["clicks"]} clicks on "next '
        f'slice" per session, think time {figures["think_s"]:.2f} s (x0.5-1.5)',
        f"- served: {figures['served']} of {figures['requests']} requests without an error; failed sessions: "
        f"{len(figures['failed_sessions'])}; wall {figures['wall_s']:.1f} s",
        row(lat, "next", "next slice (viewer fragment rerun)"),
        row(lat, "open", "open the Predict page"),
        row(lat, "select", "choose the case (full rerun, starts the volume job)"),
        row(lat, "auto", "progress-fragment auto reruns (the last one reruns the page with the volume)"),
    ]
    if figures.get("baseline"):
        lines.append(row(figures["baseline"], "next", "baseline: next slice, one session alone, same server"))
    lines += [
        f"- model: {figures['model']}; loads: {after.get('loads')} ({after.get('predictors')} Predictor "
        f"built) for {waves * figures['sessions'] + (1 if figures.get('baseline') else 0)} sessions",
        f"- result cache: peak {after.get('cache_peak', 0) / mb:.1f} MiB of a "
        f"{(limit or 0) / mb:.0f} MiB bound"
        f"{' (--cache-mb)' if figures['cache_mb'] is not None else ' (the app default)'}, "
        f"{after.get('cache_evictions', 0)} evictions in {after.get('cache_puts', 0)} puts; "
        f"normalised-case cache peak {after.get('prepared_peak', 0) / mb:.1f} MiB",
        f"- server RSS: {before.get('rss', 0) / mb:.0f} MiB ready, after each wave {rss_waves} MiB, "
        f"peak {after.get('rss_peak', 0) / mb:.0f} MiB; closed sessions kept "
        f"{figures['session_ttl'] if figures.get('session_ttl') is not None else 120} s (Streamlit's "
        "server.disconnectedSessionTTL)",
    ]
    if figures.get("page_not_found"):
        lines.append(
            f"- 'page not found' messages: {figures['page_not_found']} (Streamlit sends one to the "
            "first session of a fresh server that opens a page by its URL path; the page is shown)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40, help="clicks on 'next slice' per session")
    parser.add_argument("--size", default="96,128,128", help="D,H,W of the synthetic cases (app default)")
    parser.add_argument("--cache-mb", type=float, default=None, help="bound the result cache (default: app)")
    parser.add_argument("--think", type=float, default=0.1, help="seconds between clicks (x0.5-1.5)")
    parser.add_argument("--waves", type=int, default=2, help="rounds of sessions (memory must not grow)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-session run first")
    parser.add_argument(
        "--session-ttl",
        type=int,
        default=None,
        help="seconds a closed session's state is kept (Streamlit's default: 120); after "
        "each wave the benchmark waits this long + 3 s before reading the memory",
    )
    parser.add_argument("--home", type=Path, default=None, help="reuse this workspace (cohort made once)")
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    figures = measure(
        sessions=args.sessions,
        clicks=args.requests,
        size=size,
        cache_mb=args.cache_mb,
        think_s=args.think,
        waves=args.waves,
        baseline=not args.no_baseline,
        session_ttl=args.session_ttl,
        home=args.home,
    )
    figures["load_before"], figures["load_after"] = load_before, " ".join(f"{v:.2f}" for v in os.getloadavg())
    command = "python bench/app_load.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = summary_lines(figures, command)
    if args.note:
        lines.append(f"- note: {args.note}")
    print("\n".join(lines))
    if figures["failed_sessions"] or figures["request_errors"]:
        print("errors:", figures["failed_sessions"], figures["request_errors"], file=sys.stderr)
    if not args.no_record:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as out:
            out.write(f"\n## app_load: {stamp}\n\n" + "\n".join(lines) + "\n")
    return 0 if figures["served"] == figures["requests"] and not figures["failed_sessions"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == SERVE:
        # serve STATS CACHE_MB|none -- STREAMLIT ARGS...
        _serve(sys.argv[2], None if sys.argv[3] == "none" else float(sys.argv[3]), sys.argv[5:])
    else:
        sys.exit(main())
