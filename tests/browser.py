"""Render pages in a real headless Chromium and look at the result, for tests.

Two ways to look: `dump_dom` returns the DOM after the page's scripts ran (so a test can prove
an injected script did not run), and `screenshot` returns the pixels (so a test can prove a chart
was drawn). Screenshots are decoded by a small pure-Python PNG reader, so no imaging library is
needed. A test that needs the browser calls `require_chromium()` first; it skips, saying how to
install one, when there is none. The browser is found by scripts/ensure_chromium.py, which
`make test` runs first to install Debian's chromium where it can.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent

NOT_FOUND = (
    "Chromium not found: run python3 scripts/ensure_chromium.py (installs Debian's chromium)"
)
# One launch takes 1–2 s here; a minute leaves room for a loaded 2-core CI machine.
CHROMIUM_TIMEOUT_S = 60.0
# Virtual time --dump-dom lets pass before reading the DOM, so timers a page sets (setTimeout
# payloads) fire too. Virtual: it costs no wall-clock time.
VIRTUAL_TIME_BUDGET_MS = 5000


def _load_ensure_chromium() -> ModuleType:
    """scripts/ensure_chromium.py as a module: the one place that knows where browsers live."""
    path = REPO / "scripts" / "ensure_chromium.py"
    spec = importlib.util.spec_from_file_location("ensure_chromium", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ensure_chromium = _load_ensure_chromium()


def find_chromium() -> str | None:
    """The Chromium executable (BENCH_CHROMIUM, else the first known name on PATH), or None."""
    return _ensure_chromium.find_chromium()


def require_chromium() -> str:
    """The Chromium executable; skips the calling test, saying how to get one, without it."""
    path = find_chromium()
    if path is None:
        reason = NOT_FOUND
        override = os.environ.get(_ensure_chromium.ENV_VAR)
        if override:
            reason += f"; {_ensure_chromium.ENV_VAR}={override} is not an executable"
        pytest.skip(reason)
    return path


def chromium_args(user_data_dir: Path) -> list[str]:
    """Flags for headless Chromium in a CI container: running as root without a sandbox, a
    small /dev/shm, no GPU, nothing fetched from the network, one device pixel per CSS pixel
    (so pixel counts are areas in CSS px), and a throwaway profile."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={user_data_dir}",
    ]


def run_chromium(*args: str, timeout_s: float = CHROMIUM_TIMEOUT_S) -> str:
    """Run Chromium once with `chromium_args` and ARGS in a fresh profile; its stdout.

    Chromium starts helper processes (GPU, renderer, zygote), so it runs in its own session and
    the whole group is killed when it times out or exits, leaving nothing behind."""
    path = find_chromium()
    if path is None:
        raise RuntimeError(NOT_FOUND)
    with tempfile.TemporaryDirectory(prefix="bench-chromium-", ignore_cleanup_errors=True) as tmp:
        command = [path, *chromium_args(Path(tmp)), *args]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.communicate()
            raise RuntimeError(f"Chromium took more than {timeout_s:.0f} s: {command}") from None
        _kill_group(process.pid)
    if process.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-20:])
        raise RuntimeError(f"Chromium exited with status {process.returncode}: {command}\n{tail}")
    return stdout


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group may be gone already
        os.killpg(pgid, signal.SIGKILL)


def dump_dom(html_path: Path, timeout_s: float = CHROMIUM_TIMEOUT_S) -> str:
    """The page's DOM serialised as HTML after it loaded and its scripts (and timers, within
    VIRTUAL_TIME_BUDGET_MS of virtual time) ran."""
    budget = f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"
    return run_chromium(budget, "--dump-dom", html_path.resolve().as_uri(), timeout_s=timeout_s)


def screenshot(
    html_path: Path, width_px: int, height_px: int, timeout_s: float = CHROMIUM_TIMEOUT_S
) -> Image:
    """The page rendered in a width_px × height_px window (the top of the page only)."""
    with tempfile.TemporaryDirectory(prefix="bench-shot-") as tmp:
        png_path = Path(tmp) / "shot.png"
        run_chromium(
            f"--screenshot={png_path}",
            f"--window-size={width_px},{height_px}",
            html_path.resolve().as_uri(),
            timeout_s=timeout_s,
        )
        if not png_path.exists():
            raise RuntimeError(f"Chromium wrote no screenshot of {html_path}")
        return decode_png(png_path.read_bytes())


@dataclass(frozen=True)
class Image:
    """8-bit pixels, top row first: rows[y] holds width × channels bytes, left to right, with
    channels 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA)."""

    width: int
    height: int
    channels: int
    rows: tuple[bytes, ...]

    def rgb_pixels(self) -> Iterator[tuple[int, int, int]]:
        """Every pixel's (r, g, b), row by row; alpha is ignored (screenshots are opaque)."""
        n = self.channels
        for row in self.rows:
            if n >= 3:
                yield from zip(row[0::n], row[1::n], row[2::n], strict=True)
            else:
                gray = row[0::n]
                yield from zip(gray, gray, gray, strict=True)

    def rgb(self, x: int, y: int) -> tuple[int, int, int]:
        """The (r, g, b) of the pixel in column x, row y."""
        n = self.channels
        pixel = self.rows[y][x * n : x * n + n]
        return (pixel[0], pixel[1], pixel[2]) if n >= 3 else (pixel[0], pixel[0], pixel[0])


def count_pixels(image: Image, rgb: tuple[int, int, int], tolerance: int = 8) -> int:
    """How many pixels are within `tolerance` of `rgb` in every channel."""
    r0, g0, b0 = rgb
    return sum(
        1
        for r, g, b in image.rgb_pixels()
        if abs(r - r0) <= tolerance and abs(g - g0) <= tolerance and abs(b - b0) <= tolerance
    )


def non_white_fraction(image: Image, tolerance: int = 8) -> float:
    """The fraction of pixels that are not white (within `tolerance`): how much was drawn."""
    white = count_pixels(image, (255, 255, 255), tolerance)
    return 1.0 - white / (image.width * image.height)


class PngError(ValueError):
    """A PNG this reader cannot read: malformed, or a kind it does not support."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colour type -> samples per pixel, for the 8-bit colour types this reader supports.
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def decode_png(data: bytes) -> Image:
    """Decode an 8-bit, non-interlaced gray, gray+alpha, RGB or RGBA PNG (what Chromium
    writes); any other kind raises PngError.

    Chunks are checked against their CRC; IDAT chunks are joined and inflated; each row is then
    unfiltered (PNG spec section 9) with the row above, which is zeros for the first row."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG file (bad signature)")
    header: tuple[int, ...] | None = None
    idat: list[bytes] = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise PngError("truncated chunk header")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise PngError(f"truncated {kind!r} chunk")
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise PngError(f"bad CRC in {kind!r} chunk")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError("no IHDR chunk")
    width, height, bit_depth, colour_type, compression, filter_method, interlace = header
    if bit_depth != 8 or colour_type not in CHANNELS:
        raise PngError(
            f"unsupported PNG: bit depth {bit_depth}, colour type {colour_type} "
            "(only 8-bit gray, gray+alpha, RGB and RGBA are supported)"
        )
    if interlace != 0:
        raise PngError("unsupported PNG: interlaced (Adam7)")
    if compression != 0 or filter_method != 0:
        raise PngError(f"unknown compression {compression} or filter method {filter_method}")
    channels = CHANNELS[colour_type]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as error:
        raise PngError(f"corrupt image data: {error}") from None
    return Image(width, height, channels, tuple(unfilter(raw, width, height, channels)))


def unfilter(raw: bytes, width: int, height: int, bytes_per_pixel: int) -> list[bytes]:
    """Undo PNG's per-row filters. Each row is a filter-type byte then width × bytes_per_pixel
    bytes; byte x is stored minus a prediction from a (the byte one pixel to the left), b (the
    byte above) and c (above-left), all 0 outside the image: 0 none, 1 Sub a, 2 Up b,
    3 Average floor((a + b) / 2), 4 Paeth (whichever of a, b, c is closest to a + b - c)."""
    stride = width * bytes_per_pixel
    if len(raw) != height * (stride + 1):
        raise PngError(f"image data is {len(raw)} bytes, expected {height * (stride + 1)}")
    bpp = bytes_per_pixel
    rows: list[bytes] = []
    above = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        filter_type = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if filter_type == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif filter_type == 2:
            for x in range(stride):
                line[x] = (line[x] + above[x]) & 0xFF
        elif filter_type == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + above[x]) >> 1)) & 0xFF
        elif filter_type == 4:
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                c = above[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + paeth(a, above[x], c)) & 0xFF
        elif filter_type != 0:
            raise PngError(f"row {y}: unknown filter type {filter_type}")
        above = bytes(line)
        rows.append(above)
    return rows


def paeth(a: int, b: int, c: int) -> int:
    """PNG's Paeth predictor: whichever of a, b, c is closest to a + b - c (ties: a, b, c)."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c
