"""The SVG charts: axes that map values the right way round, ticks inside the range, and text
that is always escaped."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from bench.report.svg import Bar, Series, _Axis, _fmt, bar_chart, xy_chart

positive = st.floats(min_value=1e-6, max_value=1e15, allow_nan=False, allow_infinity=False)


@given(st.lists(positive, min_size=1, max_size=30), st.booleans())
def test_axes_are_monotone_inside_the_plot_and_ticks_lie_in_range(
    values: list[float], log: bool
) -> None:
    axis = _Axis(values, log, 50.0, 350.0)
    pixels = [axis(v) for v in sorted(values)]
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(pixels))
    assert all(50.0 - 1e-6 <= p <= 350.0 + 1e-6 for p in pixels)
    ticks = axis.ticks()
    assert ticks and all(axis.low <= t <= axis.high for t in ticks)


def test_tick_labels_are_short() -> None:
    assert [_fmt(v) for v in (0.05, 1, 999, 1000, 16384, 2e6, 3.5e12)] == [
        "0.05",
        "1",
        "999",
        "1k",
        "16.4k",
        "2M",
        "3.5T",
    ]


def test_a_chart_is_valid_svg_with_escaped_text_and_higher_values_drawn_higher() -> None:
    name = "<script>alert(1)</script> & co"
    svg = xy_chart(
        [Series(name, "#1f77b4", [(1.0, 1.0), (10.0, 100.0)], tips=["a<b", "c"])],
        "t<itle",
        "x (B)",
        "TFLOP/s",
    )
    root = ET.fromstring(svg)  # well-formed XML: nothing unescaped broke it
    texts = "".join(root.itertext())
    assert name in texts and "t<itle" in texts and "a<b" in texts
    assert "<script>" not in svg
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    ys = [float(c.get("cy", "nan")) for c in circles]
    assert ys[0] > ys[1]  # SVG y grows downwards: 100 TFLOP/s is above 1


def test_bars_grow_from_one_to_the_right_when_faster_and_left_when_slower() -> None:
    svg = bar_chart([Bar("fast", 2.0, 1.8, 2.2), Bar("slow", 0.5)], "speed", "× baseline")
    rects = re.findall(r'<rect class="bar" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    (fast_x, fast_w), (slow_x, slow_w) = [(float(x), float(w)) for x, w in rects]
    origin = re.search(r'<line x1="([\d.]+)" y1="\d+" x2="\1" y2="\d+" stroke="#222"/>', svg)
    assert origin is not None
    one = float(origin.group(1))
    assert fast_x == one and abs(slow_x + slow_w - one) < 0.2
    assert abs(fast_w - slow_w) < 1  # 2× and 0.5× are equally far from 1 on a log axis


def test_empty_charts_say_so() -> None:
    assert "no data" in xy_chart([], "t", "x", "y")
    assert "no data" in bar_chart([], "t", "x")
