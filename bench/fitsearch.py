"""What fits in memory: the search `bench fit` runs for the largest batch (or sequence) that
trains without running out of memory, and the linear prediction of the largest batch on cards of
other sizes from a few measured batch sizes.

Pure logic over numbers and result rows: no framework is imported here. A trial (one fresh worker
process per value, seconds to a minute on a GPU) is a callable the caller passes in.

"Need" is the memory a configuration takes on its device (`need_bytes`): on a GPU the allocator's
peak reserved bytes (else peak allocated) plus the fixed overhead of the process (CUDA context,
library workspaces), i.e. what a card must have free; on the CPU the worker's resident high-water
mark. Activations grow linearly in the batch, so need(b) ≈ fixed_bytes + per_item_bytes · b
(METHOD.md, "Memory"): two or three measured batch sizes predict the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import pandas as pd

# Nominal memory sizes of common GPUs (8 GB consumer cards up to the 141 GB H200). Cards report
# these sizes in GiB (a "24 GB" card has 24 GiB, less what the driver reserves), so each is taken
# as size · 2**30 bytes.
GPU_SIZES_GB = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141)
GIB = 2**30
# Memory left free on a card when recommending a batch: allocator fragmentation and run-to-run
# variation of the peak are a few percent (cuDNN may pick other algorithms, the caching allocator
# splits blocks differently), so a batch predicted to fill the card exactly would fail now and then.
DEFAULT_MARGIN = 0.05
# The search may jump to the boundary the linear model predicts at most this many times; a model
# that missed that often is not linear here, and plain bisection keeps the count logarithmic.
MAX_GUIDED_TRIALS = 3

TrialStatus = Literal["ok", "oom", "failed"]


def _number(value: Any) -> int | None:
    """An integer from a row's cell; None for missing (None, NaN, pd.NA)."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return int(value)


def need_bytes(row: Mapping[str, Any]) -> int | None:
    """Bytes a configuration needs on its device (a result row, dict or pandas row), or None.

    GPU (device "cuda:N"): peak_reserved_bytes, else peak_mem_bytes, plus fixed_overhead_bytes
    (counted as 0 where a row lacks it, as rows from before schema 4 do: the need is then
    understated by the CUDA context, about 0.3-0.7 GB). CPU: host_peak_bytes.
    """
    if str(row.get("device", "")).startswith("cuda"):
        peak = _number(row.get("peak_reserved_bytes"))
        if peak is None:
            peak = _number(row.get("peak_mem_bytes"))
        if peak is None:
            return None
        return peak + (_number(row.get("fixed_overhead_bytes")) or 0)
    return _number(row.get("host_peak_bytes"))


@dataclass(frozen=True)
class LinearFit:
    """need = fixed_bytes + per_item_bytes · x, fitted by least squares to `points` points."""

    fixed_bytes: float
    per_item_bytes: float
    max_error_pct: float  # largest |predicted - measured| / measured of the points, in %
    points: int

    def predict(self, x: float) -> float:
        """Predicted need in bytes at x items."""
        return self.fixed_bytes + self.per_item_bytes * x

    def max_x(self, memory_bytes: float) -> int | None:
        """Largest integer x ≥ 0 with predict(x) ≤ memory_bytes; 0 if none (even x = 0 needs
        more); None if the model sets no bound (per_item_bytes ≤ 0, as noise can make it when
        the need barely grows)."""
        if self.predict(0) > memory_bytes:
            return 0
        if self.per_item_bytes <= 0:
            return None
        x = max(0, math.floor((memory_bytes - self.fixed_bytes) / self.per_item_bytes))
        # The division rounds; step to the exact boundary of predict() itself.
        while self.predict(x + 1) <= memory_bytes:
            x += 1
        while x > 0 and self.predict(x) > memory_bytes:
            x -= 1
        return x


def fit_linear(points: Iterable[tuple[int, int]]) -> LinearFit:
    """Least-squares line through (x, need_bytes) points; raises ValueError with fewer than two
    distinct x. Computed in exact rational arithmetic, so exact data gives the exact line."""
    pts = [(int(x), int(y)) for x, y in points]
    if len({x for x, _ in pts}) < 2:
        raise ValueError(
            f"a linear fit needs two distinct x values, got {sorted({x for x, _ in pts})}"
        )
    n = len(pts)
    sx = sum(x for x, _ in pts)
    sy = sum(y for _, y in pts)
    sxx = sum(x * x for x, _ in pts)
    sxy = sum(x * y for x, y in pts)
    slope = Fraction(n * sxy - sx * sy, n * sxx - sx * sx)
    intercept = (sy - slope * sx) / n
    errors = [abs(float(intercept + slope * x) - y) / y * 100 if y else math.inf for x, y in pts]
    return LinearFit(float(intercept), float(slope), max(errors), n)


@dataclass(frozen=True)
class Trial:
    """One attempt at one value: ok (ran, with its need where measured), oom, or failed (an
    error that is not out-of-memory, with the reason)."""

    status: TrialStatus
    need_bytes: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class SearchResult:
    """Every trial in the order run, and what they show.

    answer: the largest value that ran ok every time it ran (including its confirmations) and
    lies below every value that ran out of memory; None if none did (or the search failed).
    smallest_oom: the smallest value that ran out of memory at least once (None: none did).
    flaky: some value both ran ok and ran out of memory, or ran ok above a value that did not.
    """

    trials: tuple[tuple[int, Trial], ...]
    answer: int | None
    smallest_oom: int | None
    flaky: bool
    reason: str
    unit: int = 1
    max_value: int | None = None
    memory_bytes: int | None = None  # the memory the trials ran under, where the caller said

    def ok_points(self) -> list[tuple[int, int]]:
        """(value, need_bytes) of every ok trial that measured its need."""
        return [(v, t.need_bytes) for v, t in self.trials if t.status == "ok" and t.need_bytes]

    def fit(self) -> LinearFit | None:
        """The linear model of need over value, from the ok trials (None: under two values)."""
        points = self.ok_points()
        return fit_linear(points) if len({v for v, _ in points}) >= 2 else None

    def recommended(self, limit_bytes: int, margin: float = DEFAULT_MARGIN) -> int:
        """Largest value whose need, measured or predicted by the linear fit, leaves `margin` of
        `limit_bytes` free; 0 if none. A prediction is rounded down to the unit, kept ≤
        max_value, and kept below the smallest oom unless the limit exceeds the memory the search
        ran under (a bigger card may fit what this one could not)."""
        budget = limit_bytes * (1 - margin)
        cap = self.max_value
        bigger_card = self.memory_bytes is not None and limit_bytes > self.memory_bytes
        if self.smallest_oom is not None and not bigger_card:
            below = self.smallest_oom - self.unit
            cap = below if cap is None else min(cap, below)
        worst: dict[int, int] = {}
        for v, need in self.ok_points():
            worst[v] = max(worst.get(v, 0), need)
        fitting = [v for v, need in worst.items() if need <= budget and (cap is None or v <= cap)]
        best = max(fitting, default=0)
        fit = self.fit()
        if fit is not None:
            predicted = fit.max_x(budget)
            if predicted is None or (cap is not None and predicted > cap):
                predicted = cap
            if predicted is not None:
                best = max(best, predicted // self.unit * self.unit)
        return best


@dataclass
class _State:
    """The trials so far and what they bound."""

    trial: Callable[[int], Trial]
    trials: list[tuple[int, Trial]] = field(default_factory=list)

    def run(self, value: int) -> Trial:
        outcome = self.trial(value)
        self.trials.append((value, outcome))
        return outcome

    @property
    def hi(self) -> int | None:
        """Smallest value that ran out of memory."""
        return min((v for v, t in self.trials if t.status == "oom"), default=None)

    @property
    def lo(self) -> int | None:
        """Largest value that ran ok and lies below every oom."""
        hi = self.hi
        return max(
            (v for v, t in self.trials if t.status == "ok" and (hi is None or v < hi)),
            default=None,
        )

    def ok_runs(self, value: int) -> int:
        return sum(1 for v, t in self.trials if v == value and t.status == "ok")

    def flaky(self) -> bool:
        hi = self.hi
        return hi is not None and any(t.status == "ok" and v >= hi for v, t in self.trials)


def search(
    trial: Callable[[int], Trial],
    *,
    start: int = 1,
    unit: int = 1,
    max_value: int,
    resolution: float = 0.02,
    confirmations: int = 1,
    memory_bytes: int | None = None,
) -> SearchResult:
    """The largest value v (a multiple of `unit`, start ≤ v ≤ max_value) for which trial(v) is ok.

    Values are rounded to the unit: start up, max_value down. `memory_bytes`, when given, is the
    memory the trials run under (the card, or the --memory-limit); with it, once two ok trials
    have measured their need, the search may probe the boundary the linear fit predicts.

        lo, hi = largest ok below every oom, smallest oom      (recomputed from all trials)
        run start: oom → answer None, "does not fit even at start"
        grow:   while no oom and lo < max_value:
                    run guess(lo, hi) if any else min(2·lo, max_value)
        loop:
            bisect: while hi − lo > tol(lo) = max(unit, resolution·lo rounded down to unit):
                        run guess(lo, hi) if any else the midpoint, rounded to the unit
            confirm: run lo until it has run ok 1 + confirmations times
                     an oom → flaky; lo becomes the new smallest oom; go back to bisect
            answer = lo
        any failed trial: stop, answer None, reason = its reason

        guess(lo, hi): g = fit.max_x(memory_bytes) over the ok trials, rounded down to the unit;
                       if g ≤ lo, g = lo + tol(lo) (confirm the boundary from above: an oom there
                       ends the bisection); used only if lo < g < hi (g ≤ max_value while there
                       is no oom), and at most MAX_GUIDED_TRIALS times.

    Only values that ran ok are ever reported; an ok above an oom (a flaky boundary) marks the
    result flaky and never raises the answer, which stays below the smallest oom.
    """
    if unit < 1 or confirmations < 0 or resolution < 0:
        raise ValueError("unit must be ≥ 1, confirmations and resolution ≥ 0")
    first = -(-max(start, unit) // unit) * unit
    ceiling = max_value // unit * unit
    if first > ceiling:
        raise ValueError(f"no multiple of {unit} between start {start} and max_value {max_value}")
    state = _State(trial)
    guided = 0

    def tol(lo: int) -> int:
        return max(unit, int(resolution * lo) // unit * unit)

    def guess(lo: int, hi: int | None) -> int | None:
        nonlocal guided
        if memory_bytes is None or guided >= MAX_GUIDED_TRIALS:
            return None
        points = [(v, t.need_bytes) for v, t in state.trials if t.status == "ok" and t.need_bytes]
        if len({v for v, _ in points}) < 2:
            return None
        g = fit_linear(points).max_x(memory_bytes)
        if g is None:
            g = ceiling
        g = g // unit * unit
        if g <= lo:
            g = lo + tol(lo)
        if hi is None:
            g = min(g, ceiling)
        if not (lo < g and (hi is None or g < hi)):
            return None
        guided += 1
        return g

    def result(answer: int | None, reason: str) -> SearchResult:
        return SearchResult(
            tuple(state.trials),
            answer,
            state.hi,
            state.flaky(),
            reason,
            unit,
            ceiling,
            memory_bytes,
        )

    def failure() -> SearchResult | None:
        value, last = state.trials[-1]
        if last.status == "failed":
            return result(None, f"failed at {value}: {last.reason}")
        return None

    state.run(first)
    if stop := failure():
        return stop
    while True:
        lo, hi = state.lo, state.hi
        if lo is None:
            flaky = " (it passed once: flaky)" if state.ok_runs(first) else ""
            return result(None, f"does not fit even at start ({first}){flaky}")
        if hi is None and lo < ceiling:
            state.run(guess(lo, hi) or min(2 * lo, ceiling))
        elif hi is not None and hi - lo > tol(lo):
            state.run(guess(lo, hi) or lo + (hi - lo) // 2 // unit * unit)
        elif state.ok_runs(lo) < 1 + confirmations:
            state.run(lo)
        elif hi is None:
            return result(lo, f"ran at max_value {ceiling} (the search ceiling)")
        else:
            return result(lo, f"largest ok {lo}, smallest out of memory {hi}")
        if stop := failure():
            return stop


# ---------------------------------------------------------------------------------------------
# Prediction from result rows


def _params(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# The order setting keys are named in, and their short form; other keys follow as "key value".
_SETTING_ORDER = ("seq", "image", "checkpointing", "optimizer", "size")


def setting_text(params: Mapping[str, Any]) -> str:
    """The params of a training case other than batch and model, short: "seq 1024,
    checkpointing, adamw" (checkpointing named only when on, size only when not "full")."""
    parts: list[str] = []
    keys = [k for k in _SETTING_ORDER if k in params]
    keys += sorted(k for k in params if k not in _SETTING_ORDER and k not in ("batch", "model"))
    for key in keys:
        value = params[key]
        if key == "checkpointing":
            if value:
                parts.append("checkpointing")
        elif key == "optimizer":
            parts.append(str(value))
        elif key == "size":
            if value != "full":
                parts.append(f"size {value}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


# A device is its machine and its index: a trial the runner stopped from outside (over a CPU
# memory limit, or killed by the kernel) has no device_name, yet belongs with its siblings.
_GROUP = ("label", "backend", "device", "variant", "dtype")


@dataclass
class _Group:
    """The training rows of one configuration (everything but the batch)."""

    key: tuple[Any, ...]
    setting: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def points(
        self, keep: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> list[tuple[int, int]]:
        """(batch, need_bytes) of the ok rows that `keep` accepts and that measured a need."""
        out = []
        for row in self.rows:
            need = need_bytes(row)
            if row["status"] == "ok" and need is not None and keep(row):
                out.append((row["_batch"], need))
        return out

    def fit(self, keep: Callable[[dict[str, Any]], bool] = lambda _: True) -> LinearFit | None:
        points = self.points(keep)
        return fit_linear(points) if len({b for b, _ in points}) >= 2 else None

    def overhead(self) -> int | None:
        values = sorted(v for r in self.rows if (v := _number(r.get("fixed_overhead_bytes"))))
        return values[len(values) // 2] if values else None

    def boundaries(self) -> dict[int | None, tuple[int | None, int]]:
        """memory_limit_bytes → (largest ok batch below the smallest oom, smallest oom batch),
        for each limit (None: no limit) under which some batch ran out of memory."""
        out: dict[int | None, tuple[int | None, int]] = {}
        limits = {_number(r.get("memory_limit_bytes")) for r in self.rows}
        for limit in limits:
            same = [r for r in self.rows if _number(r.get("memory_limit_bytes")) == limit]
            ooms = [r["_batch"] for r in same if r["status"] == "oom"]
            if not ooms:
                continue
            oom = min(ooms)
            oks = [r["_batch"] for r in same if r["status"] == "ok" and r["_batch"] < oom]
            out[limit] = (max(oks, default=None), oom)
        return out

    def device_memory(self) -> int | None:
        """The memory a case without --memory-limit ran under: the GPU's, or the machine's RAM."""
        row = self.rows[0]
        column = (
            "gpu_memory_bytes" if str(row.get("device", "")).startswith("cuda") else "ram_bytes"
        )
        return _number(row.get(column))


def _groups(rows: pd.DataFrame, include_cpu: bool) -> list[_Group]:
    """Training rows (status ok or oom, with a batch) grouped by configuration without batch."""
    groups: dict[tuple[Any, ...], _Group] = {}
    if rows.empty or "workload" not in rows.columns:
        return []
    for row in rows.to_dict("records"):
        if row.get("workload") != "train" or row.get("status") not in ("ok", "oom"):
            continue
        if not include_cpu and not str(row.get("device", "")).startswith("cuda"):
            continue
        params = _params(row.get("params"))
        batch = _number(params.pop("batch", None))
        if batch is None:
            continue
        row["_batch"] = batch
        key = (*(row.get(c) for c in _GROUP), json.dumps(params, sort_keys=True, default=str))
        if key not in groups:
            groups[key] = _Group(key, setting_text(params))
        groups[key].rows.append(row)
    return [groups[k] for k in sorted(groups, key=lambda k: tuple(str(p) for p in k))]


def _ident(group: _Group) -> dict[str, Any]:
    label, backend, _, variant, dtype, _ = group.key
    names = [r.get("device_name") for r in group.rows if isinstance(r.get("device_name"), str)]
    device_name = names[0] if names else None
    return {
        "label": label,
        "backend": backend,
        "device_name": device_name,
        "model": variant,
        "dtype": dtype,
        "setting": group.setting,
    }


def size_column(size_gb: float) -> str:
    """Column name of a memory size in prediction_table: "24 GB" (meaning 24 GiB)."""
    return f"{size_gb:g} GB"


PREDICTION_COLUMNS = (
    "label",
    "backend",
    "device_name",
    "model",
    "dtype",
    "setting",
    "points",
    "fixed_bytes",
    "per_sample_bytes",
    "overhead_bytes",
    "fit_error_pct",
    "measured_max",
    "limit_bytes",
)
_INT_COLUMNS = ("points", "overhead_bytes", "measured_max", "limit_bytes")


def prediction_table(
    rows: pd.DataFrame,
    sizes_gb: Iterable[float] = GPU_SIZES_GB,
    margin: float = DEFAULT_MARGIN,
    *,
    include_cpu: bool = False,
) -> pd.DataFrame:
    """The largest batch predicted to fit on cards of each size, per training configuration.

    From result rows of workload "train": groups by (label, backend, device, variant, dtype,
    params without "batch"); a group whose ok rows measured a need at two or more batch sizes
    gets need = fixed_bytes + per_sample_bytes · batch (least squares over all its ok rows) and
    one row here. Columns PREDICTION_COLUMNS, then one per size (size_column: "24 GB") holding
    fit.max_x(size · 2**30 · (1 − margin)), 0 where not even batch 0 fits (nullable integers).

    measured_max / limit_bytes: where some batch ran out of memory, the largest ok batch below
    the smallest oom batch under one memory limit, and that limit (memory_limit_bytes; for cases
    without one, the device's memory). Cases without a limit are preferred, then the smallest
    limit. overhead_bytes: the median fixed_overhead_bytes (CUDA context), already inside need.

    GPU rows only unless include_cpu: a CPU row's need is the host process's resident memory,
    runtime included, which says nothing about what fits on a GPU.
    """
    sizes = list(sizes_gb)
    out = []
    for group in _groups(rows, include_cpu):
        fit = group.fit()
        if fit is None:
            continue
        bounds = group.boundaries()
        measured_max = limit = None
        if bounds:
            chosen = None if None in bounds else min(k for k in bounds if k is not None)
            measured_max = bounds[chosen][0]
            limit = chosen if chosen is not None else group.device_memory()
        out.append(
            {
                **_ident(group),
                "points": fit.points,
                "fixed_bytes": fit.fixed_bytes,
                "per_sample_bytes": fit.per_item_bytes,
                "overhead_bytes": group.overhead(),
                "fit_error_pct": fit.max_error_pct,
                "measured_max": measured_max,
                "limit_bytes": limit,
                **{size_column(s): fit.max_x(s * GIB * (1 - margin)) for s in sizes},
            }
        )
    columns = [*PREDICTION_COLUMNS, *(size_column(s) for s in sizes)]
    ints = [*_INT_COLUMNS, *(size_column(s) for s in sizes)]
    return _frame(out, columns, ints)


CHECK_COLUMNS = (
    "label",
    "backend",
    "device_name",
    "model",
    "dtype",
    "setting",
    "limit_bytes",
    "points",
    "predicted_max",
    "measured_max",
    "measured_oom",
    "error_samples",
    "error_pct",
)


def prediction_check(rows: pd.DataFrame, *, include_cpu: bool = False) -> pd.DataFrame:
    """How well the linear prediction matched a measured boundary.

    For each configuration (as in prediction_table) and each memory_limit_bytes under which some
    batch ran out of memory (the trials of `bench fit --memory-limit`): the linear fit of the
    ok rows that ran under no limit or another limit predicts the largest batch at that limit
    (fit.max_x(limit), no margin: the limit caps the whole need, context included), compared
    with the measured largest ok batch below the smallest oom batch (measured_oom; the true
    boundary lies in [measured_max, measured_oom)). error_samples = predicted − measured,
    error_pct = 100 · error_samples / measured.
    """
    out = []
    for group in _groups(rows, include_cpu):
        for limit, (measured, oom) in sorted(group.boundaries().items(), key=lambda kv: str(kv[0])):
            if limit is None or measured is None:
                continue
            fit = group.fit(lambda r, limit=limit: _number(r.get("memory_limit_bytes")) != limit)
            if fit is None:
                continue
            predicted = fit.max_x(limit)
            error = None if predicted is None else predicted - measured
            out.append(
                {
                    **_ident(group),
                    "limit_bytes": limit,
                    "points": fit.points,
                    "predicted_max": predicted,
                    "measured_max": measured,
                    "measured_oom": oom,
                    "error_samples": error,
                    "error_pct": None if error is None else 100 * error / measured,
                }
            )
    ints = (
        "limit_bytes",
        "points",
        "predicted_max",
        "measured_max",
        "measured_oom",
        "error_samples",
    )
    return _frame(out, list(CHECK_COLUMNS), list(ints))


def _frame(records: list[dict[str, Any]], columns: list[str], ints: list[str]) -> pd.DataFrame:
    """A DataFrame with exactly `columns`; `ints` as nullable integers (pd.NA for none)."""
    frame = pd.DataFrame(records, columns=columns)
    for column in ints:
        frame[column] = frame[column].astype("Int64")
    for column in (
        set(columns) - set(ints) - {"label", "backend", "device_name", "model", "dtype", "setting"}
    ):
        frame[column] = frame[column].astype("float64")
    return frame
