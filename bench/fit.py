"""`bench fit`: the largest batch (or sequence) that trains without running out of memory.

For each model, precision, checkpointing setting and optimizer, `bench.fitsearch.search` grows
then bisects the searched value; every trial is one training-step case run in a FRESH worker
process (an out-of-memory error can leave a framework's allocator fragmented or, for JAX, its
peak counter spent), under the --memory-limit if one is given. On the CPU the limit defaults to
the memory available now, which the runner enforces from outside the worker.

Every trial is a row of a results file (suite "fit", fit_search = "batch" or "seq"), so the
report can fit need(batch) = fixed + per-sample · batch and predict what fits on other cards.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.case import Case, Outcome, Settings
from bench.errors import UserError
from bench.fitsearch import (
    GIB,
    SearchResult,
    Trial,
    need_bytes,
    prediction_table,
    search,
)
from bench.models import spec
from bench.runner import Worker
from bench.worker import OVER_LIMIT

# Trials measure memory, not speed: two timed steps after the first (which creates the
# optimizer state), no cache flush. A step slower than MAX_STEP_S ends the search: on a CPU the
# time, not the memory, is then the limit.
TRIAL_SETTINGS = Settings(
    time_budget_s=0.0,
    warmup_s=0.0,
    min_samples=2,
    max_samples=2,
    case_timeout_s=900.0,
    l2_flush=False,
    max_call_s=120.0,
)
SEQ_UNIT = 64  # sequence searches move in multiples of this (kernels tile by 64 or 128)
DEFAULT_MAX = {"batch": 4096, "seq": 131072}
# Attention's searched sequence at LLaMA-7B's heads unless told otherwise.
ATTENTION_DEFAULTS = {"batch": 1, "heads": 32, "head_dim": 128}


@dataclass(frozen=True)
class Search:
    """One search: a case template whose `key` parameter is searched."""

    workload: str
    variant: str
    dtype: str
    params: dict[str, Any]  # every parameter but `key`
    key: str  # "batch" or "seq"

    def describe(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("model", "impl", "mode")}
        text = ", ".join(
            f"{k} { ({True: 'on', False: 'off'}[v] if isinstance(v, bool) else v) }"
            for k, v in sorted(shown.items())
        )
        return f"{self.variant} {self.dtype} ({text}): largest {self.key}"


@dataclass(frozen=True)
class Target:
    """Where trials run: a backend on a device, under a memory limit."""

    suite: str
    backend: str
    device: str
    nvml_index: int | None
    memory_limit_bytes: int | None
    device_memory_bytes: int | None = None  # the whole GPU (or RAM), for the search's guesses


Record = Callable[[Case, Outcome, Any, float, str], dict[str, Any]]


def run_search(one: Search, target: Target, record: Record, max_value: int) -> SearchResult:
    """Search one configuration; `record(case, outcome, info, wall_s, key)` writes each trial's
    row and returns it."""
    settings = dataclasses.replace(TRIAL_SETTINGS, memory_limit_bytes=target.memory_limit_bytes)

    def trial(value: int) -> Trial:
        params = {**one.params, one.key: value}
        if one.workload == "attention":
            params = attention_seq_params(params)
        case = Case(
            target.suite,
            one.workload,
            one.variant,
            target.backend,
            target.device,
            one.dtype,
            Case.make_params(params),
            settings,
            target.nvml_index,
        )
        started = time.perf_counter()
        worker = Worker(target.backend, target.memory_limit_bytes)
        info = worker.start()
        try:
            _check_overhead(target, info.details.get("fixed_overhead_bytes"))
            outcome = worker.run(case) if info.available else Outcome("skipped", info.reason)
        finally:
            worker.close()
        row = record(case, outcome, info, time.perf_counter() - started, one.key)
        if outcome.status == "skipped" and outcome.reason.startswith(OVER_LIMIT):
            raise UserError(outcome.reason)  # a GPU limit below the CUDA context
        if outcome.status == "ok":
            return Trial("ok", need_bytes(row))
        if outcome.status == "oom":
            return Trial("oom", reason=outcome.reason)
        return Trial("failed", reason=f"{outcome.status}: {outcome.reason}")

    if one.key == "seq":  # attention's scores grow as seq²: no linear guesses, plain bisection
        return search(trial, start=SEQ_UNIT, unit=SEQ_UNIT, max_value=max_value)
    return search(
        trial,
        start=1,
        max_value=max_value,
        memory_bytes=target.memory_limit_bytes or target.device_memory_bytes,
    )


def _check_overhead(target: Target, fixed_bytes: int | None) -> None:
    """A UserError where a CPU budget is below what the worker holds right after start-up."""
    limit = target.memory_limit_bytes
    if target.device == "cpu" and limit is not None and fixed_bytes and fixed_bytes >= limit:
        raise UserError(
            f"{OVER_LIMIT} {limit / GIB:.2f} GiB is below the {target.backend} worker's "
            f"resident memory after start-up ({fixed_bytes / GIB:.2f} GiB)"
        )


def result_line(one: Search, result: SearchResult, limit_bytes: int | None, margin: float) -> str:
    """One line per search for the terminal."""
    head = one.describe()
    if result.answer is None:
        return f"{head}: none ({result.reason})"
    text = f"{head} = {result.answer}"
    if result.smallest_oom is not None:
        text += f" ({result.smallest_oom} ran out of memory)"
    if result.flaky:
        text += ", flaky boundary"
    fit = result.fit() if one.key == "batch" else None  # need grows faster than linearly in seq
    if fit is not None:
        sign = "+" if fit.per_item_bytes >= 0 else "−"  # noise can tilt a flat need down
        text += (
            f"; need ≈ {fit.fixed_bytes / GIB:.2f} GiB {sign} "
            f"{abs(fit.per_item_bytes) / GIB:.3f} GiB × {one.key}"
        )
        if limit_bytes is not None:
            recommended = result.recommended(limit_bytes, margin)
            text += f"; recommended {recommended} (margin {margin:.0%})"
    return text + f"; {len(result.trials)} trials"


def table_text(rows: list[dict[str, Any]], margin: float) -> str:
    """The predicted largest batch per GPU size, as text (GPU rows only)."""
    table = prediction_table(pd.DataFrame(rows), margin=margin)
    if table.empty:
        return ""
    sizes = [c for c in table.columns if c.endswith(" GB")]
    lines = [
        f"Predicted largest batch per card (margin {margin:.0%}; "
        "need = fixed + per-sample × batch, fixed includes the CUDA context):",
        "  " + " ".join(f"{s:>7}" for s in ["model", "dtype", *sizes]) + "  setting",
    ]
    for row in table.to_dict("records"):
        cells = [str(row["model"]), str(row["dtype"])] + [
            "-" if pd.isna(row[s]) else str(row[s]) for s in sizes
        ]
        context = row["overhead_bytes"]
        note = "" if pd.isna(context) else f"; context {context / GIB:.2f} GiB"
        lines.append(
            "  "
            + " ".join(f"{c:>7}" for c in cells)
            + f"  {row['setting']}; fixed {row['fixed_bytes'] / GIB:.2f} GiB{note}"
        )
    return "\n".join(lines)


def searches(
    targets: list[str],
    dtypes: list[str],
    checkpointing: list[bool],
    optimizers: list[str],
    key: str | None,
    fixed: dict[str, Any],
) -> list[Search]:
    """The searches a `bench fit` command line asks for, in order. `fixed` holds size, batch,
    seq, image and the attention parameters given on the command line (or defaults)."""
    from bench.workloads.train import DEFAULT_IMAGE, DEFAULT_SEQ

    out = []
    for target in targets:
        for dtype in dtypes:
            if target == "attention":
                params = {
                    "impl": fixed["impl"],
                    "batch": fixed.get("batch") or ATTENTION_DEFAULTS["batch"],
                    "heads": fixed.get("heads") or ATTENTION_DEFAULTS["heads"],
                    "head_dim": fixed.get("head_dim") or ATTENTION_DEFAULTS["head_dim"],
                    "causal": fixed["causal"],
                    "mode": "train",
                }
                search_key = key or "seq"
                if search_key == "seq":  # at the given (or default) batch
                    out.append(Search("attention", fixed["impl"], dtype, params, "seq"))
                else:
                    seq = fixed.get("seq") or 4096
                    params.update(seq_q=seq, seq_k=seq)
                    del params["batch"]
                    out.append(Search("attention", fixed["impl"], dtype, params, "batch"))
                continue
            input_key = spec.INPUT_KEY[target]
            search_key = key or "batch"
            for ckpt in checkpointing:
                for optimizer in optimizers:
                    params: dict[str, Any] = {
                        "model": target,
                        "size": fixed["size"],
                        "checkpointing": ckpt,
                        "optimizer": optimizer,
                    }
                    if input_key == "image":
                        params["image"] = fixed.get("image") or DEFAULT_IMAGE
                    elif search_key == "batch":
                        params["seq"] = fixed.get("seq") or DEFAULT_SEQ[target]
                    if search_key == "seq":
                        params["batch"] = fixed.get("batch") or 1
                    out.append(Search("train", target, dtype, params, search_key))
    return out


def attention_seq_params(params: dict[str, Any]) -> dict[str, Any]:
    """Attention's parameters take seq as seq_q = seq_k."""
    if "seq" in params:
        seq = params.pop("seq")
        params.update(seq_q=seq, seq_k=seq)
    return params


def print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
