"""Whether the browser session that started some background work is still there to see its result.

A whole-volume prediction (minutes with MC dropout on a CPU) runs in a thread of the server. When its tab
is closed, the work is for nobody, yet it would keep the server's cores busy; the page hands
:func:`current_session_alive` to the job, which asks it between batches and stops when it says False.
"""

from __future__ import annotations

from collections.abc import Callable


def _always() -> bool:
    return True


def current_session_alive() -> Callable[[], bool]:
    """A check, safe to call from any thread, that the session running this page is still connected.

    Outside a Streamlit server (bare ``python`` runs, the test harness) there is no session to lose, and
    the check always says True. A session that reconnects (a network blip, a reload) keeps its id.
    """
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or not runtime.exists():
        return _always
    server = runtime.get_instance()
    session_id = ctx.session_id

    def alive() -> bool:
        # Only a definite False ends the work: the test harness's stand-in runtime answers with a mock.
        return server.is_active_session(session_id) is not False

    return alive
