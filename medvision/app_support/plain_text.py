"""Data-derived text (case ids, file names, log lines, metadata keys, error messages) as plain text for
Streamlit elements that render Markdown.

Streamlit renders Markdown in st.markdown/st.caption/st.error/st.info/..., st.toast, image captions,
widget and metric labels, expander titles and radio options. A file name such as
``**B** [relogin](http://x) ![b](http://x/i.png)`` from a shared folder would otherwise show a link,
and make every user's browser fetch the image, on every page that names the file.

:func:`plain` backslash-escapes the ASCII punctuation that can start Markdown (CommonMark lets any of
it be escaped, and an escaped character always renders as itself). Escaping alone is not enough in three
places, handled below, because the browser's Markdown pipeline works on the text *after* escapes are
undone:

- GFM autolinks: ``http://x``, ``www.x.org`` and ``a@b.org`` in a text node become links.
- Material icons: the frontend rewrites ``:material/`` before parsing, then turns ``:material_x:`` in
  text into an icon; an escaped ``/`` keeps the rewrite from matching.
- Emoji shortcodes (``:smile:``) still become emoji; they fetch nothing and are left alone.

For whole blocks (log tails, tracebacks) use ``st.code``/``st.text``, which render no Markdown at all.
Plotly renders its own subset of HTML (``<a href>``, ``<b>``, ``<br>``) in titles, legends, tick labels
and hover text: :func:`plotly_text` is the same guard for text placed in a figure.
"""

from __future__ import annotations

import html
import re

__all__ = ["code", "plain", "plotly_text"]

# Characters that start Markdown (or one of Streamlit's additions) anywhere in a line: emphasis and
# strike (* ~), code (`), links and images ([ ] !), raw HTML and autolinks (< >), headings (#), tables (|),
# LaTeX ($), directives, colours and icons (: { }), entities (&), and the backslash itself. Parentheses,
# "-", "+" and "." need a "]" before them or a line start to mean anything, so they stay as they are and
# ids such as "BraTS2021_00006 (copy)" read the same in the page source and in tests.
_ALWAYS = {ord(c): "\\" + c for c in "\\`*[]!<>#|~$:{}&"}
# "_" only emphasises at a word boundary (CommonMark forbids intraword "_" emphasis): snake_case stays.
_EDGE_UNDERSCORE = re.compile(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# A block marker at the very start of the text: list item, ordered list, setext underline.
_LEADING_MARKER = re.compile(r"^(\s*(?:\d+(?=[.)]))?)([-+=.)])")
# A zero-width space breaks the patterns the GFM autolink pass looks for in text (after escapes are
# undone): http(s)://, www. and name@domain. It is only ever inserted into text that looks like one.
_BREAK = "\u200b"
_AUTOLINK = re.compile(r"(?i)(https?:|ftp:|www(?=\.)|@(?=[-\w]))")


def plain(value: object) -> str:
    """``str(value)`` that renders as exactly that text in any Streamlit Markdown element.

    Line breaks become spaces: a label or caption is one line, and a newline could start a Markdown
    block (heading, list, table) that escaping inside the line does not see.
    """
    text = " ".join(str(value).splitlines())
    text = _AUTOLINK.sub(lambda m: m.group(1) + _BREAK, text)
    text = text.translate(_ALWAYS)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    # The frontend turns ":material/" into ":material_" before parsing and then any ":material_x:" left
    # in the text into an icon, escaped colons included; an escaped "/" keeps the rewrite from matching.
    text = text.replace("\\:material/", "\\:material\\/")
    return _LEADING_MARKER.sub(r"\1\\\2", text, count=1)


def code(value: object) -> str:
    """``value`` as an inline code span (paths, file names) whose content Markdown leaves untouched.

    The fence is one backtick longer than the longest run of backticks inside, so the content cannot
    close it early; no link, image, directive or autolink is recognised inside a code span.
    """
    text = " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith(("`", " ")) or text.endswith(("`", " ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plotly_text(value: object) -> str:
    """``str(value)`` for a Plotly title, legend, tick or hover label: its tags and entities HTML-escaped,
    which Plotly shows as the characters they stand for."""
    return html.escape(str(value), quote=True)
