"""bench.dist.session in one process: torchrun's environment, and the guard's diagnosis read from
a real TCPStore that stands in for torchrun's (other ranks' progress and heartbeats written into
it by hand)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch.distributed as dist

from bench.dist import session as session_module
from bench.dist.session import Guard, Place, place_from_env
from bench.errors import UserError

TORCHRUN_ENV = {
    "RANK": "5",
    "WORLD_SIZE": "16",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "4",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "job7",
    "TORCHELASTIC_RESTART_COUNT": "2",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
}


def test_place_from_torchruns_environment() -> None:
    place = place_from_env(TORCHRUN_ENV)
    assert (place.rank, place.world_size, place.local_rank, place.local_world_size) == (5, 16, 1, 4)
    assert (place.node_rank, place.nodes) == (1, 4)
    assert (place.master_addr, place.master_port, place.agent_store) == ("node0", 29500, True)
    assert place.run_key == "bench-comm/job7/2/"  # a restart never reads an earlier attempt's keys


def test_without_torchrun_it_is_a_world_of_one() -> None:
    place = place_from_env({})
    assert (place.rank, place.world_size, place.nodes, place.agent_store) == (0, 1, 1, False)
    assert place.master_addr == "127.0.0.1" and place.master_port > 0


@pytest.mark.parametrize("broken", [{"WORLD_SIZE": "many"}, {"MASTER_PORT": None}])
def test_a_broken_environment_is_a_user_error(broken: dict[str, str | None]) -> None:
    env = {k: v for k, v in (TORCHRUN_ENV | broken).items() if v is not None}
    with pytest.raises(UserError, match="torchrun --nproc-per-node"):
        place_from_env(env)


# --- the guard's diagnosis ----------------------------------------------------------------------


@pytest.fixture
def world() -> Iterator[tuple[Place, Any]]:
    """Rank 0 of a world of 3, and the (prefixed) store the ranks meet in."""
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    place = dataclasses.replace(
        place_from_env({}), world_size=3, master_port=store.port, run_key="t/"
    )
    yield place, dist.PrefixStore("t/", store)


MEMBERS = [{"rank": r, "host": f"h{r}", "local_rank": r} for r in range(3)]


def _beating(store: Any, rank: int, stop: threading.Event) -> threading.Thread:
    def beat() -> None:
        while not stop.wait(0.3):
            store.add(f"beat/{rank}", 1)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


@pytest.fixture(autouse=True)
def short_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "DIAGNOSE_WATCH_S", 1.0)


def test_the_diagnosis_names_a_dead_rank_and_one_that_is_behind(world: tuple[Place, Any]) -> None:
    place, store = world
    guard = Guard(place, timeout_s=5, members=lambda: MEMBERS)
    guard.case(store, 7, "all_reduce 1 MiB")
    store.set("at/1", "6\tcase 6 (all_gather 1 MiB)")  # alive, one case behind
    store.set("at/2", "7\tcase 7 (all_reduce 1 MiB)")  # at this case, but its beat is still
    stop = threading.Event()
    _beating(store, 1, stop)
    try:
        text = guard.diagnose()
    finally:
        stop.set()
    assert "rank 1 (host h1, local rank 1) is alive but still at case 6 (all_gather 1 MiB)" in text
    assert "rank 2 (host h2, local rank 2) stopped responding" in text
    assert "rank 0" not in text  # never itself


def test_a_rank_that_never_joined_is_named(world: tuple[Place, Any]) -> None:
    place, store = world
    guard = Guard(place, timeout_s=5, members=lambda: [])
    guard.case(store, 1, "x")
    stop = threading.Event()
    _beating(store, 1, stop)
    store.set("at/1", "1\tcase 1 (x)")
    try:
        text = guard.diagnose()
    finally:
        stop.set()
    dead = "stopped responding (it died, was killed or is stopped)"
    assert text == f"rank 2 {dead} at start-up (it never joined)"


def test_when_every_rank_is_alive_and_here_the_collective_is_blamed(
    world: tuple[Place, Any],
) -> None:
    place, store = world
    guard = Guard(place, timeout_s=5, members=lambda: MEMBERS)
    guard.case(store, 3, "x")
    stop = threading.Event()
    for rank in (1, 2):
        store.set(f"at/{rank}", "3\tcase 3 (x)")
        _beating(store, rank, stop)
    try:
        text = guard.diagnose()
    finally:
        stop.set()
    assert text.startswith("every rank is alive and at this case")


def test_a_store_that_is_gone_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "STORE_TIMEOUT_S", 1.0)
    place = dataclasses.replace(place_from_env({}), world_size=2)  # a port nobody listens on
    guard = Guard(place, timeout_s=5, members=lambda: [])
    started = time.monotonic()
    text = guard.diagnose()
    assert "does not answer" in text and "the launcher or rank 0 is gone" in text
    assert time.monotonic() - started < 10  # bounded by the store's own timeout


def test_the_watch_fires_once_after_the_timeout(world: tuple[Place, Any]) -> None:
    place, store = world
    guard = Guard(place, timeout_s=1, members=lambda: MEMBERS)
    failures: list[str] = []
    guard.on_fail = failures.append
    for rank in (1, 2):
        store.set(f"at/{rank}", "1\tcase 1 (x)")
    guard.start(store)
    guard.case(store, 1, "x")
    guard.arm("the collective")
    deadline = time.monotonic() + 15
    while not failures and time.monotonic() < deadline:
        time.sleep(0.1)
    guard.stop()
    assert len(failures) == 1
    assert failures[0].startswith("waited 1 s for the other ranks in case 1 (x), the collective;")
    assert "rank 1" in failures[0] and "rank 2" in failures[0]  # neither beats here


def test_a_disarmed_guard_never_fires(world: tuple[Place, Any]) -> None:
    place, store = world
    guard = Guard(place, timeout_s=0.2, members=lambda: MEMBERS)
    failures: list[str] = []
    guard.on_fail = failures.append
    guard.start(store)
    guard.arm("a wait")
    guard.disarm()
    time.sleep(1.0)
    guard.stop()
    assert failures == []
