"""Widget values that survive a visit to another page.

Streamlit deletes the session-state value of every keyed widget that a script run does not draw, so
opening another page and coming back resets a page's choices (case, view, slice, toggles). The
documented remedy is to copy the values to keys no widget owns and to put them back before the
widgets are drawn again; :func:`keep_widget_values` does both in one pass over the page's keys.
It works on any mutable mapping (``st.session_state`` in the app, a dict in tests).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

KEPT_KEY = "mv_kept_widget_values"  # owned by no widget, so Streamlit never drops it


def keep_widget_values(state: MutableMapping[str, Any], keys: Iterable[str], *, restore: bool) -> None:
    """Remember the value of each widget key that is present, or (``restore``) set the remembered ones.

    Restore on the first run of a page after another page ran: there, the values Streamlit still
    reports for the dropped widgets are not their last ones. Otherwise remember, at the page's top and
    at the start of each fragment (its reruns skip the page's top), so the copy holds the latest values.
    """
    kept = state.get(KEPT_KEY)
    if not isinstance(kept, dict):
        kept = {}
    for key in keys:
        if restore and key in kept:
            state[key] = kept[key]
        elif not restore and key in state:
            kept[key] = state[key]
    state[KEPT_KEY] = kept


def came_from_another_page(state: MutableMapping[str, Any]) -> bool:
    """Whether the app's previous full run showed another page (set by app.py before each page runs)."""
    return state.get("mv_previous_page") != state.get("mv_current_page")


def resend_widget_values(state: MutableMapping[str, Any], keys: Iterable[str]) -> None:
    """Assign each present widget key its own value, so the widget is drawn showing it.

    A run that ends in ``st.stop()`` skips Streamlit's clean-up of the widgets it did not draw: the
    server keeps their values while the browser forgets the widgets. When such a widget is drawn
    again, the server does not send the value it kept (only one assigned through session state in
    this run, or stored before the widget first existed), so the browser shows the widget's default
    (a checkbox unticked, a slider at its minimum) and its next message turns that default into the
    server's value. Call at the page's top, before any of these widgets is drawn; the assignment
    also keeps a value through runs that do not draw its widget.
    """
    for key in keys:
        if key in state:
            state[key] = state[key]
