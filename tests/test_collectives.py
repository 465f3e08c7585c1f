"""bench.dist.collectives and bench.workloads.dist, in one process: bus-bandwidth factors,
message sizes, the check's expected values, and the check itself on CPU tensors that hold what
each rank of an n-rank collective receives (computed here from every rank's inputs, without a
process group), correct and corrupted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import suite as suites
from bench.dist import collectives
from bench.dist.collectives import (
    DTYPES,
    ITEM_BYTES,
    OPS,
    REDUCING_OPS,
    SPLIT_OPS,
    Buffers,
    busbw_factor,
    check,
    elements,
    make_buffers,
    message_bytes,
    move_value,
    reduce_sum,
    reduce_value,
)
from bench.errors import UserError
from bench.workloads import WORKLOADS, dist, train

TORCH_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "int8": torch.int8,
}
FLOAT_DTYPES = tuple(d for d in DTYPES if d != "int8")
MOVING_OPS = tuple(op for op in OPS if op not in REDUCING_OPS)

# nccl-tests' bus-bandwidth factors (src/*.cu, "getBw"), written out independently of the code.
NCCL_TESTS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "sendrecv": lambda n: 1.0,
    "pair": lambda n: 1.0,
}


# --- bus bandwidth ------------------------------------------------------------------------------


def test_every_op_has_a_factor() -> None:
    assert set(OPS) == set(NCCL_TESTS_FACTOR)


@pytest.mark.parametrize("op", OPS)
def test_busbw_factor_is_nccl_tests(op: str) -> None:
    for n in range(1, 65):
        assert busbw_factor(op, n) == pytest.approx(NCCL_TESTS_FACTOR[op](n), rel=1e-12, abs=0)


@pytest.mark.parametrize("op", ["reduce", "allreduce", "all-reduce", "", "ALL_REDUCE"])
def test_busbw_factor_refuses_an_unknown_op(op: str) -> None:
    with pytest.raises(ValueError, match="unknown collective"):
        busbw_factor(op, 8)


def test_busbw_by_hand() -> None:
    # 8 ranks all-reduce 1 GiB in 10 ms: algbw = 2^30 B / 0.010 s = 107.37 GB/s;
    # busbw = algbw × 2·7/8 = 187.9 GB/s (what each rank's link carried).
    size_bytes = message_bytes("all_reduce", 1 << 30, 8, "float32")
    assert size_bytes == 1 << 30
    algbw_gbps = size_bytes / 0.010 / 1e9
    assert round(algbw_gbps, 2) == 107.37
    assert round(algbw_gbps * busbw_factor("all_reduce", 8), 1) == 187.9


# --- message sizes ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(OPS),
    size_bytes=st.integers(min_value=0, max_value=1 << 31),
    n=st.integers(min_value=1, max_value=1024),
    dtype=st.sampled_from(DTYPES),
)
def test_message_is_whole_elements_split_evenly(
    op: str, size_bytes: int, n: int, dtype: str
) -> None:
    item = ITEM_BYTES[dtype]
    count = elements(op, size_bytes, n, dtype)
    measured = message_bytes(op, size_bytes, n, dtype)
    assert measured == count * item <= size_bytes
    if op in SPLIT_OPS:
        assert count % n == 0
        assert measured > size_bytes - n * item
        assert (count == 0) == (size_bytes < n * item)
    else:
        assert count == size_bytes // item
        assert measured > size_bytes - item


@pytest.mark.parametrize(
    ("op", "size_bytes", "n", "dtype", "want_bytes"),
    [
        ("all_gather", 1024, 3, "float32", 1020),  # 256 elements -> 255, 85 per rank
        ("all_to_all", 1024, 8, "float64", 1024),
        ("reduce_scatter", 1024, 1000, "bfloat16", 0),  # 512 elements: not one per rank
        ("all_reduce", 1023, 1000, "float32", 1020),  # not split: only whole elements
        ("sendrecv", 1, 2, "int8", 1),
        ("pair", 7, 2, "float64", 0),
    ],
)
def test_message_bytes_examples(
    op: str, size_bytes: int, n: int, dtype: str, want_bytes: int
) -> None:
    assert message_bytes(op, size_bytes, n, dtype) == want_bytes


# --- the values a check puts in and expects -----------------------------------------------------

INDICES = np.concatenate([np.arange(0, 40), (1 << 40) + np.arange(0, 7), [12345, 999_999_937]])


def test_reduce_sum_is_the_sum_over_ranks() -> None:
    # By brute force, for every rank count: the sum is 2 + i mod 101, whatever n.
    want = 2 + INDICES % 101
    assert np.array_equal(reduce_sum(INDICES), want)
    for n in range(1, 301):
        brute = sum(reduce_value(q, INDICES, n) for q in range(n))
        assert np.array_equal(brute, want), n


def test_reduce_sum_on_torch_indices() -> None:
    # make_buffers and check call both on torch.arange, as on a device.
    index = torch.arange(0, 500)
    for n in (1, 2, 3, 7, 101, 300):
        total = torch.stack([reduce_value(q, index, n) for q in range(n)]).sum(dim=0)
        assert torch.equal(total, reduce_sum(index)), n
        assert torch.equal(reduce_sum(index), 2 + index % 101)


@pytest.mark.parametrize("shape", [(0,), (1,), (49,), (3, 4), (2, 3, 5)])
def test_reduce_sum_has_the_shape_of_its_index(shape: tuple[int, ...]) -> None:
    index = np.arange(math.prod(shape)).reshape(shape)
    assert np.shape(reduce_sum(index)) == shape
    assert tuple(reduce_sum(torch.from_numpy(index)).shape) == shape


def test_every_value_fits_every_dtype_exactly() -> None:
    # Reduce inputs 0..102 and sums 2..102, move values 0..100: int8 holds up to 127, bfloat16
    # every integer up to 256, so no input, partial sum or total is rounded or wraps.
    index = np.arange(0, 1000)
    for n in range(1, 301):
        reduced = np.stack([reduce_value(rank, index, n) for rank in range(n)])
        assert reduced.min() >= 0 and reduced.max() <= 102, n
        # inputs are never negative, so every partial sum, in any order, is at most the total
        assert (np.cumsum(reduced, axis=0) <= reduce_sum(index)).all(), n
        if n > 1:
            # two ranks send a non-zero value at every position: leaving out either changes the
            # sum, and a max (or a min, a product) differs from it
            assert ((reduced > 0).sum(axis=0) == 2).all(), n
            assert (reduced.max(axis=0) < reduce_sum(index)).all(), n
    assert np.array_equal(reduce_value(0, index, 1), reduce_sum(index))  # one rank sends the sum
    assert (reduce_sum(index).min(), reduce_sum(index).max()) == (2, 102)
    moved = np.stack([move_value(rank, index) for rank in range(300)])
    assert (moved.min(), moved.max()) == (0, 100)
    for dtype in TORCH_DTYPES.values():
        every = torch.arange(0, 103)
        assert torch.equal(every.to(dtype).to(torch.int64), every), dtype


def test_move_values_tell_up_to_101_ranks_apart() -> None:
    # Rank q's values differ from rank q''s at every position, so a chunk from the wrong rank
    # shows wherever it lands.
    index = np.arange(0, 101)
    values = np.stack([move_value(q, index) for q in range(101)])
    for q in range(101):
        assert (values[q + 1 :] != values[q]).all()


# --- the buffers, without a process group -------------------------------------------------------


def _count(op: str, n: int, chunk: int) -> int:
    return chunk * n if op in SPLIT_OPS else chunk


def _buffers(op: str, n: int, chunk: int, dtype: str, peer: int = 1) -> list[Buffers]:
    """Every rank's Buffers, as make_buffers fills them; group=None is fine while .run is not
    called."""
    count = _count(op, n, chunk)
    return [make_buffers(op, count, TORCH_DTYPES[dtype], "cpu", r, n, None, peer) for r in range(n)]


def _sum_in_order(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A reduction in the tensors' own dtype, one rank after the other."""
    total = tensors[0].clone()
    for tensor in tensors[1:]:
        total = total + tensor
    return total


def _receive(
    op: str, rank: int, n: int, chunk: int, sends: list[torch.Tensor], peer: int
) -> torch.Tensor | None:
    """What `rank` receives in a correct run of `op`, from every rank's input (None: nothing)."""
    part = slice(rank * chunk, (rank + 1) * chunk)
    if op == "all_reduce":
        return _sum_in_order(sends)
    if op == "reduce_scatter":
        return _sum_in_order(sends)[part]
    if op == "broadcast":
        return sends[0]
    if op == "all_gather":
        return torch.cat(sends)
    if op == "all_to_all":
        return torch.cat([send[part] for send in sends])
    if op == "sendrecv":
        return sends[(rank - 1) % n]
    assert op == "pair"
    return sends[0] if rank == peer else None


def _simulate(op: str, n: int, chunk: int, dtype: str, peer: int = 1) -> list[Buffers]:
    """Every rank's Buffers after a correct run of `op` on n ranks."""
    ranks = _buffers(op, n, chunk, dtype, peer)
    sends = [b.send.clone() for b in ranks]  # all_reduce and broadcast work in place
    for rank, buffers in enumerate(ranks):
        received = _receive(op, rank, n, chunk, sends, peer)
        if received is not None:
            buffers.recv.copy_(received)
    return ranks


def _checks(ranks: list[Buffers]) -> list[float]:
    return [check(b) for b in ranks]


def _receivers(ranks: list[Buffers]) -> list[Buffers]:
    return [b for b in ranks if b.expected is not None]


@pytest.mark.parametrize("op", OPS)
def test_buffer_shapes_and_inputs(op: str) -> None:
    n, chunk = 5, 4
    count = _count(op, n, chunk)
    for rank, buffers in enumerate(_buffers(op, n, chunk, "float32", peer=2)):
        assert buffers.send.shape == ((chunk,) if op == "all_gather" else (count,))
        index = np.arange(buffers.send.numel())
        split = chunk if op == "reduce_scatter" else 0
        want = (
            reduce_value(rank, index, n, split) if op in REDUCING_OPS else move_value(rank, index)
        )
        assert buffers.send.numpy().tolist() == want.tolist()
        if op in ("all_reduce", "broadcast"):
            assert buffers.recv is buffers.send  # in place
        else:
            assert buffers.recv.shape == ((chunk,) if op == "reduce_scatter" else (count,))
            assert (buffers.recv == -1).all()  # what a collective fails to write stands out


def test_pair_checks_only_the_peer() -> None:
    ranks = _buffers("pair", 4, 3, "float32", peer=2)
    assert [b.expected is not None for b in ranks] == [False, False, True, False]
    # The sender and the bystanders have nothing to check, whatever their buffers hold.
    assert _checks(ranks) == [0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("op", "n", "chunk"),
    [
        ("all_reduce", 3, 1000),
        ("reduce_scatter", 4, 250),
        ("all_gather", 3, 217),
        ("all_to_all", 2, 101),
    ],
)
def test_periodic_filling_matches_the_formula_element_by_element(
    op: str, n: int, chunk: int
) -> None:
    """Buffers are filled a period at a time (tails and segments included); every element must
    still be the formula's value at its index."""
    for rank, buffers in enumerate(_buffers(op, n, chunk, "float32")):
        index = np.arange(buffers.send.numel())
        split = chunk if op == "reduce_scatter" else 0
        want = (
            reduce_value(rank, index, n, split) if op in REDUCING_OPS else move_value(rank, index)
        )
        assert buffers.send.numpy().tolist() == want.tolist()


@pytest.mark.parametrize("position", [0, 150, -1])  # the first period, a middle one, the tail
def test_a_wrong_value_anywhere_is_caught(position: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collectives, "DIRECT_MAX_ELEMENTS", 0)  # compared a period at a time
    ranks = _simulate("all_to_all", 4, 250, "float32")
    assert _checks(ranks) == [0.0] * 4
    ranks[2].recv[position] += 1
    assert _checks(ranks) == [0.0, 0.0, 1.0, 0.0]


def test_fill_and_check_agree_on_any_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collectives, "DIRECT_MAX_ELEMENTS", 0)
    pattern = collectives.Pattern(lambda i: (i % 7) + 3 * (i // 10), period=7, segment=10)
    tensor = collectives.fill(torch.empty(95), pattern)
    index = torch.arange(95)
    assert torch.equal(tensor, ((index % 7) + 3 * (index // 10)).float())


# --- the check on correct and corrupted data (the exact regime) ---------------------------------


@st.composite
def cases(draw: st.DrawFn, ops: tuple[str, ...] = OPS, min_chunk: int = 1) -> tuple[Any, ...]:
    """(op, n, chunk, dtype, peer): up to 12 ranks."""
    op = draw(st.sampled_from(ops))
    low = 2 if op in ("sendrecv", "pair") else 1
    n = draw(st.integers(min_value=low, max_value=12))
    chunk = draw(st.integers(min_value=min_chunk, max_value=7))
    dtype = draw(st.sampled_from(DTYPES))
    peer = draw(st.integers(min_value=1, max_value=n - 1)) if op == "pair" else 1
    return op, n, chunk, dtype, peer


@settings(max_examples=80, deadline=None)
@given(case=cases())
def test_correct_data_checks_exact(case: tuple[Any, ...]) -> None:
    op, n, chunk, dtype, peer = case
    assert _checks(_simulate(op, n, chunk, dtype, peer)) == [0.0] * n


@settings(max_examples=80, deadline=None)
@given(case=cases(), data=st.data())
def test_one_wrong_element_is_caught(case: tuple[Any, ...], data: st.DataObject) -> None:
    op, n, chunk, dtype, peer = case
    ranks = _simulate(op, n, chunk, dtype, peer)
    victim = data.draw(st.sampled_from(_receivers(ranks)))
    position = data.draw(st.integers(min_value=0, max_value=victim.recv.numel() - 1))
    victim.recv[position] += 1
    assert [check(b) for b in ranks] == [float(b is victim) for b in ranks]


@settings(max_examples=60, deadline=None)
@given(case=cases(min_chunk=2), data=st.data())
def test_data_shifted_by_one_is_caught(case: tuple[Any, ...], data: st.DataObject) -> None:
    op, n, chunk, dtype, peer = case
    ranks = _simulate(op, n, chunk, dtype, peer)
    victim = data.draw(st.sampled_from(_receivers(ranks)))
    victim.recv.copy_(torch.roll(victim.recv.clone(), data.draw(st.sampled_from([1, -1]))))
    assert check(victim) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    op=st.sampled_from(["all_gather", "all_to_all"]),
    n=st.integers(min_value=2, max_value=12),
    chunk=st.integers(min_value=1, max_value=7),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_chunks_of_two_ranks_swapped_are_caught(
    op: str, n: int, chunk: int, dtype: str, data: st.DataObject
) -> None:
    ranks = _simulate(op, n, chunk, dtype)
    victim = data.draw(st.sampled_from(ranks))
    a, b = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    recv = victim.recv.view(n, chunk)
    recv[[a, b]] = recv[[b, a]].clone()
    assert check(victim) == 1.0


@settings(max_examples=60, deadline=None)
@given(case=cases(), data=st.data())
def test_a_nan_is_caught(case: tuple[Any, ...], data: st.DataObject) -> None:
    op, n, chunk, _, peer = case
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    ranks = _simulate(op, n, chunk, dtype, peer)
    victim = data.draw(st.sampled_from(_receivers(ranks)))
    victim.recv[data.draw(st.integers(0, victim.recv.numel() - 1))] = math.nan
    assert check(victim) == 1.0


def _reduced_without(op: str, n: int, chunk: int, dtype: str, missing: int | None) -> list[Buffers]:
    """Every rank's Buffers after a reduction that left out rank `missing`'s input (None: a
    correct one). The sum is taken in int64: every partial sum is exact in every dtype
    (test_every_value_fits_every_dtype_exactly), so it equals a rank-by-rank sum in the dtype."""
    ranks = _buffers(op, n, chunk, dtype)
    sends = [b.send.to(torch.int64) for q, b in enumerate(ranks) if q != missing]
    total = torch.stack(sends).sum(dim=0).to(TORCH_DTYPES[dtype])
    for rank, buffers in enumerate(ranks):
        part = slice(rank * chunk, (rank + 1) * chunk) if op == "reduce_scatter" else slice(None)
        buffers.recv.copy_(total[part])
    return ranks


@settings(max_examples=60, deadline=None)
@given(case=cases(ops=tuple(REDUCING_OPS)), data=st.data())
def test_a_missing_rank_is_caught(case: tuple[Any, ...], data: st.DataObject) -> None:
    op, n, chunk, dtype, _ = case
    if n == 1:
        return  # no other rank to leave out
    if op == "all_reduce":
        # Rank q sends non-zero values only at i ≡ q, q - 1 (mod n): in a buffer of fewer than
        # q elements it sends zeros, and no sum can miss it.
        chunk = max(chunk, n)
    missing = data.draw(st.integers(0, n - 1))
    assert _checks(_reduced_without(op, n, chunk, dtype, None)) == [0.0] * n
    caught = _checks(_reduced_without(op, n, chunk, dtype, missing))
    if op == "all_reduce":
        assert caught == [1.0] * n  # every rank holds the whole sum
    else:
        # the ranks whose chunk holds a position rank `missing` sends to: the case is
        # incorrect when any rank's check is (bench.dist.run.agree)
        assert max(caught) == 1.0


@pytest.mark.parametrize("op", [op for op in OPS if op != "broadcast"])
def test_a_collective_that_never_ran_is_caught(op: str) -> None:
    # Receive buffers still hold -1; an all-reduce that never ran holds the rank's own input.
    ranks = _buffers(op, 4, 3, "float32")
    assert _checks(_receivers(ranks)) == [1.0] * len(_receivers(ranks))


def test_a_broadcast_that_never_ran_is_caught_off_the_root() -> None:
    assert _checks(_buffers("broadcast", 4, 3, "float32")) == [
        0.0,
        1.0,
        1.0,
        1.0,
    ]


# --- reductions over many ranks -----------------------------------------------------------------


MANY_RANKS = (100, 200, 256, 300)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "float16"])
@pytest.mark.parametrize("n", MANY_RANKS)
def test_sums_over_many_ranks_are_exact(n: int, dtype: str) -> None:
    # 205 elements: every i mod 101, so sums up to 102; int8 does not wrap, bfloat16 not round.
    ranks = _simulate("all_reduce", n, 205, dtype)
    assert ranks[0].recv.to(torch.int64).tolist() == [2 + i % 101 for i in range(205)]
    assert _checks(ranks) == [0.0] * n
    corrupt = [0, 1, -1, 103, 127] + ([] if dtype == "int8" else [math.nan, math.inf])
    for value in corrupt:  # position 5 expects 7
        victim = ranks[n // 2]
        victim.recv[5] = value
        assert check(victim) == 1.0
        victim.recv[5] = 7
        assert check(victim) == 0.0
    for shift in (1, -1):
        ranks[1].recv.copy_(torch.roll(ranks[1].recv.clone(), shift))
        assert check(ranks[1]) == 1.0
        ranks[1].recv.copy_(torch.roll(ranks[1].recv.clone(), -shift))


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("n", [200, 300])
def test_reduce_scatter_over_many_ranks_checks_exact(n: int, dtype: str) -> None:
    ranks = _simulate("reduce_scatter", n, 3, dtype)
    assert _checks(ranks) == [0.0] * n
    assert max(int(b.recv.to(torch.int64).max()) for b in ranks) == 102


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "float32"])
@pytest.mark.parametrize("n", [2, 3, 6, 24, 200, 300])
@pytest.mark.parametrize("op", sorted(REDUCING_OPS))
def test_every_missing_rank_is_caught(op: str, n: int, dtype: str) -> None:
    # Each rank in turn left out of the sum; all-reduce buffers hold n elements (see
    # test_a_missing_rank_is_caught), reduce-scatter chunks 2.
    chunk = n if op == "all_reduce" else 2
    ranks = _buffers(op, n, chunk, dtype)
    sends = torch.stack([b.send.to(torch.int64) for b in ranks])
    total = sends.sum(dim=0)
    for missing in range(n):
        partial = (total - sends[missing]).to(TORCH_DTYPES[dtype])  # exact, as in the dtype
        if op == "all_reduce":
            ranks[0].recv.copy_(partial)
            assert check(ranks[0]) == 1.0, missing
            continue

        def caught(rank: int, partial: torch.Tensor = partial) -> bool:
            ranks[rank].recv.copy_(partial[rank * chunk : (rank + 1) * chunk])
            return check(ranks[rank]) == 1.0

        assert any(caught(rank) for rank in range(n)), missing


def test_bfloat16_sum_over_200_ranks_missing_one_rank_is_caught() -> None:
    n, chunk = 200, 9
    ranks = _buffers("all_reduce", n, chunk, "bfloat16")
    partial = _sum_in_order([b.send.clone() for b in ranks[1:]])  # rank 0's part missing
    ranks[0].recv.copy_(partial)
    assert check(ranks[0]) == 1.0


REDUCTIONS = {
    "max": lambda t: t.amax(dim=0),
    "min": lambda t: t.amin(dim=0),
    "product": lambda t: t.prod(dim=0),
    "average": lambda t: t.mean(dim=0),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("n", [2, 3, 8, 200])
@pytest.mark.parametrize("op", sorted(REDUCING_OPS))
def test_a_wrong_reduction_is_caught(op: str, n: int, dtype: str, reduction: str) -> None:
    chunk = 4
    ranks = _buffers(op, n, _count(op, n, chunk) if op == "all_reduce" else chunk, dtype)
    sends = torch.stack([b.send.to(torch.float64) for b in ranks])
    wrong = REDUCTIONS[reduction](sends).to(TORCH_DTYPES[dtype])
    for rank, buffers in enumerate(ranks):
        part = slice(rank * chunk, (rank + 1) * chunk) if op == "reduce_scatter" else slice(None)
        buffers.recv.copy_(wrong[part])
    assert _checks(ranks) == [1.0] * n


@pytest.mark.parametrize(
    ("op", "n"), [("all_reduce", 3), ("all_reduce", 24), ("reduce_scatter", 6)]
)
def test_reduction_on_a_multiple_of_3_ranks(op: str, n: int) -> None:
    assert _checks(_simulate(op, n, 4, "float32")) == [0.0] * n


def test_reduce_scatter_chunk_of_the_wrong_rank_is_caught() -> None:
    n, chunk = 4, 8
    ranks = _buffers("reduce_scatter", n, chunk, "float32")
    total = _sum_in_order([b.send.clone() for b in ranks])
    ranks[0].recv.copy_(total[3 * chunk : 4 * chunk])
    assert check(ranks[0]) == 1.0


@pytest.mark.parametrize(
    ("n", "chunk"), [(2, 1), (3, 4), (6, 3), (12, 7), (27, 100), (64, 2), (101, 1), (101, 3)]
)
def test_a_reduce_scatter_chunk_of_any_other_rank_is_caught(n: int, chunk: int) -> None:
    ranks = _simulate("reduce_scatter", n, chunk, "bfloat16")
    total = torch.cat([b.recv.clone() for b in ranks])  # rank r holds the sum's chunk r
    for rank, buffers in enumerate(ranks):
        for other in range(n):
            buffers.recv.copy_(total[other * chunk : (other + 1) * chunk])
            assert check(buffers) == float(other != rank), (rank, other)


@pytest.mark.parametrize(
    ("n", "size_bytes", "dtype"), [(27, 16 << 10, "bfloat16"), (2, 404, "int8")]
)
def test_a_reduce_scatter_chunk_of_the_wrong_rank_is_caught_at_any_size(
    n: int, size_bytes: int, dtype: str
) -> None:
    chunk = elements("reduce_scatter", size_bytes, n, dtype) // n
    assert chunk % 101 == 0
    ranks = _simulate("reduce_scatter", n, chunk, dtype)
    ranks[0].recv.copy_(ranks[1].recv.clone())
    assert check(ranks[0]) == 1.0


# --- the workloads: counts, and refused in a suite ----------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    op=st.sampled_from(OPS),
    size_bytes=st.integers(min_value=0, max_value=1 << 30),
    n=st.integers(min_value=1, max_value=512),
    dtype=st.sampled_from(DTYPES),
)
def test_comm_bytes_is_the_measured_message(op: str, size_bytes: int, n: int, dtype: str) -> None:
    p = {"op": op, "bytes": size_bytes, "world_size": n}
    assert dist.comm_bytes(p, dtype) == message_bytes(op, size_bytes, n, dtype)
    assert WORKLOADS["comm"].bytes(p, dtype) == dist.comm_bytes(p, dtype)
    assert WORKLOADS["comm"].flops(p) == 0


def test_comm_bytes_example() -> None:
    p = {"op": "all_gather", "bytes": 1000, "world_size": 3, "peer": 1}
    assert dist.comm_bytes(p, "float32") == 996  # 250 elements -> 249, 83 per rank


TRAIN_ENTRIES = (
    {"models": ["gpt2-small"], "batch": [4], "seq": [128]},
    {"models": ["resnet50"], "batch": [8], "image": [64], "size": "tiny"},
)


@pytest.mark.parametrize("world_size", [1, 2, 8, 64])
def test_ddp_counts_are_the_groups(world_size: int) -> None:
    ddp = WORKLOADS["ddp"]
    assert ddp.items is not None
    for entry in TRAIN_ENTRIES:
        for _, one_rank in train.parse(entry, "t"):
            p = {**one_rank, "world_size": world_size}
            assert ddp.flops(p) == dist.ddp_flops(p) == world_size * train.flops(one_rank) > 0
            count, unit = train.items(one_rank)
            assert ddp.items(p) == dist.ddp_items(p) == (world_size * count, unit)
            assert ddp.bytes(p, "float32") == train.bytes_moved(one_rank, "float32")  # one rank's


def test_ddp_items_example() -> None:
    p = {"model": "gpt2-small", "size": "full", "batch": 4, "seq": 128, "world_size": 8}
    assert dist.ddp_items(p) == (8 * 4 * 128, "tokens")  # every rank's tokens of one step


def _suite_error(entry: dict[str, Any]) -> str:
    with pytest.raises(UserError) as info:
        suites.parse({"cases": [entry]}, Path("s.toml"))
    message = str(info.value)
    assert "\n" not in message.strip()
    return message


@pytest.mark.parametrize(
    "entry",
    [{"workload": "comm"}, {"workload": "ddp"}, {"workload": "comm", "dtypes": ["int8"]}],
)
def test_a_suite_refuses_comm_and_ddp(entry: dict[str, Any]) -> None:
    message = _suite_error(entry)
    assert "torchrun" in message and "s.toml: cases[0]" in message


@pytest.mark.parametrize(
    "entry",
    [
        {"workload": "ddp", "models": ["resnet50"], "batch": [8]},
        {"workload": "comm", "ops": ["all_reduce"], "bytes": [1024]},
        {"workload": "comm", "no such key": 1, "backends": ["numpy"]},
        {"workload": "ddp", "dtypes": ["int4"], "settings": {"warmup": -1}},
    ],
)
def test_a_suite_refuses_comm_and_ddp_with_their_keys(entry: dict[str, Any]) -> None:
    # whatever else the entry holds, the refusal says where comm and ddp run
    message = _suite_error(entry)
    assert f"s.toml: cases[0]: {entry['workload']} runs only under bench comm" in message
    assert "torchrun" in message and "make bench-dist" in message


def test_only_comm_and_ddp_have_a_launcher() -> None:
    assert {name for name, w in WORKLOADS.items() if w.launcher} == {"comm", "ddp"}
    with pytest.raises(UserError, match="torchrun"):  # their parse, should anything reach it
        WORKLOADS["comm"].parse({"workload": "comm"}, "s.toml: cases[0]")
