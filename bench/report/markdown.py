"""The report as Markdown, to paste into an issue or a chat. Every string is escaped; charts are
left to the HTML page."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from bench.report.sections import Chart, Charts, Section, Table, Text

# Inside a table cell only these are Markdown syntax (< > & are made entities separately).
_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")


def escape(value: Any) -> str:
    """Text safe in Markdown (and in a table cell): HTML is inert, Markdown syntax is literal."""
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(sections: list[Section], title: str) -> str:
    parts = [f"# {escape(title)}", ""]
    for section in sections:
        parts += ["#" * section.level + " " + escape(section.title), ""]
        charts = False
        for block in section.blocks:
            if isinstance(block, Text):
                parts += [escape(block.text), ""]
            elif isinstance(block, Table):
                parts += [table(block.header, block.rows), ""]
            elif isinstance(block, Chart | Charts):
                charts = True
        if charts:
            parts += ["(Charts: see report.html.)", ""]
    return "\n".join(parts).rstrip() + "\n"
