"""Datasheet peaks of GPUs, from a data file users can extend (bench/report/peaks.toml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.backends.base import DTYPES
from bench.errors import UserError
from bench.tomlfile import read_toml

PEAKS_FILE = Path(__file__).with_name("peaks.toml")
EXTRA_KEYS = ("memory_bandwidth_gbps", "memory_gb")


@dataclass(frozen=True)
class GpuPeak:
    name: str
    patterns: tuple[re.Pattern[str], ...]
    tflops: dict[str, float] = field(default_factory=dict)  # dtype -> TFLOP/s (int8: TOPS)
    memory_bandwidth_gbps: float | None = None
    memory_gb: float | None = None

    def matches(self, device_name: str) -> bool:
        return any(p.search(device_name) for p in self.patterns)


def load_peaks(extra: Path | None = None) -> list[GpuPeak]:
    """The shipped table, with the entries of `extra` (a user's file) tried first."""
    return (_read(extra) if extra else []) + _read(PEAKS_FILE)


def find_peak(device_name: str, peaks: list[GpuPeak]) -> GpuPeak | None:
    return next((peak for peak in peaks if peak.matches(device_name)), None)


def _read(path: Path) -> list[GpuPeak]:
    data = read_toml(path, "GPU peaks")
    entries = data.get("gpu")
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected [[gpu]] entries")
    return [_entry(entry, f"{path}: gpu[{i}]") for i, entry in enumerate(entries)]


def _entry(raw: Any, where: str) -> GpuPeak:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise UserError(f"{where}: expected a table with a name")
    valid = ("name", "match", *DTYPES, *EXTRA_KEYS)
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    match = raw.get("match", [raw["name"]])
    if not isinstance(match, list) or not all(isinstance(m, str) for m in match):
        raise UserError(f"{where}.match: expected a list of regular expressions")
    try:
        patterns = tuple(re.compile(m, re.IGNORECASE) for m in match)
    except re.error as exc:
        raise UserError(f"{where}.match: bad regular expression: {exc}") from exc
    numbers = {}
    for key in (*DTYPES, *EXTRA_KEYS):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UserError(f"{where}.{key}: expected a positive number, got {value!r}")
            numbers[key] = float(value)
    return GpuPeak(
        name=raw["name"],
        patterns=patterns,
        tflops={d: numbers[d] for d in DTYPES if d in numbers},
        memory_bandwidth_gbps=numbers.get("memory_bandwidth_gbps"),
        memory_gb=numbers.get("memory_gb"),
    )
