"""The report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no
font or file from the network. A Content-Security-Policy forbids scripts and remote loads, and
every string from a results file is escaped, so data is only ever text."""

from __future__ import annotations

from html import escape
from typing import Any

import pandas as pd

from bench.report.sections import Chart, Charts, Section, Table, Text

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 24px 48px; }
nav { position: sticky; top: 0; background: #f6f6f6; border-bottom: 1px solid #ddd;
      padding: 6px 24px; font-size: 13px; z-index: 1; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { background: #fff; border: 1px solid #eee; font-family: inherit; }
.scroll { overflow-x: auto; }
"""


def _cell(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    return escape(text)


def _table(block: Table) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in block.header)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>' + (
        "</table></div>"
    )


def _block(block: Text | Table | Chart | Charts) -> str:
    if isinstance(block, Text):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Chart):
        return f'<div class="scroll">{block.svg}</div>'
    caption = f"<p>{escape(block.caption)}</p>" if block.caption else ""
    return f'{caption}<div class="grid">' + "\n".join(c.svg for c in block.charts) + "</div>"


def render(sections: list[Section], title: str, generated: str) -> str:
    nav = "".join(
        f'<a href="#{escape(s.anchor)}">{escape(s.title)}</a>' for s in sections if s.anchor
    )
    body = []
    for section in sections:
        anchor = f' id="{escape(section.anchor)}"' if section.anchor else ""
        level = min(section.level, 6)
        body.append(f"<section{anchor}><h{level}>{escape(section.title)}</h{level}>")
        body += [_block(block) for block in section.blocks]
        body.append("</section>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>",
            f"<body><nav>{nav}</nav><main><h1>{escape(title)}</h1>",
            f"<p>Generated {escape(generated)} by bench report.</p>",
            *body,
            "</main></body></html>",
        ]
    )
