"""The rows `bench comm` writes, as workloads: `comm` (collectives) and `ddp` (data-parallel
training). They count bytes, FLOPs and items like every workload, so their rows go through
bench.results.make_row, but they run only under torchrun (bench.dist), never in a suite.

comm's params: op, bytes (S, as asked), world_size, and peer for `pair`; bytes counts S as
measured (bench.dist.collectives.message_bytes), nccl-tests' convention. ddp's params: the train
workload's (model, size, batch per rank, seq or image, optimizer, checkpointing) and world_size;
FLOPs and items are the whole group's (world_size × one rank's), bytes one rank's.
"""

from __future__ import annotations

from typing import Any

from bench.backends.base import Unsupported
from bench.dist.collectives import DTYPES, message_bytes
from bench.errors import UserError
from bench.models import spec
from bench.workloads import train
from bench.workloads.base import Prepared, Workload

COMM_CONVENTION = "message size S (nccl-tests): algbw = S / t, busbw = algbw × busbw_factor"


LAUNCHER = "bench comm, under torchrun (make bench-dist NPROC=N)"


def _parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Never reached from a suite (bench.suite refuses workloads with a launcher first)."""
    raise UserError(f"{where}: runs only under {LAUNCHER}, not in a suite")


def _setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    raise Unsupported("runs under torchrun: bench comm")


def comm_bytes(p: dict[str, Any], dtype: str) -> int:
    return message_bytes(p["op"], p["bytes"], p["world_size"], dtype)


def ddp_flops(p: dict[str, Any]) -> int:
    return p["world_size"] * train.flops(p)


def ddp_items(p: dict[str, Any]) -> tuple[int, str]:
    count, unit = train.items(p)
    return p["world_size"] * count, unit


COMM = Workload(
    name="comm",
    description="collectives and send/recv between ranks (bench comm, under torchrun)",
    parse=_parse,
    flops=lambda p: 0,
    bytes=comm_bytes,
    setup=_setup,
    keys={},
    backends=("torch",),
    dtypes=DTYPES,
    bytes_convention=lambda p: COMM_CONVENTION,
    launcher=LAUNCHER,
)

DDP = Workload(
    name="ddp",
    description="training steps under DistributedDataParallel at several world sizes (bench comm)",
    parse=_parse,
    flops=ddp_flops,
    bytes=train.bytes_moved,
    setup=_setup,
    keys={},
    items=ddp_items,
    memory_estimate=train.memory_estimate,
    backends=("torch",),
    dtypes=spec.TRAIN_DTYPES,
    launcher=LAUNCHER,
)
WORKLOADS = (COMM, DDP)
