"""CSV cells that a spreadsheet shows as text, never runs as a formula (CSV injection).

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and
some also after a leading tab or carriage return) as a formula, so a case id such as
``=HYPERLINK("http://x", "open")`` in a downloaded report would become a live link or worse. Following
the OWASP advice on CSV injection, such a text cell is written with a leading single quote, which the
spreadsheet shows as text. Numbers stay numbers: a number, or text that is exactly a decimal number
(``-1.500``, as the reports format their floats), is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["safe_cell", "safe_row"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` unchanged unless it is text a spreadsheet would read as a formula; then ``"'" + value``."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS) or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row (column -> value) with every value passed through :func:`safe_cell`."""
    return {key: safe_cell(value) for key, value in row.items()}
