"""One HTML table renderer for the self-contained report pages (report.html, audit.html)."""

from __future__ import annotations

import html
from typing import Any

_FAIL = ("FAILED", "NO")
_PASS = ("PASSED", "yes")


def render_table(columns: list[str], rows: list[list[Any]]) -> str:
    """An escaped ``<table>``; cells reading FAILED/NO or PASSED/yes get the fail/pass class."""
    parts = ["<table><tr>", *(f"<th>{html.escape(str(c))}</th>" for c in columns), "</tr>"]
    for row in rows:
        cells = []
        for cell in row:
            text = str(cell)
            cls = ' class="fail"' if text in _FAIL else ""
            cls = ' class="pass"' if text in _PASS else cls
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)
