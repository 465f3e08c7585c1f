"""Suites: TOML files in `suites/` (or any path) that say what to run, validated on load.

    name = "default"
    description = "..."
    [settings]                  # optional: how to measure (bench.case.Settings)
    time_budget_s = 1.0
    [[cases]]                   # one or more entries
    workload = "matmul"
    backends = ["torch", "jax"] # optional, default: the workload's (torch, jax, cupy for most)
    devices = ["cpu", "gpu"]    # optional, default: the workload's (both for most)
    dtypes = ["float32"]        # required unless the workload has a default
    threads = [1, 2, "all"]     # optional, CPU entries only: each point at each thread count
                                # ("sweep": 1, 2, 4, ... and all usable cores)
    square = [256, 512]         # the workload's own keys (see `bench list`)
    [cases.settings]            # optional per-entry overrides of [settings]

Every problem is a UserError naming the file and the key path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.backends import BACKENDS
from bench.backends.base import DTYPES, usable_cores
from bench.case import Settings
from bench.errors import UserError
from bench.tomlfile import read_toml
from bench.workloads import WORKLOADS

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
DEVICE_KINDS = ("cpu", "gpu")
ENTRY_KEYS = ("workload", "backends", "devices", "dtypes", "threads", "settings")

# Accepted ranges of each setting: (type, lowest, highest).
SETTING_RANGES: dict[str, tuple[type, float, float]] = {
    "time_budget_s": (float, 0.001, 3600.0),
    "warmup_s": (float, 0.0, 600.0),
    "min_samples": (int, 1, 100_000),
    "max_samples": (int, 1, 1_000_000),
    "case_timeout_s": (float, 1.0, 86_400.0),
    "l2_flush": (bool, 0, 1),
    "max_call_s": (float, 0.001, 86_400.0),
}


@dataclass(frozen=True)
class Entry:
    workload: str
    backends: tuple[str, ...]
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    points: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (variant, sorted params)
    settings: Settings


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path
    settings: Settings
    entries: tuple[Entry, ...]


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A suite name (a file in suites/) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"suite file {path} does not exist")
        return path
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise UserError(
            f"unknown suite {name_or_path!r}; valid: {', '.join(available_suites())} "
            "or a path to a .toml file"
        )
    return candidate


def load(name_or_path: str) -> Suite:
    path = resolve(name_or_path)
    data = read_toml(path, "suite")
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Suite:
    where = str(path)
    unknown = set(data) - {"name", "description", "settings", "cases"}
    if unknown:
        raise UserError(
            f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
            "valid: name, description, settings, cases"
        )
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: name: expected a non-empty string, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where}: description: expected a string, got {description!r}")
    settings = parse_settings(data.get("settings", {}), Settings(), f"{where}: settings")
    cases = data.get("cases")
    if not isinstance(cases, list) or not cases:
        raise UserError(f"{where}: expected one or more [[cases]] entries")
    entries = tuple(
        _parse_entry(entry, settings, f"{where}: cases[{i}]") for i, entry in enumerate(cases)
    )
    return Suite(name, description, path, settings, entries)


def parse_settings(raw: Any, base: Settings, where: str) -> Settings:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table, got {raw!r}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SETTING_RANGES:
            raise UserError(f"{where}: unknown setting {key!r}; valid: {', '.join(SETTING_RANGES)}")
        kind, low, high = SETTING_RANGES[key]
        ok_type = (
            isinstance(value, bool)
            if kind is bool
            else (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and (kind is float or isinstance(value, int))
            )
        )
        if not ok_type:
            raise UserError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
        if kind is not bool and not low <= value <= high:
            raise UserError(f"{where}.{key}: {value} is out of range [{low:g}, {high:g}]")
        values[key] = kind(value)
    merged = dataclasses.replace(base, **values)
    if merged.max_samples < merged.min_samples:
        raise UserError(f"{where}: max_samples ({merged.max_samples}) < min_samples")
    return merged


def _names(raw: Any, valid: tuple[str, ...] | list[str], where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise UserError(f"{where}: expected a non-empty list of names, got {raw!r}")
    bad = [x for x in raw if x not in valid]
    if bad:
        raise UserError(f"{where}: unknown {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return tuple(dict.fromkeys(raw))


def thread_counts(raw: Any, cores: int, where: str) -> list[int]:
    """Thread counts from a suite's `threads`: a list of positive ints and "all", or "sweep"
    (1, 2, 4, ... below `cores`, then `cores`)."""
    if raw == "sweep":
        return [2**i for i in range(cores.bit_length()) if 2**i < cores] + [cores]
    if not isinstance(raw, list) or not raw:
        raise UserError(f'{where}: expected "sweep" or a list of thread counts and "all"')
    counts = []
    for i, value in enumerate(raw):
        if value == "all":
            counts.append(cores)
        elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts.append(value)
        else:
            raise UserError(f'{where}[{i}]: expected a positive integer or "all", got {value!r}')
    return list(dict.fromkeys(counts))


def _parse_entry(raw: Any, suite_settings: Settings, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table")
    workload = raw.get("workload")
    if workload not in WORKLOADS:
        raise UserError(f"{where}.workload: unknown {workload!r}; valid: {', '.join(WORKLOADS)}")
    if WORKLOADS[workload].launcher:
        raise UserError(
            f"{where}: {workload} runs only under {WORKLOADS[workload].launcher}, not in a suite"
        )
    valid_keys = [*ENTRY_KEYS, *WORKLOADS[workload].keys]
    unknown = [k for k in raw if k not in valid_keys]
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {workload}; "
            f"valid: {', '.join(valid_keys)}"
        )
    spec = WORKLOADS[workload]
    known = [b for b in BACKENDS if b in spec.backends]
    backends = _names(raw.get("backends", known), known, f"{where}.backends")
    kinds = [k for k in DEVICE_KINDS if k in spec.device_kinds]
    devices = _names(raw.get("devices", kinds), kinds, f"{where}.devices")
    valid_dtypes = spec.dtypes or DTYPES
    if "dtypes" not in raw and spec.dtypes is None:
        raise UserError(f"{where}: missing dtypes; valid: {', '.join(DTYPES)}")
    dtypes = _names(raw.get("dtypes", list(valid_dtypes[:1])), valid_dtypes, f"{where}.dtypes")
    settings = parse_settings(raw.get("settings", {}), suite_settings, f"{where}.settings")
    own = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    points = spec.parse(own, where)
    if "threads" in raw:
        if devices != ("cpu",):
            raise UserError(
                f'{where}.threads: thread counts apply to CPU cases: add devices = ["cpu"]'
            )
        counts = thread_counts(raw["threads"], usable_cores(), f"{where}.threads")
        points = [(v, {**p, "threads": n}) for v, p in points for n in counts]
    # A point listed twice is measured once, as a name listed twice is.
    frozen = tuple(dict.fromkeys((variant, tuple(sorted(p.items()))) for variant, p in points))
    return Entry(workload, backends, devices, dtypes, frozen, settings)
