"""One rank of a `bench comm` run: where it sits in the world, its process group, and the guard.

torchrun starts the ranks and tells each where it is through the environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE, MASTER_ADDR, MASTER_PORT); run
without torchrun, `bench comm` is a world of one. The ranks meet in torchrun's key-value store
(the agent's, which outlives any one rank) and build the process group on it: NCCL on GPUs,
Gloo on the CPU.

The guard bounds every wait on other ranks. Before each case a rank writes where it is into the
store (`at/<rank>`), and a thread of its own bumps a heartbeat counter (`beat/<rank>`) every
second. Every blocking step arms a deadline (`--timeout`); a rank whose step outlives it, or
whose collective fails outright (a peer's socket closed), reads the store and says which rank it
is waiting for: one whose heartbeat stopped (it died, was killed or is stopped), or one that is
alive but has not reached this case. It prints that on one line and exits with status 1; the
process group's own timeout is set later than the guard's, so the guard speaks first. torchrun
then stops the remaining ranks. Results already written stay: rank 0 rewrites its file after
every case.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from bench.errors import UserError
from bench.worker import one_line

# The process group's own timeout is this much later than the guard's, so the guard, which names
# the missing rank, fires first; NCCL's watchdog or Gloo's error is the backstop.
GROUP_TIMEOUT_MARGIN_S = 30.0
BEAT_INTERVAL_S = 1.0
POLL_S = 0.2
# How long a diagnosing rank watches the heartbeats: over two beats of a live rank.
DIAGNOSE_WATCH_S = 2.5
STORE_TIMEOUT_S = 10.0
EXIT_FAILED = 1


@dataclass(frozen=True)
class Place:
    """Where this rank sits: its global and local rank, its node, and where the ranks meet."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    nodes: int
    host: str
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent hosts the store (it outlives every rank)
    run_key: str  # the store's key prefix for this run and restart

    @property
    def launched(self) -> bool:
        return self.world_size > 1 or self.agent_store


def place_from_env(env: Mapping[str, str] = os.environ) -> Place:
    """The rank's place from torchrun's environment; without it, a world of one on this host."""
    host = socket.gethostname()
    if "RANK" not in env:
        return Place(0, 1, 0, 1, 0, 1, host, "127.0.0.1", _free_port(), False, "bench-comm/local/")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        node_rank = int(env.get("GROUP_RANK", rank // max(local_world, 1)))
        nodes = int(env.get("GROUP_WORLD_SIZE", max(1, world // max(local_world, 1))))
        addr, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    except (KeyError, ValueError) as exc:
        raise UserError(
            f"bench comm: torchrun's environment is incomplete or wrong ({exc}); start it with "
            "torchrun --nproc-per-node N -m bench comm"
        ) from None
    run_id = env.get("TORCHELASTIC_RUN_ID", "none")
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    return Place(
        rank,
        world,
        local_rank,
        local_world,
        node_rank,
        nodes,
        host,
        addr,
        port,
        agent,
        f"bench-comm/{run_id}/{restart}/",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _store(place: Place, is_master: bool, timeout_s: float) -> Any:
    import torch.distributed as dist

    store = dist.TCPStore(
        place.master_addr,
        place.master_port,
        place.world_size if is_master else None,
        is_master=is_master,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return dist.PrefixStore(place.run_key, store)


class Failed(Exception):
    """The run cannot go on: a rank is missing or a collective failed (the message says which)."""


class Guard:
    """The deadline on every wait for other ranks, the heartbeat, and the diagnosis (see the
    module docstring). `arm(what)` starts a wait of at most the timeout (one collective call, one
    training step, one sample of a few calls); `disarm()` ends it. Work a rank does alone (filling
    or checking buffers, building a model) is not armed: it is not a wait."""

    def __init__(
        self, place: Place, timeout_s: float, members: Callable[[], list[dict[str, Any]]]
    ) -> None:
        self.place = place
        self.timeout_s = timeout_s
        self._members = members
        self._deadline: float | None = None
        self._what = ""
        self._case = "start-up"
        self.on_fail: Callable[[str], None] = lambda m: exit_failed(f"rank {place.rank}: {m}")
        self._stop = threading.Event()
        # Two threads: one only beats, so a rank that is diagnosing (or busy) still looks alive.
        self._threads = [
            threading.Thread(target=self._beat, name="bench-comm-beat", daemon=True),
            threading.Thread(target=self._watch, name="bench-comm-guard", daemon=True),
        ]

    def start(self, store: Any) -> None:
        store.set(f"at/{self.place.rank}", f"0\t{self._case}")
        for thread in self._threads:
            thread.start()

    def case(self, store: Any, index: int, text: str) -> None:
        """This rank begins case `index` (1-based); other ranks can see it in the store."""
        self._case = f"case {index} ({text})"
        store.set(f"at/{self.place.rank}", f"{index}\t{self._case}")

    def arm(self, what: str) -> None:
        self._what = what
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def what(self) -> str:
        """The step this rank is in (or was last in)."""
        return self._what

    @property
    def where(self) -> str:
        """The case this rank is in."""
        return self._case

    def disarm(self) -> None:
        self._deadline = None

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        store = None
        while not self._stop.wait(BEAT_INTERVAL_S):
            try:
                store = store or _store(self.place, is_master=False, timeout_s=STORE_TIMEOUT_S)
                store.add(f"beat/{self.place.rank}", 1)
            except Exception:  # the store is gone: a diagnosis will say so when it matters
                store = None

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                waited = f"waited {self.timeout_s:g} s for the other ranks in {self._case}"
                self.on_fail(f"{waited}, {self._what}; {self.diagnose()}")
                return

    def diagnose(self) -> str:
        """Which ranks this one is waiting for, and why, from the store."""
        try:
            store = _store(self.place, is_master=False, timeout_s=STORE_TIMEOUT_S)
            ranks = range(self.place.world_size)
            before = [store.add(f"beat/{r}", 0) for r in ranks]
            time.sleep(DIAGNOSE_WATCH_S)
            after = [store.add(f"beat/{r}", 0) for r in ranks]
            at = [self._at(store, r) for r in ranks]
        except Exception as exc:
            where = f"{self.place.master_addr}:{self.place.master_port}"
            return (
                f"the ranks' key-value store at {where} does not answer ({one_line(exc)}): "
                "the launcher or rank 0 is gone"
            )
        mine = at[self.place.rank][0]
        members = {m["rank"]: m for m in self._members()}
        faults = []
        for r in ranks:
            if r == self.place.rank:
                continue
            name = _rank_name(r, members.get(r))
            if after[r] == before[r]:
                faults.append(
                    f"{name} stopped responding (it died, was killed or is stopped) at {at[r][1]}"
                )
            elif at[r][0] < mine:
                faults.append(f"{name} is alive but still at {at[r][1]}")
        if faults:
            return "; ".join(faults)
        return (
            "every rank is alive and at this case: the collective itself did not finish (a slow "
            "or broken link, or a rank failing inside it: see the other ranks' errors)"
        )

    @staticmethod
    def _at(store: Any, rank: int) -> tuple[int, str]:
        if not store.check([f"at/{rank}"]):
            return -1, "start-up (it never joined)"
        index, text = store.get(f"at/{rank}").decode().split("\t", 1)
        return int(index), text


def _rank_name(rank: int, member: dict[str, Any] | None) -> str:
    if member is None:
        return f"rank {rank}"
    return f"rank {rank} (host {member['host']}, local rank {member['local_rank']})"


def exit_failed(message: str, status: int = EXIT_FAILED) -> None:
    """Print the one-line error and end this rank at once (not sys.exit: NCCL's teardown can
    itself hang on a dead peer)."""
    print(f"bench comm: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def on_sigterm(message: Callable[[], str]) -> None:
    """On SIGTERM (torchrun stops every rank once one fails), print `message()` and end."""

    def handler(signum: int, frame: Any) -> None:
        exit_failed(message(), 128 + signum)

    signal.signal(signal.SIGTERM, handler)


class Session:
    """This rank's process group and guard; built by `Session.start`."""

    def __init__(self, place: Place, device: str, backend: str, timeout_s: float) -> None:
        self.place = place
        self.device = device
        self.backend = backend
        self.members: list[dict[str, Any]] = []
        self.guard = Guard(place, timeout_s, lambda: self.members)
        self.store: Any = None
        self._groups: dict[int, Any] = {}

    @classmethod
    def start(cls, place: Place, device_kind: str, timeout_s: float) -> Session:
        """Choose the device and backend, meet the other ranks, and build the process group."""
        import torch
        import torch.distributed as dist

        if device_kind == "gpu":
            count = torch.cuda.device_count()
            if place.local_rank >= count:
                raise UserError(
                    f"bench comm: {place.local_world_size} ranks on this node but "
                    f"{count} GPU(s) visible to torch: one rank per GPU (or --device cpu, Gloo)"
                )
            torch.cuda.set_device(place.local_rank)
            session = cls(place, f"cuda:{place.local_rank}", "nccl", timeout_s)
        else:
            from bench.backends.base import usable_cores

            # torchrun sets OMP_NUM_THREADS=1; the node's cores are shared among its ranks.
            torch.set_num_threads(max(1, usable_cores() // place.local_world_size))
            session = cls(place, "cpu", "gloo", timeout_s)
        session.store = _store(place, place.rank == 0 and not place.agent_store, timeout_s)
        session.guard.start(session.store)
        session.guard.arm("joining the process group")
        group_timeout = timedelta(seconds=timeout_s + GROUP_TIMEOUT_MARGIN_S)
        kwargs: dict[str, Any] = {}
        if (
            session.backend == "nccl"
            and "device_id" in inspect.signature(dist.init_process_group).parameters
        ):  # torch 2.3+: bind the GPU at once (NCCL's communicator starts eagerly)
            kwargs["device_id"] = torch.device(session.device)
        try:
            dist.init_process_group(
                session.backend,
                store=dist.PrefixStore("pg/", session.store),
                rank=place.rank,
                world_size=place.world_size,
                timeout=group_timeout,
                **kwargs,
            )
            mine = {
                "rank": place.rank,
                "host": place.host,
                "node": place.node_rank,
                "local_rank": place.local_rank,
                "device": session.device,
                "device_name": _device_name(session.device),
                "nvml_index": _nvml_index(session.device),
            }
            members: list[Any] = [None] * place.world_size
            dist.all_gather_object(members, mine)
        except Exception as exc:
            session.fail(exc)
        session.members = members
        session.guard.disarm()
        return session

    # --- groups and agreement ----------------------------------------------------------------

    def make_groups(self, sizes: list[int]) -> None:
        """Process groups of ranks 0..n-1 for each size n (every rank must call this, in step)."""
        import torch.distributed as dist

        self.guard.arm("creating process groups")
        for size in sorted(set(sizes)):
            if size == self.place.world_size:
                self._groups[size] = dist.group.WORLD
            elif size not in self._groups:
                self._groups[size] = dist.new_group(list(range(size)))
        self.guard.disarm()

    def group(self, size: int) -> Any:
        return self._groups[size]

    def member_of(self, size: int) -> bool:
        return self.place.rank < size

    def members_of(self, size: int) -> list[dict[str, Any]]:
        return [m for m in self.members if m["rank"] < size]

    def agree_max(self, values: list[float], group: Any) -> list[float]:
        """The largest of each value over the group's ranks (every member must call it)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
        return [float(v) for v in tensor.cpu()]

    def gather_floats(self, values: list[float], group: Any, size: int) -> np.ndarray:
        """Every member's `values` (all of one length) as a (size, len) array, on every member."""
        import torch
        import torch.distributed as dist

        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = torch.empty(size * len(values), dtype=torch.float64, device=self.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, mine, group=group)
        return out.cpu().numpy().reshape(size, len(values))

    def barrier(self, group: Any) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(group=group, device_ids=[self.place.local_rank])
        else:
            dist.barrier(group=group)

    def sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    # --- failure ---------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """A collective failed outright: say which rank is missing, then end this rank."""
        where = f"{self.guard.where}, {self.guard.what}"
        raise Failed(f"{where} failed ({one_line(exc)}); {self.guard.diagnose()}") from None

    def close(self) -> None:
        import torch.distributed as dist

        self.guard.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def _device_name(device: str) -> str:
    if device == "cpu":
        from bench.backends.base import cpu_model

        return cpu_model()
    import torch

    return str(torch.cuda.get_device_name(device))


def _nvml_index(device: str) -> int | None:
    if device == "cpu":
        return None
    from bench import nvml

    index = int(device.removeprefix("cuda:"))
    gpus, _ = nvml.list_gpus()
    return next((g.nvml_index for g in gpus if g.index == index), None)

