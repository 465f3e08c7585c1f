"""The command line: `bench info | list | run | check-timing`.

User errors (UserError, bad arguments) end here as one line on stderr and exit status 2; case
failures never reach this level, they are rows with a status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import uuid
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bench import nvml, units
from bench import suite as suites
from bench.backends import BACKENDS
from bench.backends.base import DTYPES, BackendInfo
from bench.case import Case, Outcome
from bench.dist.collectives import OPS as COMM_OPS
from bench.dist.run import DEFAULT_DTYPES as COMM_DTYPES
from bench.dist.run import DEFAULT_SIZES as COMM_SIZES
from bench.errors import UserError
from bench.fitsearch import DEFAULT_MARGIN as DEFAULT_FIT_MARGIN
from bench.models.spec import MODELS as TRAIN_MODELS
from bench.models.spec import TRAIN_DTYPES
from bench.plan import Filters, Planned, plan
from bench.progress import Progress, summary
from bench.results import ResultsFile, check_writable, make_row
from bench.runner import execute, probe_backends
from bench.workloads import WORKLOADS

DEFAULT_SUITE = "default"
DEFAULT_FIT_DTYPES = ("float32", "bfloat16")
FIT_TARGETS = ("resnet50", "gpt2-small", "bert-base", "lstm-lm", "attention")
MEMORY_LIMIT_HELP = (
    "emulate a device with this much memory, e.g. 24GiB, 16GB, 512MiB: caps the GPU "
    "allocators (torch, JAX, CuPy) or, on the CPU, the worker's resident memory"
)


def parse_bytes(text: str, what: str = "--memory-limit") -> int:
    """A size option ("24GiB", "16GB", "512MiB") as bytes; see bench.units."""
    return units.parse_bytes(text, what)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Deep-learning hardware benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser("info", help="describe this machine and the backends")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--label", help="label for this machine (default: hostname)")

    sub.add_parser("list", help="suites, workloads, dtypes and backends (with availability)")

    run = sub.add_parser("run", help="run a suite and write a results file")
    run.add_argument(
        "suite",
        nargs="?",
        default=DEFAULT_SUITE,
        help="suite name in suites/ or a path to a .toml file (default: default)",
    )
    run.add_argument("--backend", action="append", help="only these backends (repeat or a,b)")
    run.add_argument("--workload", action="append", help="only these workloads")
    run.add_argument("--dtype", action="append", help="only these dtypes")
    run.add_argument("--device", default="all", help="cpu, gpu or all (default: all)")
    run.add_argument(
        "--gpus", default="0", help="GPUs to measure: all, or CUDA indices like 0,1 (default: 0)"
    )
    run.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="timed seconds per case (overrides the suite)",
    )
    run.add_argument("--out", default="results", help="results directory (default: results)")
    run.add_argument("--label", help="label for this machine (default: hostname)")
    run.add_argument("--memory-limit", metavar="SIZE", help=MEMORY_LIMIT_HELP)
    run.add_argument(
        "--storage-dir",
        metavar="DIR",
        help="where the storage workload writes its test files (default: the results directory)",
    )
    run.add_argument(
        "--storage-max-bytes",
        metavar="SIZE",
        help="cap the storage workload's test files at SIZE per case, e.g. 64MiB (a quick run)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would run and what would be skipped, write nothing",
    )

    report = sub.add_parser(
        "report", help="compare results files: an HTML page with charts, Markdown and CSV"
    )
    report.add_argument(
        "paths", nargs="*", default=["results"], help="results files or folders (default: results)"
    )
    report.add_argument("--baseline", help="label of the machine the others are compared with")
    report.add_argument("--prices", type=Path, help="TOML file of prices ([[price]] entries)")
    report.add_argument("--peaks", type=Path, help="TOML file of extra GPU datasheet peaks")
    report.add_argument("--out", default="reports", help="output folder (default: reports)")
    report.add_argument(
        "--pool",
        action="store_true",
        help="pool the samples of every run of a machine (default: its latest run of each case)",
    )

    fit = sub.add_parser(
        "fit",
        help="find the largest batch (or sequence) that trains without running out of memory",
    )
    fit.add_argument(
        "targets",
        nargs="*",
        metavar="MODEL",
        help=f"{', '.join(FIT_TARGETS)} (default: the four models)",
    )
    fit.add_argument("--backend", default="torch", help="torch or jax (default: torch)")
    fit.add_argument(
        "--device", help="cpu, gpu or cuda:N (default: cuda:0 where NVML sees a GPU, else cpu)"
    )
    fit.add_argument(
        "--precision",
        action="append",
        help="dtypes: float32, tf32, bfloat16 (AMP), float16 (AMP) (default: float32,bfloat16)",
    )
    fit.add_argument(
        "--checkpointing", default="off,on", help="off, on or off,on (default: off,on)"
    )
    fit.add_argument("--optimizer", action="append", help="sgd, adamw (default: adamw)")
    fit.add_argument(
        "--search", choices=("batch", "seq"), help="what to search (default: batch; attention: seq)"
    )
    fit.add_argument("--batch", type=int, help="the batch when searching seq (default 1)")
    fit.add_argument("--seq", type=int, help="the sequence length when searching batch")
    fit.add_argument("--image", type=int, help="ResNet-50's image side (default 224)")
    fit.add_argument("--size", default="full", help="full (default) or tiny: the model's size")
    fit.add_argument(
        "--impl", default="naive", help="attention: the implementation (default naive)"
    )
    fit.add_argument("--heads", type=int, help="attention: heads (default 32)")
    fit.add_argument("--head-dim", type=int, help="attention: head dimension (default 128)")
    fit.add_argument("--causal", action="store_true", help="attention: causal")
    fit.add_argument("--memory-limit", metavar="SIZE", help=MEMORY_LIMIT_HELP)
    fit.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_FIT_MARGIN,
        help=f"share of memory left free by the recommended batch (default {DEFAULT_FIT_MARGIN})",
    )
    fit.add_argument("--max", type=int, help="search ceiling (default: batch 4096, seq 131072)")
    fit.add_argument("--out", default="results", help="results directory (default: results)")
    fit.add_argument("--label", help="label for this machine (default: hostname)")

    comm = sub.add_parser(
        "comm",
        help="collectives and DDP scaling across ranks (run it under torchrun)",
        description="Run under torchrun, e.g. torchrun --nproc-per-node 8 -m bench comm "
        "(make bench-dist NPROC=8); alone it is a world of one.",
    )
    comm.add_argument("--parts", default="collectives,ddp", help="collectives, ddp or both")
    comm.add_argument(
        "--ops",
        default=",".join(COMM_OPS),
        help=f"collectives (default all): {', '.join(COMM_OPS)}",
    )
    comm.add_argument(
        "--sizes",
        default=COMM_SIZES,
        help=f"message sizes: FROM:TO[:FACTOR] or a list (default {COMM_SIZES})",
    )
    comm.add_argument(
        "--dtypes", default=COMM_DTYPES, help=f"collective dtypes (default {COMM_DTYPES})"
    )
    comm.add_argument(
        "--device", default="auto", help="auto (GPUs with NCCL where torch sees them), gpu or cpu"
    )
    comm.add_argument(
        "--world-sizes", help="collectives on ranks 0..n-1 for each n, e.g. 2,4,8 (default: all)"
    )
    comm.add_argument(
        "--ddp-models",
        default=",".join(TRAIN_MODELS),
        help=f"training models under DDP (default all: {', '.join(TRAIN_MODELS)}), or none",
    )
    comm.add_argument(
        "--ddp-world-sizes", help="DDP group sizes (default 1, 2, 4, ... and the world size)"
    )
    comm.add_argument(
        "--ddp-dtype",
        help=f"{', '.join(TRAIN_DTYPES)} (default: bfloat16 on GPUs, float32 on the CPU)",
    )
    comm.add_argument("--ddp-size", default="full", help="full (default) or tiny models")
    comm.add_argument("--ddp-batch", type=int, help="per-rank batch (default: per model)")
    comm.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds any rank waits for the others before the run ends naming the missing rank",
    )
    comm.add_argument("--time-budget", type=float, metavar="SECONDS", help="timed seconds per case")
    comm.add_argument("--out", default="results", help="results directory (default: results)")
    comm.add_argument("--label", help="label for this machine (default: hostname)")

    check = sub.add_parser(
        "check-timing", help="compare the harness with a bare timing loop (torch)"
    )
    check.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    check.add_argument(
        "--op",
        choices=("matmul", "copy"),
        default="matmul",
        help="matmul (default) or copy: a device-to-device copy's bandwidth (membw)",
    )
    check.add_argument(
        "--size", type=int, help="matmul: n of the n×n×n product (cpu 2048, gpu 8192)"
    )
    check.add_argument("--dtype", help="matmul: dtype (cpu float32, gpu bfloat16)")
    check.add_argument(
        "--bytes", metavar="SIZE", help="copy: the buffer copied (cpu 256MiB, gpu 1GiB)"
    )
    check.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any case ran; cmd_run handles it once cases run
        print("bench: interrupted", file=sys.stderr)
        return 130


# --- bench info / list ------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from bench.discover import describe_machine, format_info

    desc = describe_machine(args.label)
    desc["backends"] = {name: asdict(info) for name, info in probe_backends(BACKENDS).items()}
    if args.json:
        print(json.dumps(desc, indent=2, default=str))
        return 0
    print(format_info(desc))
    print("Backends")
    for name, info in desc["backends"].items():
        print(f"  {_backend_line(name, BackendInfo(**info))}")
    return 0


def _backend_line(name: str, info: BackendInfo) -> str:
    if not info.available:
        return f"{name:<6} not available: {info.reason}"
    gpus = f"{info.gpu_count} GPU(s)" if info.gpu_count else f"no GPU ({info.gpu_reason})"
    extra = ", ".join(f"{k} {v}" for k, v in info.details.items() if v is not None)
    runtime = f" ({info.runtime_version})" if info.runtime_version else ""
    return f"{name:<6} {info.version}{runtime}: CPU, {gpus}" + (f"; {extra}" if extra else "")


def cmd_list(args: argparse.Namespace) -> int:
    print("Suites")
    for name in suites.available_suites():
        try:
            description = suites.load(name).description
        except UserError as exc:
            description = f"INVALID: {exc}"
        print(f"  {name:<12} {description}")
    print("Workloads")
    print("  every entry also takes backends, devices, dtypes and settings, and a CPU-only entry")
    print('  threads = [1, 2, "all"] or "sweep" (where a workload has its own, "only" says which)')
    for workload in WORKLOADS.values():
        print(f"  {workload.name:<12} {workload.description}")
        if workload.launcher:
            print(f"    {'(only)':<12} {workload.launcher}")
            continue
        own = [
            f"{label} {', '.join(values)}"
            for label, values, usual in (
                ("backends", workload.backends, ("torch", "jax", "cupy")),
                ("devices", workload.device_kinds, ("cpu", "gpu")),
                ("dtypes", workload.dtypes or (), ()),
            )
            if values != usual
        ]
        if own:
            print(f"    {'(only)':<12} {'; '.join(own)}")
        for key, meaning in workload.keys.items():
            print(f"    {key:<12} {meaning}")
    print(f"Dtypes\n  {', '.join(DTYPES)}")
    print("Backends")
    for name, info in probe_backends(BACKENDS).items():
        print(f"  {_backend_line(name, info)}")
    return 0


# --- bench run ----------------------------------------------------------------------------------


def _choices(
    values: list[str] | None, valid: list[str] | tuple[str, ...], what: str
) -> tuple[str, ...] | None:
    if values is None:
        return None
    names = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
    if not names:
        raise UserError(f"empty {what} list; valid: {', '.join(valid)}")
    bad = [n for n in names if n not in valid]
    if bad:
        raise UserError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return names


def _select_gpus(gpus: list[nvml.GpuInfo], spec: str) -> list[nvml.GpuInfo]:
    if spec == "all":
        return gpus
    try:
        wanted = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UserError(f"--gpus: expected 'all' or indices like 0,1; got {spec!r}") from None
    if not gpus:
        return gpus  # GPU cases become skipped rows that say why there is no GPU
    by_index = {g.index: g for g in gpus}
    bad = [i for i in wanted if i not in by_index]
    if bad:
        raise UserError(f"--gpus: no GPU {bad}; this machine has {', '.join(map(str, by_index))}")
    return [by_index[i] for i in dict.fromkeys(wanted)]


def cmd_run(args: argparse.Namespace) -> int:
    from bench.discover import describe_machine

    suite = suites.load(args.suite)
    kinds = {"all": ("cpu", "gpu"), "cpu": ("cpu",), "gpu": ("gpu",)}
    if args.device not in kinds:
        raise UserError(f"--device: unknown {args.device!r}; valid: {', '.join(kinds)}")
    if args.time_budget is not None and not 0.001 <= args.time_budget <= 3600:
        raise UserError(f"--time-budget: {args.time_budget} is out of range [0.001, 3600]")
    filters = Filters(
        backends=_choices(args.backend, list(BACKENDS), "backend"),
        workloads=_choices(args.workload, list(WORKLOADS), "workload"),
        dtypes=_choices(args.dtype, DTYPES, "dtype"),
        device_kinds=kinds[args.device],
        time_budget_s=args.time_budget,
    )
    out_dir = Path(args.out)  # created only once there is something to write (below)

    machine = describe_machine(args.label)
    gpus, gpu_reason = nvml.list_gpus()
    gpus = _select_gpus(gpus, args.gpus)
    memory = machine["memory"]  # a "not available: ..." string where psutil could not tell
    host_memory_bytes = memory.get("total_bytes", 0) if isinstance(memory, dict) else 0
    if args.memory_limit is not None:
        limit = parse_bytes(args.memory_limit)
        devices = [("cpu", host_memory_bytes)] if "cpu" in filters.device_kinds else []
        if "gpu" in filters.device_kinds:
            devices += [(f"cuda:{g.index}", g.memory_bytes) for g in gpus]
        _check_limit(limit, devices)
        filters = dataclasses.replace(filters, memory_limit_bytes=limit)
    filters = dataclasses.replace(filters, **_storage_filters(args, out_dir))
    planned = list(plan(suite, filters, gpus, gpu_reason or "", host_memory_bytes))
    if not planned:
        raise UserError(f"nothing to run: the filters leave no case of suite {suite.name!r}")
    if not args.dry_run and any(WORKLOADS[p.case.workload].scratch for p in planned):
        _check_storage_dir(Path(filters.storage_dir), args.storage_dir is None)
    if args.dry_run:
        print(_plan_text(planned))
        return 0

    extra = {"suite_path": str(suite.path), "suite_toml": suite.path.read_text()}
    writer = RunWriter(machine, suite.name, args.argv, out_dir, extra=extra)
    progress = Progress(len(planned), sum(1 for p in planned if not p.skip_reason))

    def record(
        case: Case,
        outcome: Outcome,
        info: BackendInfo,
        wall_s: float,
        finished_at: datetime,
        ran: bool,
    ) -> None:
        progress.update(writer.append(case, outcome, info, wall_s, finished_at), ran)

    path, results = writer.path, writer.results
    print(f"bench: suite {suite.name}, {len(planned)} cases -> {path}", file=sys.stderr)
    try:
        execute(planned, record, progress.starting)
    except KeyboardInterrupt:
        progress.close()
        print(
            f"bench: interrupted; {len(results.rows)} finished cases are in {path}", file=sys.stderr
        )
        return 130
    progress.close()
    elapsed_s = (datetime.now(UTC) - writer.run["started_at"]).total_seconds()
    print(summary(results.rows, str(path), elapsed_s))
    return 0


def _storage_filters(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Where the storage workload writes (absolute: workers may run elsewhere) and its cap."""
    cap = args.storage_max_bytes
    return {
        "storage_dir": str(Path(args.storage_dir or out_dir).resolve()),
        "storage_max_bytes": parse_bytes(cap, "--storage-max-bytes") if cap else None,
    }


def _check_storage_dir(directory: Path, is_default: bool) -> None:
    """A UserError unless the storage workload can write in `directory`; the results
    directory (the default) may be created, a directory the user named must exist."""
    if not is_default and not directory.is_dir():
        raise UserError(f"--storage-dir: {directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(
            f"--storage-dir: cannot write in {directory}: {exc.strerror or exc}"
        ) from None


def _check_limit(limit_bytes: int, devices: list[tuple[str, int | None]]) -> None:
    """A UserError where a --memory-limit exceeds a device it applies to."""
    for device, memory_bytes in devices:
        if memory_bytes and limit_bytes > memory_bytes:
            where = "system RAM" if device == "cpu" else f"{device}'s memory"
            raise UserError(
                f"--memory-limit: {limit_bytes / 2**30:.2f} GiB is larger than {where} "
                f"({memory_bytes / 2**30:.2f} GiB); a limit emulates a smaller device"
            )


class RunWriter:
    """One run's results file: the run's description, and a row appended per finished case."""

    def __init__(
        self,
        machine: dict[str, Any],
        suite: str,
        argv: list[str],
        out_dir: Path,
        extra: dict[str, Any] | None = None,
        suffix: str = "",
    ) -> None:
        from bench.discover import flat_machine_columns

        started_at = datetime.now(UTC)
        run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.run: dict[str, Any] = {
            "run_id": run_id,
            "machine_id": machine["machine_id"],
            "label": machine["label"],
            "started_at": started_at,
            "suite": suite,
            **(extra or {}),
            "argv": ["bench", *argv],
            "backends": {},
        }
        self.path = out_dir / machine["machine_id"] / f"{run_id}{suffix}.parquet"
        check_writable(self.path.parent)
        self.results = ResultsFile(self.path, machine, self.run)
        self._machine_columns = flat_machine_columns(machine)

    def append(
        self,
        case: Case,
        outcome: Outcome,
        info: BackendInfo,
        wall_s: float,
        finished_at: datetime,
        fit_search: str = "",
    ) -> dict[str, Any]:
        if info.version:
            self.run["backends"][case.backend] = asdict(info)
        row = make_row(
            self.run,
            self._machine_columns,
            case,
            outcome,
            info.version,
            wall_s,
            finished_at,
            info.runtime_version,
            fit_search=fit_search,
        )
        self.results.append(row)
        return row


def _plan_text(planned: list[Planned]) -> str:
    """Cases per backend, device and dtype, and the reasons of those planned as skipped."""
    groups = Counter((p.case.backend, p.case.device, p.case.dtype) for p in planned)
    skips = Counter(p.skip_reason for p in planned if p.skip_reason)
    lines = [f"{len(planned)} cases ({sum(skips.values())} planned as skipped):"]
    lines += [f"  {b:<6} {d:<8} {t:<12} {n:4d}" for (b, d, t), n in sorted(groups.items())]
    lines += [f"  skipped {n:4d} × {reason}" for reason, n in skips.most_common()]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report.build import build

    written, warnings = build(
        args.paths, Path(args.out), args.baseline, args.prices, args.peaks, pool=args.pool
    )
    for warning in warnings:
        print(f"bench: warning: {warning}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from bench import fit
    from bench.discover import describe_machine
    from bench.models import spec

    targets = list(_choices(args.targets or None, FIT_TARGETS, "model") or spec.MODELS)
    backend = (_choices([args.backend], ("torch", "jax"), "backend") or ("torch",))[0]
    dtypes = list(_choices(args.precision, spec.TRAIN_DTYPES, "precision") or DEFAULT_FIT_DTYPES)
    ckpt_names = _choices([args.checkpointing], ("off", "on"), "checkpointing") or ("off",)
    optimizers = list(_choices(args.optimizer, spec.OPTIMIZERS, "optimizer") or ("adamw",))
    if args.size not in spec.SIZES:
        raise UserError(f"--size: unknown {args.size!r}; valid: {', '.join(spec.SIZES)}")
    for name in ("batch", "seq", "image", "heads", "head_dim", "max"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 2**31:
            raise UserError(f"--{name.replace('_', '-')}: {value} is not a positive size")
    if not 0 <= args.margin < 1:
        raise UserError(f"--margin: {args.margin} is not a fraction in [0, 1)")
    if args.search == "seq" and "resnet50" in targets:
        raise UserError("--search seq: resnet50 takes images, not sequences; search its batch")
    if args.image is not None and args.image < 32:
        raise UserError(f"--image: {args.image} is below ResNet-50's 32 pixels")
    if "attention" in targets:
        from bench.workloads.attention import IMPLS

        if args.impl not in IMPLS:
            raise UserError(f"--impl: unknown {args.impl!r}; valid: {', '.join(IMPLS)}")

    machine = describe_machine(args.label)
    gpus, gpu_reason = nvml.list_gpus()
    device = args.device or ("cuda:0" if gpus else "cpu")
    device = "cuda:0" if device == "gpu" else device
    memory = machine["memory"]
    ram_bytes = memory.get("total_bytes", 0) if isinstance(memory, dict) else 0
    if device == "cpu":
        nvml_index, device_bytes = None, ram_bytes
    else:
        index = device.removeprefix("cuda:")
        gpu = next((g for g in gpus if str(g.index) == index), None)
        if gpu is None:
            have = ", ".join(f"cuda:{g.index}" for g in gpus) or f"none ({gpu_reason})"
            raise UserError(f"--device: no GPU {device!r}; GPUs here: {have}")
        nvml_index, device_bytes = gpu.nvml_index, gpu.memory_bytes
    limit = parse_bytes(args.memory_limit) if args.memory_limit else None
    if limit is not None:
        _check_limit(limit, [(device, device_bytes)])
    elif device == "cpu":
        import psutil

        limit = psutil.virtual_memory().available  # the CPU's budget: what is free now
    key = args.search
    fixed = {
        "size": args.size,
        "batch": args.batch,
        "seq": args.seq,
        "image": args.image,
        "impl": args.impl,
        "heads": args.heads,
        "head_dim": args.head_dim,
        "causal": args.causal,
    }
    ckpts = [name == "on" for name in ckpt_names]
    plans = fit.searches(targets, dtypes, ckpts, optimizers, key, fixed)

    writer = RunWriter(machine, "fit", args.argv, Path(args.out), suffix="-fit")
    path, results = writer.path, writer.results

    def record(
        case: Case, outcome: Outcome, info: BackendInfo, wall_s: float, searched: str
    ) -> dict[str, Any]:
        row = writer.append(case, outcome, info, wall_s, datetime.now(UTC), fit_search=searched)
        value = case.params_dict().get(searched, case.params_dict().get("seq_q"))
        fit.print_err(
            f"  {searched} {value}: {outcome.status} {_need_text(row)}{outcome.reason[:120]}"
        )
        return row

    target = fit.Target("fit", backend, device, nvml_index, limit, device_bytes)
    budget = f"{limit / 2**30:.2f} GiB" if limit else "the whole device"
    print(f"bench: fit on {device} ({budget}), {len(plans)} searches -> {path}", file=sys.stderr)
    try:
        for one in plans:
            fit.print_err(one.describe())
            max_value = args.max or fit.DEFAULT_MAX[one.key]
            result = fit.run_search(one, target, record, max_value)
            print(fit.result_line(one, result, limit or device_bytes, args.margin), flush=True)
    except KeyboardInterrupt:
        print(f"bench: interrupted; {len(results.rows)} trials are in {path}", file=sys.stderr)
        return 130
    table = fit.table_text(results.rows, args.margin)
    if table:
        print(table)
    print(f"{len(results.rows)} trials -> {path}")
    return 0


def _need_text(row: dict[str, Any]) -> str:
    from bench.fitsearch import need_bytes

    need = need_bytes(row) if row["status"] == "ok" else None
    return "" if need is None else f"(needs {need / 2**30:.2f} GiB) "


def cmd_check_timing(args: argparse.Namespace) -> int:
    from bench.timing_check import check_copy, check_timing

    if args.op == "copy":
        if args.size is not None or args.dtype is not None:
            raise UserError("check-timing --op copy: give the buffer with --bytes")
        size = parse_bytes(args.bytes, "--bytes") if args.bytes else None
        return check_copy(args.device, size, args.rounds)
    if args.bytes is not None:
        raise UserError("check-timing --bytes applies to --op copy")
    return check_timing(args.device, args.size, args.dtype, args.rounds)


def cmd_comm(args: argparse.Namespace) -> int:
    from bench.dist.run import main as comm_main

    return comm_main(args)


COMMANDS: dict[str, Any] = {
    "comm": cmd_comm,
    "info": cmd_info,
    "list": cmd_list,
    "run": cmd_run,
    "report": cmd_report,
    "check-timing": cmd_check_timing,
    "fit": cmd_fit,
}
