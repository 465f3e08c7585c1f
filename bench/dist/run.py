"""`bench comm`: every rank runs the same plan of cases in the same order; rank 0 writes the rows.

A case runs on the ranks 0..n-1 of its world size n, in step (bench.dist.timing). Ranks outside
the case wait until rank 0 says in the store that it is over, watching the members' heartbeats
meanwhile, so a case may take longer than the timeout without a false alarm, and a dead member
still ends the run. Each case is checked on every member before it is timed; the members agree
on the outcome (one `all_gather_object`), so a case that fails (a wrong result, out of memory,
a dtype a backend refuses) is a row with its status and the run goes on. A failure of the
process group itself ends the run (bench.dist.session).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import units
from bench.case import Case, Outcome, Settings
from bench.dist import collectives
from bench.dist.session import Failed, Place, Session, exit_failed, on_sigterm, place_from_env
from bench.dist.timing import GroupTimes, time_in_step
from bench.errors import UserError
from bench.models import spec
from bench.worker import one_line

DEFAULT_SIZES = "1KiB:1GiB:4"
DEFAULT_DTYPES = "float32,bfloat16"
PARTS = ("collectives", "ddp")
SETTINGS = Settings(time_budget_s=0.3, warmup_s=0.05, min_samples=5, max_samples=200)
DDP_SETTINGS = Settings(time_budget_s=1.0, warmup_s=0.0, min_samples=3, max_samples=50)
WAIT_POLL_S = 0.5
# Per-rank training cases: the default suite's batches on GPUs, small ones on CPUs.
DDP_GPU = {
    "resnet50": {"batch": 64, "image": 224},
    "gpt2-small": {"batch": 8, "seq": 1024},
    "bert-base": {"batch": 16, "seq": 512},
    "lstm-lm": {"batch": 64, "seq": 35},
}
DDP_CPU = {
    "resnet50": {"batch": 2, "image": 224},
    "gpt2-small": {"batch": 1, "seq": 128},
    "bert-base": {"batch": 1, "seq": 128},
    "lstm-lm": {"batch": 8, "seq": 35},
}


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommCase:
    """One collective case: `op` on the first `world` ranks, S = size_bytes, in `dtype`."""

    op: str
    size_bytes: int
    dtype: str
    world: int
    peer: int = 0  # pair: the rank receiving from rank 0

    def text(self) -> str:
        peer = f" 0→{self.peer}" if self.op == "pair" else ""
        return f"{self.op}{peer} {_size(self.size_bytes)} {self.dtype} on {self.world} rank(s)"

    def params(self) -> dict[str, Any]:
        p = {"op": self.op, "bytes": self.size_bytes, "world_size": self.world}
        return p | ({"peer": self.peer} if self.op == "pair" else {})


@dataclass(frozen=True)
class DdpCase:
    model: str
    params: dict[str, Any]  # the train workload's, without world_size
    dtype: str
    world: int

    def text(self) -> str:
        batch = self.params["batch"]
        return f"ddp {self.model} batch {batch}/rank {self.dtype} on {self.world} rank(s)"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def parse_sizes(text: str) -> list[int]:
    """ "1KiB:1GiB:4" (from, to, factor) or "4KiB,1MiB,64MiB" as bytes."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise UserError(f"--sizes: expected FROM:TO[:FACTOR] or a list, got {text!r}")
        try:
            step = float(parts[2]) if len(parts) == 3 else 2
        except ValueError:
            raise UserError(f"--sizes: the factor {parts[2]!r} is not a number") from None
        return units.size_points({"from": parts[0], "to": parts[1], "step": step}, "--sizes")
    return units.size_points([p.strip() for p in text.split(",") if p.strip()], "--sizes")


def _names(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise UserError(
            f"{what}: unknown {', '.join(map(repr, bad)) or 'empty list'}; "
            f"valid: {', '.join(valid)}"
        )
    return names


def world_sizes(text: str | None, world: int, what: str, default: list[int]) -> list[int]:
    """A list like "1,2,4" (each ≤ the world size), or the default."""
    if text is None:
        return default
    try:
        sizes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"{what}: expected rank counts like 1,2,4, got {text!r}") from None
    bad = [s for s in sizes if not 1 <= s <= world]
    if bad or not sizes:
        raise UserError(
            f"{what}: {bad or text!r}: each must be between 1 and the world size {world}"
        )
    return sizes


def powers_of_two(world: int) -> list[int]:
    """1, 2, 4, ... up to `world`, and `world` itself."""
    sizes = [1 << k for k in range(world.bit_length()) if 1 << k <= world]
    return sorted({*sizes, world})


def pair_peers(world: int, members: list[dict[str, Any]]) -> list[int]:
    """The ranks rank 0 sends to in `pair` cases: every rank up to 16; beyond, those on rank 0's
    node and the first rank of every other node (one per kind of link)."""
    if world <= 16:
        return list(range(1, world))
    node0 = members[0]["node"]
    firsts: dict[Any, int] = {}
    for m in members[1:world]:
        firsts.setdefault(m["node"], m["rank"])
    local = [m["rank"] for m in members[1:world] if m["node"] == node0]
    return sorted({*local, *(r for node, r in firsts.items() if node != node0)})


# --- recording ----------------------------------------------------------------------------------


class Recorder:
    """Rank 0's results file; every other rank's is a no-op."""

    def __init__(self, session: Session, args: argparse.Namespace, argv: list[str]) -> None:
        self.session = session
        self.writer: Any = None
        self.info: Any = None
        self.count = 0
        if session.place.rank != 0:
            return
        from bench.cli import RunWriter
        from bench.discover import describe_machine

        machine = describe_machine(args.label)
        extra = {
            "world": _world_text(session),
            "members": session.members,
            "gpu_topology": _topology(session),
        }
        self.writer = RunWriter(machine, "comm", argv, Path(args.out), extra=extra, suffix="-comm")
        self.info = torch_backend().probe()

    @property
    def path(self) -> Path | None:
        return self.writer.path if self.writer else None

    def record(self, case: Case, outcome: Outcome, wall_s: float) -> dict[str, Any] | None:
        if self.writer is None:
            return None
        row = self.writer.append(case, outcome, self.info, wall_s, datetime.now(UTC))
        self.count += 1
        return row

    def note(self) -> str:
        if self.writer is None:
            return "rank 0 has the results file"
        return f"the {self.count} finished cases are in {self.writer.path}"


def _topology(session: Session) -> list[list[str]] | None:
    """`nvidia-smi topo -m` between the GPUs of rank 0's node (None on CPU ranks)."""
    from bench import topology

    indices = [m["nvml_index"] for m in session.members if m["node"] == session.place.node_rank]
    if session.device == "cpu" or None in indices:
        return None
    return topology.topology_matrix(indices)


def _world_text(session: Session) -> str:
    p = session.place
    kind = session.device.split(":")[0]
    return f"{p.world_size} rank(s) on {p.nodes} node(s), {session.backend} on {kind}"


RANK_KEYS = ("rank", "host", "local_rank", "device", "device_name")


def group_columns(session: Session, size: int, times: GroupTimes | None = None) -> dict[str, Any]:
    """The distributed columns every row of a case on ranks 0..size-1 carries; with the case's
    times, each rank's own median (`median_s` in `ranks`) and the slowest rank."""
    members = session.members_of(size)
    link = group_link(session, size)
    ranks = [{k: m[k] for k in RANK_KEYS} for m in members]
    if times is not None:
        for entry, median_s in zip(ranks, times.rank_medians_s, strict=True):
            entry["median_s"] = median_s
    return {
        "world_size": size,
        "nodes": len({m["node"] for m in members}),
        "local_world_size": session.place.local_world_size,
        "ranks": json.dumps(ranks),
        "dist_backend": session.backend,
        "link": link.text or None,
        "link_gbps": link.gbps,
        "slowest_rank": times.slowest_rank if times is not None else None,
    }


@functools.cache
def group_link(session: Session, size: int, peer: int | None = None) -> Any:
    """The slowest path between ranks 0..size-1 (or between rank 0 and `peer`); the ranks never
    change in a run, so NVML and /sys are read once per group."""
    from bench import topology

    members = session.members_of(size)
    if peer is not None:
        members = [members[0], members[peer]]
    if len(members) < 2:
        return topology.NO_LINK
    if len({m["node"] for m in members}) > 1:
        other = next(m["host"] for m in members if m["node"] != members[0]["node"])
        return topology.network_link(other, rdma=session.backend == "nccl")
    if session.device == "cpu":
        return topology.LOOPBACK
    indices = [m["nvml_index"] for m in members]
    if None in indices:
        return topology.Link("unknown", "unknown", None, "NVML does not see every rank's GPU")
    return topology.gpu_group_link(indices)


# --- running cases ------------------------------------------------------------------------------


@dataclass
class Agreed:
    """What the members of a case agreed on after the check."""

    status: str
    reason: str
    error: float | None


def agree(session: Session, size: int, status: str, reason: str, error: float | None) -> Agreed:
    """Every member's (status, reason, error) → the case's: ok only if every member is ok; else
    the first member that is not, named."""
    import torch.distributed as dist

    every: list[Any] = [None] * size
    session.guard.arm("agreeing on the outcome")
    dist.all_gather_object(every, (status, reason, error), group=session.group(size))
    session.guard.disarm()
    errors = [e for _, _, e in every if e is not None]
    worst = max(errors) if errors else None
    for rank, (s, r, _) in enumerate(every):
        if s != "ok":
            return Agreed(s, f"rank {rank}: {r}" if size > 1 else r, worst)
    return Agreed("ok", "", worst)


@functools.cache
def torch_backend() -> Any:
    """The suite's torch adapter, probed once: dtypes, precision settings, OOM recognition."""
    from bench.backends.torch_backend import Backend

    backend = Backend()
    backend.probe()
    return backend


def failure_status(exc: BaseException) -> str:
    return "oom" if torch_backend().is_oom(exc) else "error"


class Runner:
    """Runs the plan's cases in order on every rank (see the module docstring)."""

    def __init__(self, session: Session, recorder: Recorder, total: int) -> None:
        self.session = session
        self.recorder = recorder
        self.total = total
        self.index = 0

    def run(self, size: int, text: str, measure: Callable[[], tuple[Case, Outcome]]) -> None:
        """Case `text` on ranks 0..size-1: members call `measure`; rank 0 records its result."""
        session = self.session
        self.index += 1
        session.guard.case(session.store, self.index, text)
        started = time.perf_counter()
        if session.member_of(size):
            case, outcome = measure()
            if session.place.rank == 0:
                row = self.recorder.record(case, outcome, time.perf_counter() - started)
                _progress(self.index, self.total, text, row)
                session.store.set(f"done/{self.index}", "1")
        else:
            self._wait_for_end(size)

    def _wait_for_end(self, size: int) -> None:
        """Wait (unarmed) until rank 0 marks this case done; fail if a member stops beating."""
        store, guard = self.session.store, self.session.guard
        key = f"done/{self.index}"
        beats = None
        last_change = time.monotonic()
        while not store.check([key]):
            time.sleep(WAIT_POLL_S)
            now_beats = [store.add(f"beat/{r}", 0) for r in range(size)]
            if now_beats != beats:
                beats, last_change = now_beats, time.monotonic()
            elif time.monotonic() - last_change > guard.timeout_s:
                raise Failed(f"waited for ranks 0..{size - 1} to finish; {guard.diagnose()}")


def _progress(index: int, total: int, text: str, row: dict[str, Any] | None) -> None:
    if row is None:
        return
    if row["status"] != "ok":
        figure = f"{row['status']}: {row['reason'][:160]}"
    elif row["workload"] == "comm":
        figure = (
            f"{row['time_median_s'] * 1e6:,.1f} us, algbw {row['algbw_gbps']:.3g} GB/s, "
            f"busbw {row['busbw_gbps']:.3g} GB/s"
        )
    else:
        eff = row.get("scaling_efficiency")
        figure = f"{row['items_per_s']:,.1f} {row['item_unit']}/s" + (
            f", efficiency {eff:.0%}" if eff is not None else ""
        )
    print(f"[{index}/{total}] {text}: {figure}", file=sys.stderr, flush=True)


def measure_collective(session: Session, c: CommCase, settings: Settings) -> tuple[Case, Outcome]:
    """Check, then time, one collective case on its members (every member calls this)."""
    import torch

    rank, n = session.place.rank, c.world
    count = collectives.elements(c.op, c.size_bytes, n, c.dtype)
    status, reason, error, buffers = "ok", "", None, None
    if n < collectives.min_ranks(c.op):
        status, reason = "skipped", f"{c.op} needs at least 2 ranks; this case has {n}"
    elif count == 0:
        status, reason = "skipped", f"{c.size_bytes} B holds less than one {c.dtype} per rank"
    else:
        try:
            dtype = getattr(torch, c.dtype)
            group = session.group(n)
            buffers = collectives.make_buffers(
                c.op, count, dtype, session.device, rank, n, group, c.peer
            )
            session.guard.arm("the checked call")  # filling and checking are not waits
            buffers.run()
            session.sync()
            session.guard.disarm()
            error = collectives.check(buffers)
            if error >= 1.0:
                status, reason = "incorrect", "received values differ from what was sent"
        except Failed:
            raise
        except Exception as exc:
            if _broken(exc):
                session.fail(exc)
            status, reason, buffers = failure_status(exc), one_line(exc), None
    agreed = agree(session, n, status, reason, error)
    timed: GroupTimes | None = None
    if agreed.status == "ok" and buffers is not None:
        timed = time_in_step(session, n, buffers.run, settings, "the collective")
    columns = group_columns(session, n, timed)
    if c.op == "pair" and c.peer < n:
        link = group_link(session, n, c.peer)
        columns |= {"link": link.text or None, "link_gbps": link.gbps}
    del buffers
    if session.device != "cpu":
        torch.cuda.empty_cache()
    return result(
        session,
        "comm",
        c.op,
        c.dtype,
        c.params(),
        settings,
        agreed,
        timed,
        columns | _bandwidth(c, timed),
    )


def result(
    session: Session,
    workload: str,
    variant: str,
    dtype: str,
    params: dict[str, Any],
    settings: Settings,
    agreed: Agreed,
    times: GroupTimes | None,
    columns: dict[str, Any],
    **fields: Any,
) -> tuple[Case, Outcome]:
    """The case and outcome rank 0 writes as a row (`fields`: more Outcome fields)."""
    case = Case(
        suite="comm",
        workload=workload,
        variant=variant,
        backend="torch",
        device=session.device,
        dtype=dtype,
        params=Case.make_params(params),
        settings=settings,
        nvml_index=session.members[0]["nvml_index"],
    )
    outcome = Outcome(
        status=agreed.status,
        reason=agreed.reason,
        first_call_s=times.first_call_s if times else None,
        samples_s=times.samples_s if times else (),
        calls_per_sample=times.calls_per_sample if times else 1,
        rel_error=agreed.error,
        device_name=session.members[0]["device_name"],
        threads=_threads(session),
        columns=columns,
        **fields,
    )
    return case, outcome


def _bandwidth(c: CommCase, times: GroupTimes | None) -> dict[str, Any]:
    """algbw and busbw as nccl-tests count them (none without times)."""
    if times is None or times.median_s <= 0:
        return {}
    algbw = collectives.message_bytes(c.op, c.size_bytes, c.world, c.dtype) / times.median_s
    factor = collectives.busbw_factor(c.op, c.world)
    return {"algbw_gbps": algbw / 1e9, "busbw_factor": factor, "busbw_gbps": algbw * factor / 1e9}


def _threads(session: Session) -> int | None:
    """The torch threads of a CPU rank (the node's cores shared among its ranks)."""
    if session.device != "cpu":
        return None
    import torch

    return torch.get_num_threads()


def _broken(exc: BaseException) -> bool:
    """The process group itself failed (a peer gone), not this case."""
    import torch.distributed as dist

    kinds = tuple(
        k
        for k in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistBackendError", None))
        if k
    )
    text = str(exc).lower()
    return isinstance(exc, kinds) or "connection" in text or "timed out" in text


# --- the command --------------------------------------------------------------------------------


def collective_cases(args: argparse.Namespace, session: Session) -> list[CommCase]:
    ops = _names(args.ops, collectives.OPS, "--ops")
    dtypes = _names(args.dtypes, collectives.DTYPES, "--dtypes")
    sizes = parse_sizes(args.sizes)
    world = session.place.world_size
    cases = []
    for n in world_sizes(args.world_sizes, world, "--world-sizes", [world]):
        for op in ops:
            # a world of one still gets pair rows (skipped, saying why), with a peer it lacks
            peers = (pair_peers(n, session.members) or [1]) if op == "pair" else [0]
            for dtype in dtypes:
                for peer in peers:
                    cases += [CommCase(op, s, dtype, n, peer) for s in sizes]
    return cases


def ddp_cases(args: argparse.Namespace, session: Session) -> list[DdpCase]:
    if args.ddp_models == "none":
        return []
    models = _names(args.ddp_models, spec.MODELS, "--ddp-models")
    gpu = session.device != "cpu"
    dtype = args.ddp_dtype or ("bfloat16" if gpu else "float32")
    world = session.place.world_size
    sizes = world_sizes(args.ddp_world_sizes, world, "--ddp-world-sizes", powers_of_two(world))
    shapes = DDP_GPU if gpu else DDP_CPU
    cases = []
    for model in models:
        shape = dict(shapes[model])
        if args.ddp_batch is not None:
            shape["batch"] = args.ddp_batch
        params = {"model": model, "size": args.ddp_size, **shape}
        params |= {"optimizer": "adamw", "checkpointing": False}
        cases += [DdpCase(model, params, dtype, n) for n in sizes]
    return cases


def validate(args: argparse.Namespace, world: int) -> None:
    """Every argument check, before the ranks meet: each rank refuses bad input on its own, with
    one line and status 2, and no process group is left waiting."""
    if not 1 <= args.timeout <= 86400:
        raise UserError(f"--timeout: {args.timeout} is out of range [1, 86400] seconds")
    if args.time_budget is not None and not 0.001 <= args.time_budget <= 3600:
        raise UserError(f"--time-budget: {args.time_budget} is out of range [0.001, 3600]")
    if args.device not in ("auto", "gpu", "cpu"):
        raise UserError(f"--device: unknown {args.device!r}; valid: auto, gpu, cpu")
    parts = _names(args.parts, PARTS, "--parts")
    if "collectives" in parts:
        _names(args.ops, collectives.OPS, "--ops")
        _names(args.dtypes, collectives.DTYPES, "--dtypes")
        parse_sizes(args.sizes)
        world_sizes(args.world_sizes, world, "--world-sizes", [world])
    if "ddp" in parts and args.ddp_models != "none":
        _names(args.ddp_models, spec.MODELS, "--ddp-models")
        if args.ddp_dtype is not None and args.ddp_dtype not in spec.TRAIN_DTYPES:
            valid = ", ".join(spec.TRAIN_DTYPES)
            raise UserError(f"--ddp-dtype: unknown {args.ddp_dtype!r}; valid: {valid}")
        if args.ddp_size not in spec.SIZES:
            valid = ", ".join(spec.SIZES)
            raise UserError(f"--ddp-size: unknown {args.ddp_size!r}; valid: {valid}")
        if args.ddp_batch is not None and args.ddp_batch < 1:
            raise UserError(f"--ddp-batch: {args.ddp_batch} is not a positive batch")
        world_sizes(args.ddp_world_sizes, world, "--ddp-world-sizes", [world])


def device_kind(requested: str) -> str:
    import torch

    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        raise UserError("bench comm --device gpu: torch sees no CUDA GPU here")
    return "gpu" if requested == "gpu" or (requested == "auto" and has_gpu) else "cpu"


def main(args: argparse.Namespace) -> int:
    place: Place = place_from_env()
    validate(args, place.world_size)
    recorder: Recorder | None = None

    def note() -> str:
        return recorder.note() if recorder else "no case had finished"

    try:
        session = Session.start(place, device_kind(args.device), args.timeout)
        recorder = Recorder(session, args, args.argv)
        session.guard.on_fail = lambda message: exit_failed(
            f"rank {place.rank}: {message}; {note()}"
        )
        on_sigterm(
            lambda: (
                f"rank {place.rank}: stopped by SIGTERM (torchrun stops every rank once one "
                f"fails); {note()}"
            )
        )
        _run(args, session, recorder)
    except Failed as exc:
        exit_failed(f"rank {place.rank}: {exc}; {note()}")
    except KeyboardInterrupt:
        exit_failed(f"rank {place.rank}: interrupted; {note()}", 130)
    except UserError:
        raise
    except Exception as exc:  # a bug or a broken framework: one line, the rows kept
        exit_failed(f"rank {place.rank}: unexpected {one_line(exc)}; {note()}")
    session.close()
    if place.rank == 0 and recorder is not None:
        print(f"{recorder.count} cases -> {recorder.path}")
    return 0


def _run(args: argparse.Namespace, session: Session, recorder: Recorder) -> None:
    """Every case of the plan, in order, then a barrier so no rank leaves early."""
    parts = _names(args.parts, PARTS, "--parts")
    comm = collective_cases(args, session) if "collectives" in parts else []
    ddp = ddp_cases(args, session) if "ddp" in parts else []
    session.make_groups([c.world for c in comm] + [c.world for c in ddp])
    total = len(comm) + len(ddp)
    if session.place.rank == 0:
        head = f"bench comm: {_world_text(session)}; {total} cases -> {recorder.path}"
        print(head, file=sys.stderr, flush=True)
    runner = Runner(session, recorder, total)
    settings = _settings(SETTINGS, args.time_budget)
    for c in comm:
        runner.run(c.world, c.text(), lambda c=c: measure_collective(session, c, settings))
    if ddp:
        from bench.dist.ddp import measure_ddp

        ddp_settings = _settings(DDP_SETTINGS, args.time_budget)
        for d in ddp:
            runner.run(d.world, d.text(), lambda d=d: measure_ddp(session, d, ddp_settings))
    session.guard.arm("the final barrier")
    session.barrier(session.group(session.place.world_size))
    session.guard.disarm()


def _settings(base: Settings, budget_s: float | None) -> Settings:
    if budget_s is None:
        return base
    from dataclasses import replace

    return replace(base, time_budget_s=budget_s)
