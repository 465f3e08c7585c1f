"""tests/browser.py: the PNG reader against an independent encoder, and the real browser:
a drawn SVG shows up in a screenshot, and a script runs only when it is markup, not text."""

from __future__ import annotations

import html
import struct
import zlib
from pathlib import Path

import pytest
from browser import (
    Image,
    PngError,
    count_pixels,
    decode_png,
    dump_dom,
    non_white_fraction,
    require_chromium,
    screenshot,
)
from hypothesis import given
from hypothesis import strategies as st

COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def predictor(filter_type: int, a: int, b: int, c: int) -> int:
    """The PNG spec's prediction for a byte from left a, above b and above-left c, written out
    here independently of the reader under test."""
    if filter_type == 0:
        return 0
    if filter_type == 1:
        return a
    if filter_type == 2:
        return b
    if filter_type == 3:
        return (a + b) // 2
    estimate = a + b - c
    distances = [abs(estimate - a), abs(estimate - b), abs(estimate - c)]
    return (a, b, c)[distances.index(min(distances))]  # ties go to a, then b


def encode_png(image: Image, filters: list[int]) -> bytes:
    """An 8-bit PNG of IMAGE with row y filtered by filters[y], its data split over two IDATs."""
    bpp = image.channels
    raw = bytearray()
    above = bytes(image.width * bpp)
    for row, filter_type in zip(image.rows, filters, strict=True):
        raw.append(filter_type)
        for x, value in enumerate(row):
            a = row[x - bpp] if x >= bpp else 0
            c = above[x - bpp] if x >= bpp else 0
            raw.append((value - predictor(filter_type, a, above[x], c)) % 256)
        above = row
    data = zlib.compress(bytes(raw))
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, COLOUR_TYPE[bpp], 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", data[:3]), (b"IDAT", data[3:]), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        for kind, body in chunks
    )


@st.composite
def images(draw: st.DrawFn) -> Image:
    width = draw(st.integers(1, 8))
    height = draw(st.integers(1, 8))
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    row = st.binary(min_size=width * channels, max_size=width * channels)
    rows = draw(st.lists(row, min_size=height, max_size=height))
    return Image(width, height, channels, tuple(rows))


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4, None], ids=lambda f: f"filter{f}")
@given(image=images(), data=st.data())
def test_png_round_trip(filter_type: int | None, image: Image, data: st.DataObject) -> None:
    """Every filter type (None: a random type per row, as real encoders choose) decodes back to
    the pixels encoded."""
    per_row = st.just(filter_type) if filter_type is not None else st.integers(0, 4)
    filters = data.draw(st.lists(per_row, min_size=image.height, max_size=image.height))
    assert decode_png(encode_png(image, filters)) == image


def png_with_header(bit_depth: int, colour_type: int, interlace: int) -> bytes:
    png = bytearray(encode_png(Image(1, 1, 3, (b"\x01\x02\x03",)), [0]))
    png[24:29] = bytes([bit_depth, colour_type, 0, 0, interlace])  # IHDR fields after the size
    png[29:33] = struct.pack(">I", zlib.crc32(png[12:29]))
    return bytes(png)


def flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("png", "message"),
    [
        (b"GIF89a", "bad signature"),
        (png_with_header(16, 2, 0), "bit depth 16"),
        (png_with_header(8, 3, 0), "colour type 3"),
        (png_with_header(8, 2, 1), "interlaced"),
        (flip_bit(png_with_header(8, 2, 0), 19), "bad CRC in b'IHDR'"),
    ],
    ids=["not-png", "16-bit", "palette", "interlaced", "bad-crc"],
)
def test_png_reader_refuses_what_it_cannot_read(png: bytes, message: str) -> None:
    with pytest.raises(PngError, match=message):
        decode_png(png)


RED = (0xD6, 0x27, 0x28)  # #d62728
BLUE = (0x1F, 0x77, 0xB4)  # #1f77b4
RECT_W, RECT_H = 120, 80


def chart_page(path: Path, with_rect: bool) -> Path:
    rect = f'<rect x="40" y="30" width="{RECT_W}" height="{RECT_H}" fill="#d62728"/>'
    path.write_text(
        '<!doctype html><html><body style="margin:0;background:#fff">'
        '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">'
        f"{rect if with_rect else ''}"
        '<line x1="200" y1="50" x2="360" y2="250" stroke="#1f77b4" stroke-width="4"/>'
        "</svg></body></html>"
    )
    return path


def test_screenshot_shows_the_svg(tmp_path: Path) -> None:
    require_chromium()
    shot = screenshot(chart_page(tmp_path / "chart.html", with_rect=True), 400, 300)
    assert (shot.width, shot.height) == (400, 300)
    red = count_pixels(shot, RED)
    assert abs(red - RECT_W * RECT_H) <= 0.05 * RECT_W * RECT_H, red
    assert shot.rgb(40 + RECT_W // 2, 30 + RECT_H // 2) == RED
    assert count_pixels(shot, BLUE, tolerance=40) > 300  # a 256 px line, 4 px wide, antialiased
    assert 0.08 < non_white_fraction(shot) < 0.15

    blank = screenshot(chart_page(tmp_path / "no-rect.html", with_rect=False), 400, 300)
    assert count_pixels(blank, RED) <= 5
    assert count_pixels(blank, BLUE, tolerance=40) > 300  # the page still drew


def test_dump_dom_tells_run_scripts_from_escaped_text(tmp_path: Path) -> None:
    require_chromium()
    hostile = [
        '<script>document.body.dataset.injected = "1"</script>',
        '<img src="missing.png" onerror="document.body.dataset.injected = 2">',
        '<script>setTimeout(() => { document.body.dataset.injected = "3" }, 1000)</script>',
    ]
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html><html><body>"
        + "".join(f"<pre>{html.escape(text)}</pre>" for text in hostile)
        + '<script>document.body.dataset.ran = "1"</script>'
        + '<script>setTimeout(() => { document.body.dataset.timer = "1" }, 1000)</script>'
        + "</body></html>"
    )
    dom = dump_dom(page)
    assert 'data-ran="1"' in dom  # scripts do run in this mode,
    assert 'data-timer="1"' in dom  # and so do timers,
    assert "data-injected" not in dom  # but none of the escaped text did
    for text in hostile:
        assert f"<pre>{html.escape(text, quote=False)}</pre>" in dom
