"""Charts as inline SVG, drawn here in Python: the HTML page needs no script, no library and no
network, and every string in a chart is escaped text.

Two chart kinds cover the report: `xy_chart` (lines and points on log or linear axes, e.g.
throughput against size, or a roofline) and `bar_chart` (horizontal bars with interval whiskers,
e.g. the scoreboard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# Tableau 10: distinguishable, and readable by most colour-blind readers.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FONT_PX = 11
MARGIN_LEFT_PX, MARGIN_RIGHT_PX, MARGIN_TOP_PX, MARGIN_BOTTOM_PX = 62, 12, 26, 42


@dataclass
class Series:
    name: str
    color: str
    points: list[tuple[float, float]]
    lines: bool = True  # join the points (sorted by x); else points only
    dashed: bool = False
    markers: bool = True
    tips: list[str] = field(default_factory=list)  # hover text per point (SVG <title>)
    # A reference line (a datasheet or theoretical figure): thin and dotted, never markers.
    reference: bool = False


@dataclass
class Bar:
    label: str
    value: float
    low: float | None = None  # interval whisker
    high: float | None = None
    color: str = PALETTE[0]
    tip: str = ""


def _fmt(value: float) -> str:
    """A tick label: 3 significant digits, with k/M/G/T from 1000 on."""
    for power, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= power:
            return f"{value / power:.3g}{suffix}"
    return f"{value:.3g}"


def _fit(text: str, width_px: float) -> str:
    """`text` cut with an ellipsis to fit `width_px` (at ~0.6 em per character)."""
    limit = max(int(width_px / (FONT_PX * 0.6)), 4)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1.0,) if last - first > 3 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in steps]
    return [t for t in ticks if low <= t <= high]


def _linear_ticks(low: float, high: float) -> list[float]:
    span = high - low
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


class _Axis:
    """Maps data values onto pixels along one axis."""

    def __init__(self, values: list[float], log: bool, start_px: float, end_px: float) -> None:
        self.log = log and all(v > 0 for v in values)
        low, high = min(values), max(values)
        if self.log:
            low, high = low / 1.25, high * 1.25
            if high / low < 10:  # show at least one decade so ticks exist
                middle = math.sqrt(low * high)
                low, high = middle / math.sqrt(10), middle * math.sqrt(10)
        else:
            low, high = min(low, 0.0), high * 1.08 if high > 0 else 1.0
            if high == low:
                high = low + 1
        self.low, self.high, self.start_px, self.end_px = low, high, start_px, end_px

    def __call__(self, value: float) -> float:
        if self.log:
            share = math.log(value / self.low) / math.log(self.high / self.low)
        else:
            share = (value - self.low) / (self.high - self.low)
        return self.start_px + share * (self.end_px - self.start_px)

    def ticks(self) -> list[float]:
        return _log_ticks(self.low, self.high) if self.log else _linear_ticks(self.low, self.high)


def _text(
    x: float, y: float, text: str, anchor: str = "middle", extra: str = "", fit_px: float = 0
) -> str:
    """A label; cut to `fit_px` when given, the whole text then in a hover title."""
    shown = _fit(text, fit_px) if fit_px else text
    tip = f"<title>{escape(text)}</title>" if shown != text else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{FONT_PX}"{extra}>'
        f"{tip}{escape(shown)}</text>"
    )


def _open(width_px: int, height_px: int, title: str, kind: str) -> list[str]:
    return [
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" width="{width_px}" '
        f'height="{height_px}" viewBox="0 0 {width_px} {height_px}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        _text(width_px / 2, 15, title, extra=' font-weight="bold"'),
    ]


def xy_chart(
    series: list[Series],
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = True,
    log_y: bool = True,
    width_px: int = 380,
    height_px: int = 260,
) -> str:
    """Lines and points; the legend lists the series under the plot."""
    drawn = [s for s in series if s.points]
    legend_rows = len(drawn)
    plot_bottom = height_px - MARGIN_BOTTOM_PX
    total_height = height_px + 14 * legend_rows + 4
    parts = _open(width_px, total_height, title, "xy")
    if not drawn:
        parts.append(_text(width_px / 2, height_px / 2, "no data"))
        return "\n".join([*parts, "</svg>"])
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    x_axis = _Axis(xs, log_x, MARGIN_LEFT_PX, width_px - MARGIN_RIGHT_PX)
    y_axis = _Axis(ys, log_y, plot_bottom, MARGIN_TOP_PX)
    parts += _frame(x_axis, y_axis, x_label, y_label, width_px, plot_bottom)
    for s in drawn:
        parts.append(_series(s, x_axis, y_axis))
    for row, s in enumerate(drawn):
        y = height_px + 14 * row + 4
        if s.lines or s.reference:
            parts.append(
                f'<line x1="{MARGIN_LEFT_PX}" y1="{y - 4}" x2="{MARGIN_LEFT_PX + 18}" '
                f'y2="{y - 4}" stroke="{s.color}"{_stroke(s)}/>'
            )
        else:
            parts.append(f'<circle cx="{MARGIN_LEFT_PX + 9}" cy="{y - 4}" r="3" fill="{s.color}"/>')
        legend_px = width_px - MARGIN_LEFT_PX - 24 - MARGIN_RIGHT_PX
        parts.append(_text(MARGIN_LEFT_PX + 24, y, s.name, anchor="start", fit_px=legend_px))
    return "\n".join([*parts, "</svg>"])


def _frame(
    x_axis: _Axis, y_axis: _Axis, x_label: str, y_label: str, width_px: int, plot_bottom: float
) -> list[str]:
    parts = [
        f'<rect x="{MARGIN_LEFT_PX}" y="{MARGIN_TOP_PX}" '
        f'width="{width_px - MARGIN_LEFT_PX - MARGIN_RIGHT_PX}" '
        f'height="{plot_bottom - MARGIN_TOP_PX}" fill="none" stroke="#888"/>'
    ]
    for tick in x_axis.ticks():
        x = x_axis(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{MARGIN_TOP_PX}" x2="{x:.1f}" y2="{plot_bottom}" '
            f'stroke="#e4e4e4"/>'
        )
        parts.append(_text(x, plot_bottom + 13, _fmt(tick)))
    for tick in y_axis.ticks():
        y = y_axis(tick)
        parts.append(
            f'<line x1="{MARGIN_LEFT_PX}" y1="{y:.1f}" x2="{width_px - MARGIN_RIGHT_PX}" '
            f'y2="{y:.1f}" stroke="#e4e4e4"/>'
        )
        parts.append(_text(MARGIN_LEFT_PX - 4, y + 4, _fmt(tick), anchor="end"))
    parts.append(
        _text((MARGIN_LEFT_PX + width_px - MARGIN_RIGHT_PX) / 2, plot_bottom + 30, x_label)
    )
    middle = (MARGIN_TOP_PX + plot_bottom) / 2
    parts.append(
        _text(14, middle, y_label, extra=f' transform="rotate(-90 14 {middle:.1f})" class="ylabel"')
    )
    return parts


def _stroke(s: Series) -> str:
    """A line's width and dash pattern: references thin and dotted, dashed series dashed."""
    if s.reference:
        return ' stroke-width="1.5" stroke-dasharray="2,3"'
    return ' stroke-width="2"' + (' stroke-dasharray="5,3"' if s.dashed else "")


def _series(s: Series, x_axis: _Axis, y_axis: _Axis) -> str:
    order = sorted(range(len(s.points)), key=lambda i: s.points[i][0])
    pixels = [(x_axis(s.points[i][0]), y_axis(s.points[i][1])) for i in order]
    kind = "series reference" if s.reference else "series"
    parts = [f'<g class="{kind}" data-series="{escape(s.name)}">']
    if (s.lines or s.reference) and len(pixels) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pixels)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{s.color}"{_stroke(s)}/>')
    if s.markers and not s.reference:
        for i, (x, y) in zip(order, pixels, strict=True):
            tip = f"<title>{escape(s.tips[i])}</title>" if i < len(s.tips) else ""
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}">{tip}</circle>')
    parts.append("</g>")
    return "\n".join(parts)


def bar_chart(
    bars: list[Bar],
    title: str,
    x_label: str,
    reference: float | None = 1.0,
    log_x: bool = True,
    width_px: int = 760,
    label_width_px: int = 300,
) -> str:
    """Horizontal bars from the axis origin (1 on a log axis) with optional interval whiskers."""
    row_px = 18
    top, plot_bottom = MARGIN_TOP_PX, MARGIN_TOP_PX + row_px * max(len(bars), 1)
    parts = _open(width_px, plot_bottom + MARGIN_BOTTOM_PX, title, "bars")
    if not bars:
        parts.append(_text(width_px / 2, top + 10, "no data"))
        return "\n".join([*parts, "</svg>"])
    values = [v for b in bars for v in (b.value, b.low, b.high) if v is not None and v > 0]
    values += [reference] if reference else []
    axis = _Axis(values, log_x, label_width_px, width_px - MARGIN_RIGHT_PX)
    origin = axis(reference) if reference and axis.low <= reference <= axis.high else axis.start_px
    for tick in axis.ticks():
        x = axis(tick)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{plot_bottom}" stroke="#e4e4e4"/>'
        )
        parts.append(_text(x, plot_bottom + 13, _fmt(tick)))
    for row, bar in enumerate(bars):
        y = top + row * row_px
        x = axis(bar.value) if bar.value > 0 else axis.start_px
        tip = f"<title>{escape(bar.tip)}</title>" if bar.tip else ""
        parts.append(
            f'<rect class="bar" x="{min(x, origin):.1f}" y="{y + 3}" '
            f'width="{max(abs(x - origin), 1):.1f}" height="{row_px - 6}" fill="{bar.color}">'
            f"{tip}</rect>"
        )
        if bar.low is not None and bar.high is not None and bar.low > 0:
            x_low, x_high, middle = axis(bar.low), axis(bar.high), y + row_px / 2
            parts.append(
                f'<path d="M{x_low:.1f},{middle - 4}v8M{x_low:.1f},{middle}H{x_high:.1f}'
                f'M{x_high:.1f},{middle - 4}v8" stroke="#222" fill="none"/>'
            )
        parts.append(
            _text(label_width_px - 6, y + row_px / 2 + 4, bar.label, "end", fit_px=label_width_px)
        )
    if reference:
        parts.append(
            f'<line x1="{origin:.1f}" y1="{top}" x2="{origin:.1f}" y2="{plot_bottom}" '
            f'stroke="#222"/>'
        )
    parts.append(_text((label_width_px + width_px) / 2, plot_bottom + 30, x_label))
    return "\n".join([*parts, "</svg>"])
