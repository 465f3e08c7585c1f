"""Sizes written by people ("24GiB", "512 MiB", "1.5g") as bytes, and size ranges of suite files."""

from __future__ import annotations

import math
import re
from typing import Any

from bench.errors import UserError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
}
# A size range of a suite file stops after this many points: a typo in `step` (1.0001) would
# otherwise plan millions of cases.
MAX_RANGE_POINTS = 200


def parse_bytes(text: Any, what: str) -> int:
    """ "24GiB", "24 GB", "512MiB", "1.5g" or a positive int as bytes (GB = 10^9; GiB and a bare
    G = 2^30). A UserError naming `what` otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UserError(f"{what}: the size must be positive, got {text!r}")
        return text
    match = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text if isinstance(text, str) else ""
    )
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UserError(f"{what}: expected a size like 24GiB, 16GB or 512MiB, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserError(f"{what}: the size must be positive, got {text!r}")
    return value


def size_points(value: Any, where: str) -> list[int]:
    """Sizes in bytes from a list of sizes, or a geometric range
    `{ from = "256KiB", to = "8GiB", step = 2 }` (step optional, default 2; `to` included when
    the steps land on it)."""
    if isinstance(value, list):
        if not value:
            raise UserError(f"{where}: expected a non-empty list of sizes")
        return list(dict.fromkeys(parse_bytes(v, f"{where}[{i}]") for i, v in enumerate(value)))
    if not isinstance(value, dict):
        raise UserError(
            f'{where}: expected a list of sizes or {{ from = "4KiB", to = "1GiB", step = 2 }}, '
            f"got {value!r}"
        )
    unknown = set(value) - {"from", "to", "step"}
    if unknown or not {"from", "to"} <= set(value):
        raise UserError(f"{where}: a size range has the keys from, to and optionally step")
    low, high = parse_bytes(value["from"], f"{where}.from"), parse_bytes(value["to"], f"{where}.to")
    step = value.get("step", 2)
    if isinstance(step, bool) or not isinstance(step, int | float) or not step > 1:
        raise UserError(f"{where}.step: expected a number above 1, got {step!r}")
    if high < low:
        raise UserError(f"{where}: to ({high} bytes) is below from ({low} bytes)")
    count = math.floor(math.log(high / low, step) + 1e-9) + 1
    if count > MAX_RANGE_POINTS:
        raise UserError(f"{where}: {count} sizes; at most {MAX_RANGE_POINTS} (raise step)")
    return list(dict.fromkeys(round(low * step**i) for i in range(count)))
