"""Load results files for a report: any number, from any machines, of any readable schema.

A file that cannot be read (corrupt, truncated, not parquet, an unknown schema version) becomes a
warning naming it; the rest is reported. No usable file at all is a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.results import COLUMNS, SCHEMA_VERSION, read_results, result_files

# Columns that say which case a row measured: rows with equal values are the same case.
CASE_KEY = ("workload", "variant", "backend", "device_kind", "dtype", "params")


@dataclass
class Loaded:
    rows: pd.DataFrame  # every row of every readable file, in the current schema's columns
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # machine_id -> description
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> description
    warnings: list[str] = field(default_factory=list)


def _v1_to_v2(rows: pd.DataFrame) -> pd.DataFrame:
    """Adds runtime_version: "cpu" for CPU rows (no accelerator runtime); GPU rows did not record
    theirs, so None (unknown)."""
    return rows.assign(runtime_version=rows["device"].map(lambda d: "cpu" if d == "cpu" else None))


# version -> the step that turns rows of that version into rows of the next one
_STEPS = {1: _v1_to_v2}


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
    frames = []
    for path in files:
        try:
            rows, info = read_results(path)
        except UserError as exc:
            loaded.warnings.append(f"skipped {path}: {exc}")
            continue
        except Exception as exc:  # corrupt, truncated or not parquet: pyarrow's many errors
            loaded.warnings.append(f"skipped {path}: not a readable results file ({exc})")
            continue
        if rows.empty:
            loaded.warnings.append(f"skipped {path}: no rows")
            continue
        machine_id = str(info["machine"].get("machine_id") or rows["machine_id"].iloc[0])
        loaded.machines[machine_id] = info["machine"]
        loaded.runs[str(info["run"].get("run_id", path.stem))] = info["run"]
        frames.append(migrate(rows, info["schema_version"]))
    if not frames:
        missing = [str(p) for p in paths if not Path(p).exists()]
        why = f"no such path: {', '.join(missing)}" if missing else "no readable results files"
        raise UserError(f"nothing to report: {why} in {', '.join(map(str, paths))}")
    loaded.rows = pd.concat(frames, ignore_index=True)
    loaded.rows["device_kind"] = loaded.rows["device"].map(lambda d: "cpu" if d == "cpu" else "gpu")
    return loaded


def latest_per_case(rows: pd.DataFrame) -> pd.DataFrame:
    """For each machine and case, the row of the latest run that measured it."""
    ordered = rows.sort_values("started_at", kind="stable")
    return ordered.drop_duplicates(["machine_id", *CASE_KEY], keep="last").reset_index(drop=True)
