"""What speed costs: a prices file turns measured rates into speed per dollar-hour and the price
of a fixed amount of work.

    [[price]]
    match = "H100"             # a machine label (exact), else a regular expression on the GPU
    dollars_per_hour = 2.5     # rent; optional
    purchase_dollars = 30000   # optional
    power_w = 700              # optional
    source = "where the figure comes from"
    date = "2026-11-01"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.tomlfile import read_toml

EXAMPLE_PRICES = Path(__file__).with_name("prices.example.toml")
SECONDS_PER_HOUR = 3600.0
NUMBERS = ("dollars_per_hour", "purchase_dollars", "power_w")
TEXTS = ("source", "date")


@dataclass(frozen=True)
class Price:
    match: str
    dollars_per_hour: float | None = None
    purchase_dollars: float | None = None
    power_w: float | None = None
    source: str = ""
    date: str = ""


def load_prices(path: Path) -> list[Price]:
    data = read_toml(path, "prices")
    entries = data.get("price")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected one or more [[price]] entries")
    return [_price(entry, f"{path}: price[{i}]") for i, entry in enumerate(entries)]


def _price(raw: Any, where: str) -> Price:
    if not isinstance(raw, dict) or not isinstance(raw.get("match"), str) or not raw["match"]:
        raise UserError(f"{where}: expected a table with a non-empty match")
    valid = ("match", *NUMBERS, *TEXTS)
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    try:
        re.compile(raw["match"])
    except re.error as exc:
        raise UserError(f"{where}.match: bad regular expression: {exc}") from exc
    values: dict[str, Any] = {"match": raw["match"]}
    for key in NUMBERS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"{where}.{key}: expected a positive number, got {value!r}")
            values[key] = float(value)
    for key in TEXTS:
        if key in raw:
            values[key] = str(raw[key])
    if not any(key in values for key in NUMBERS):
        raise UserError(f"{where}: give at least one of {', '.join(NUMBERS)}")
    return Price(**values)


def price_for(label: str, gpu_name: str | None, prices: list[Price]) -> Price | None:
    """The price of a machine: an entry naming its label exactly, else the first entry whose
    pattern matches its GPU model."""
    for price in prices:
        if price.match == label:
            return price
    if isinstance(gpu_name, str) and gpu_name:  # a CPU-only machine's is None or NaN
        for price in prices:
            if re.search(price.match, gpu_name, re.IGNORECASE):
                return price
    return None


def dollars_for_work(flops: float, tflops: float, dollars_per_hour: float) -> float:
    """What `flops` operations cost at a measured rate of `tflops` on rented hardware."""
    return flops / (tflops * 1e12) / SECONDS_PER_HOUR * dollars_per_hour


def tflops_per_dollar_hour(tflops: float, dollars_per_hour: float) -> float:
    return tflops / dollars_per_hour


def joules_per_tflop(energy_j: float, calls: int, flops_per_call: float) -> float:
    """Energy per 1e12 operations, from NVML's energy over a case's timed calls."""
    return energy_j / (calls * flops_per_call / 1e12)
