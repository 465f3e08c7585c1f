"""Load results files for a report: any number, from any machines, of any readable schema.

A file that cannot be read (corrupt, truncated, not parquet, an unknown schema version) becomes a
warning naming it; the rest is reported. No usable file at all is a UserError.

Scale: a report may read hundreds of files of thousands of rows each, so the files are read with
pyarrow, concatenated, and turned into one DataFrame at once; the raw samples stay an Arrow list
column (no Python object per row), and the functions below work on whole columns.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bench.errors import UserError
from bench.results import COLUMNS, SCHEMA_VERSION, read_table, result_files
from bench.stats import summarize

# Columns that say which case a row measured: rows with equal values are the same case.
CASE_KEY = ("workload", "variant", "backend", "device_kind", "dtype", "params")
SAMPLES_TYPE = pa.list_(pa.float64())


@dataclass
class Loaded:
    # Every row of every readable file, in the current schema's columns, plus device_kind ("cpu"
    # or "gpu"). samples_s is an Arrow list column (pd.ArrowDtype): a row's value is a list.
    rows: pd.DataFrame
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # machine_id -> description
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> description
    warnings: list[str] = field(default_factory=list)


def _v1_to_v2(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds runtime_version: "cpu" for CPU rows (no accelerator runtime); GPU rows did not record
    theirs, so None (unknown)."""
    return rows.assign(runtime_version=rows["device"].map(lambda d: "cpu" if d == "cpu" else None))


def _v2_to_v3(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds impl, flops_alt, flops_alt_convention and tflops_alt: none before version 3 (the
    only workload then, matmul, has one implementation per backend and one FLOP convention)."""
    return rows.assign(impl=None, flops_alt=None, flops_alt_convention=None, tflops_alt=None)


def _v3_to_v4(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds the memory, throughput-in-items and fit columns: none recorded before version 4
    (peak_mem_bytes was already there); fit_search "" (no `bench fit` before version 4)."""
    new = [name for name in COLUMNS if name not in rows.columns and name != "fit_search"]
    return rows.assign(**dict.fromkeys(new), fit_search="")


def _v4_to_v5(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds gbps_best, computed from the recorded bytes and time_min_s (the same arithmetic the
    writer uses now), and the byte-convention, PCIe and storage columns: none recorded before
    version 5 (no workload then had a byte convention of its own, a link or a disk)."""
    new = [name for name in COLUMNS if name not in rows.columns]
    best = rows["bytes"] / rows["time_min_s"].where(rows["time_min_s"] > 0) / 1e9
    return rows.assign(**dict.fromkeys(new)).assign(gbps_best=best)


def _v5_to_v6(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds the distributed columns: none before version 6 (no `bench comm`)."""
    return rows.assign(**dict.fromkeys(name for name in COLUMNS if name not in rows.columns))


# version -> the step that turns rows of that version into rows of the next one
_STEPS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6}


def migrate(rows: pd.DataFrame, version: int) -> pd.DataFrame:
    """Rows of schema `version` in the current columns: each step from `version` up to
    SCHEMA_VERSION in order, then any optional column still missing is added empty. Values
    already there, schema_version included (the version the row was written with), are kept.
    """
    for step in range(version, SCHEMA_VERSION):
        rows = _STEPS[step](rows)
    for name in COLUMNS:
        if name not in rows.columns:
            rows[name] = None
    return rows[list(COLUMNS)]


def load(paths: list[str | Path]) -> Loaded:
    files = result_files(paths)
    loaded = Loaded(rows=pd.DataFrame(columns=list(COLUMNS)))
    tables: dict[int, list[pa.Table]] = {}  # schema version -> the tables written in it
    for path in files:
        try:
            table, info = read_table(path)
        except UserError as exc:
            loaded.warnings.append(f"skipped {path}: {exc}")
            continue
        except Exception as exc:  # corrupt, truncated or not parquet: pyarrow's many errors
            loaded.warnings.append(f"skipped {path}: not a readable results file ({exc})")
            continue
        if table.num_rows == 0:
            loaded.warnings.append(f"skipped {path}: no rows")
            continue
        first_machine = table.column("machine_id")[0].as_py() if "machine_id" in table else None
        machine_id = str(info["machine"].get("machine_id") or first_machine)
        loaded.machines[machine_id] = info["machine"]
        loaded.runs[str(info["run"].get("run_id", path.stem))] = info["run"]
        tables.setdefault(info["schema_version"], []).append(table)
    if not tables:
        missing = [str(p) for p in paths if not Path(p).exists()]
        why = f"no such path: {', '.join(missing)}" if missing else "no readable results files"
        raise UserError(f"nothing to report: {why} in {', '.join(map(str, paths))}")
    frames = [migrate(_to_pandas(same), version) for version, same in sorted(tables.items())]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    rows["device_kind"] = np.where(rows["device"] == "cpu", "cpu", "gpu")
    loaded.rows = rows
    return loaded


def _to_pandas(tables: list[pa.Table]) -> pd.DataFrame:
    """Tables of one schema version as one DataFrame; list columns stay Arrow-backed."""

    def arrow_lists(kind: pa.DataType) -> pd.ArrowDtype | None:
        return pd.ArrowDtype(kind) if pa.types.is_list(kind) else None

    # One table (files missing an optional column get it empty), unless a column has another
    # type in some file: then each file on its own.
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
        tables = [pa.concat_tables(tables, promote_options="permissive")]
    # One chunk per column: pandas takes rows from a chunked Arrow column far more slowly.
    frames = [t.combine_chunks().to_pandas(types_mapper=arrow_lists) for t in tables]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _row_order(rows: pd.DataFrame) -> np.ndarray:
    """Positions of `rows` by started_at (stable: file order among equal times; missing last)."""
    return rows["started_at"].reset_index(drop=True).sort_values(kind="stable").index.to_numpy()


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of cases that ran, passed their check and were timed."""
    return rows[(rows["status"] == "ok") & (rows["time_median_s"] > 0)]


def latest_per_case(rows: pd.DataFrame) -> pd.DataFrame:
    """For each machine and case, the row of the latest run that measured it."""
    order = _row_order(rows)
    keys = rows[["machine_id", *CASE_KEY]].iloc[order]
    return rows.iloc[order[~keys.duplicated(keep="last").to_numpy()]].reset_index(drop=True)


def sample_lists(samples: pd.Series | pa.Array) -> pa.Array:
    """A samples_s column (Arrow-backed, or Python lists, tuples or arrays) as an Arrow list
    array; missing values are empty lists."""
    array = samples if isinstance(samples, pa.Array) else pa.array(samples, from_pandas=True)
    array = array.cast(SAMPLES_TYPE)  # no copy when it is one already
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pc.fill_null(array, pa.scalar([], SAMPLES_TYPE)) if array.null_count else array


def _counts(lists: pa.Array) -> np.ndarray:
    return pc.list_value_length(lists).to_numpy().astype(np.int64)


def sorted_each(lists: pa.Array) -> np.ndarray:
    """The values of all lists one after the other, each list's sorted. Lists of lengths within
    a factor of two are sorted together as the rows of one matrix, padded with +inf."""
    counts = _counts(lists)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).copy()
    starts = np.cumsum(counts) - counts
    buckets = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    for bucket in np.unique(buckets[counts > 0]):
        rows = np.flatnonzero((buckets == bucket) & (counts > 0))
        width = np.arange(counts[rows].max())
        inside = width < counts[rows, None]
        at = starts[rows, None] + width
        block = np.where(inside, values[np.where(inside, at, 0)], np.inf)
        block.sort(axis=1)
        values[at[inside]] = block[inside]
    return values


def pool_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """For each machine and case, one row pooling every run that measured it.

    The ok rows' raw samples are concatenated (runs in start order) and the statistics are
    recomputed from them with bench.stats.summarize: time_median_s, time_p25_s, time_p75_s,
    time_min_s, noisy, and tflops, gbps, items_per_s and (collectives) algbw and busbw from the
    pooled median. Every other field is the latest ok run's. A case measured ok by a single run
    keeps that row unchanged (its statistics are already those of its samples). A case with no
    ok run keeps its latest row, as in latest_per_case. Rows come in the order latest_per_case
    gives.

    A case whose latest run failed after earlier ok runs is reported from the pooled ok runs:
    a failed run measured nothing, so it cannot move the speed, and pooling asks for every
    measurement there is. (latest_per_case, the default, reports the failure instead.)
    """
    order = _row_order(rows)  # positions in start order; what follows indexes into it
    keys = rows[["machine_id", *CASE_KEY]].iloc[order]
    case = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy()
    lists = sample_lists(rows["samples_s"])  # in the rows' order: index it with order[...]
    ok = (rows["status"].to_numpy(dtype=object) == "ok") & (_counts(lists) > 0)
    ok = ok[order]
    ok_runs = np.bincount(case[ok], minlength=len(order))
    # Each case's row: its latest ok row, else its latest row.
    candidates = np.flatnonzero(ok | (ok_runs[case] == 0))
    kept = candidates[~pd.Series(case[candidates]).duplicated(keep="last").to_numpy()]
    pooled = rows.iloc[order[kept]].reset_index(drop=True)
    at = np.flatnonzero(ok_runs[case[kept]] > 1)  # the rows pooling several runs
    if not len(at):
        return pooled
    row_of_case = np.empty(len(order), dtype=np.int64)
    row_of_case[case[kept]] = np.arange(len(kept))
    sources = np.flatnonzero(ok & (ok_runs[case] > 1))
    into = row_of_case[case[sources]]
    by_row = np.argsort(into, kind="stable")  # by pooled row, then runs in start order
    merged = _concatenated(lists.take(order[sources[by_row]]), into[by_row])
    _put_statistics(pooled, at, merged)
    take = np.arange(len(kept))
    take[at] = len(kept) + np.arange(len(at))
    samples = pa.concat_arrays([lists.take(order[kept]), merged]).take(pa.array(take))
    pooled["samples_s"] = pd.arrays.ArrowExtensionArray(samples)
    return pooled


def _concatenated(lists: pa.ListArray, groups: np.ndarray) -> pa.ListArray:
    """One list per run of equal values in `groups`: its lists' values one after the other."""
    ends = np.cumsum(pc.list_value_length(lists).to_numpy())
    last = np.flatnonzero(np.diff(groups, append=groups[-1] + 1))  # the last list of each group
    offsets = np.concatenate([[0], ends[last]])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pc.list_flatten(lists))


def _put_statistics(rows: pd.DataFrame, at: np.ndarray, samples: pa.ListArray) -> None:
    """Set the statistics of the rows at positions `at` to those of `samples` (one list each)."""
    values = sorted_each(samples)  # summarize sorts too; Python's sort of a sorted list is quick
    offsets = samples.offsets.to_numpy()
    stats = [summarize(values[a:b].tolist()) for a, b in itertools.pairwise(offsets)]
    median_s = np.array([s.median_s for s in stats])
    positive_s = np.where(median_s > 0, median_s, np.nan)  # no rate from a zero time

    def per_s(name: str) -> np.ndarray:
        return pd.to_numeric(rows[name].iloc[at], errors="coerce").to_numpy(float) / positive_s

    new: dict[str, Any] = {
        "time_median_s": median_s,
        "time_p25_s": [s.p25_s for s in stats],
        "time_p75_s": [s.p75_s for s in stats],
        "time_min_s": [s.min_s for s in stats],
        "noisy": [s.noisy for s in stats],
        "tflops": per_s("flops") / 1e12,
        "gbps": per_s("bytes") / 1e9,
        "items_per_s": per_s("items_per_call"),
    }
    # collectives: algbw is gbps (bytes = the message S), busbw its nccl-tests multiple
    factor = pd.to_numeric(rows["busbw_factor"].iloc[at], errors="coerce").to_numpy(float)
    new["algbw_gbps"] = np.where(np.isnan(factor), np.nan, new["gbps"])
    new["busbw_gbps"] = new["gbps"] * factor
    for name, values_at in new.items():
        column = rows[name].to_numpy(dtype=object if name == "noisy" else float, copy=True)
        column[at] = values_at
        rows[name] = pd.Series(column, index=rows.index).infer_objects()  # noisy: bool if it can
