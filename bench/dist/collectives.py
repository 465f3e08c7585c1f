"""The collectives `bench comm` measures, how much each moves, and how each is checked.

Sizes follow nccl-tests: S is the whole buffer of the operation (all-reduce and broadcast: the
buffer; all-gather: the gathered output; reduce-scatter: the input; all-to-all: what one rank
sends in all; send/recv: the message), rounded down to whole elements (and, where the buffer is
split among the ranks, to a multiple of the rank count). algbw = S / t, busbw = algbw × factor:

    all_reduce 2(n-1)/n;  all_gather, reduce_scatter, all_to_all (n-1)/n;
    broadcast, sendrecv, pair 1

`sendrecv` is nccl-tests' ring shift (every rank sends S to rank r+1 and receives S from r-1,
at once); `pair` sends S from rank 0 to one peer while the others wait: the link between two
ranks. torch.distributed's all-reduce is in place only, so timed all-reduces keep summing into
their buffer (values grow to inf); NCCL's and Gloo's reductions take the same time whatever the
values.

Checks, on every rank, before timing: inputs are small integers that every dtype holds exactly,
and results are compared exactly. Data-moving collectives carry w(q, i) = (5q + i) mod 101,
which tells the sending rank and the position apart. Reductions sum
v(q, i) = [q ≡ i (mod n)] · (1 + i mod 101) + [q ≡ i + 1 (mod n)]: at every position two ranks
send a non-zero value and the sum is 2 + i mod 101 whatever n, so no sum outgrows a dtype's exact
integers (int8 never wraps), and a missing rank (where the buffer has at least n elements), a
shifted chunk or a wrong reduction (a max) changes it; a reduce-scatter shifts i by 5 × the
destination rank, so a chunk delivered to the wrong rank shows too. Every pattern is periodic
(period 101, or lcm(n, 101) for a reduction's inputs) within each rank's chunk, so buffers are
filled and compared a period at a time, at the speed of a copy, with no index arrays as large as
the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "sendrecv", "pair")
SPLIT_OPS = frozenset({"all_gather", "reduce_scatter", "all_to_all"})  # S split among ranks
REDUCING_OPS = frozenset({"all_reduce", "reduce_scatter"})
POINT_TO_POINT = frozenset({"sendrecv", "pair"})
DTYPES = ("float32", "bfloat16", "float16", "float64", "int8")
ITEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int8": 1}
MOVE_PERIOD, MOVE_RANK_STRIDE = 101, 5
DIRECT_MAX_ELEMENTS = 1 << 16  # buffers up to this are filled and compared in one pass


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests' bus-bandwidth factor of `op` on `n` ranks."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in SPLIT_OPS:
        return (n - 1) / n
    if op in ("broadcast", "sendrecv", "pair"):
        return 1.0
    raise ValueError(f"unknown collective {op!r}")


def elements(op: str, size_bytes: int, n: int, dtype: str) -> int:
    """Elements of the whole buffer of `op` at S = size_bytes: whole elements, and for ops that
    split the buffer among the ranks a multiple of n (0: too small for one element per rank)."""
    count = size_bytes // ITEM_BYTES[dtype]
    return count - count % n if op in SPLIT_OPS else count


def message_bytes(op: str, size_bytes: int, n: int, dtype: str) -> int:
    """S as measured: the buffer's bytes after rounding to whole elements."""
    return elements(op, size_bytes, n, dtype) * ITEM_BYTES[dtype]


def min_ranks(op: str) -> int:
    return 2 if op in POINT_TO_POINT else 1


# --- the values a check puts in and expects ----------------------------------------------------


def _key(index: Any, chunk: int) -> Any:
    """The position a reduction's value follows: the index, shifted by the destination rank
    (index // chunk) in a reduce-scatter, so each rank's chunk differs from the others' even
    when a chunk is a multiple of the period."""
    return index + MOVE_RANK_STRIDE * (index // chunk) if chunk else index


def reduce_value(rank: Any, index: Any, n: int, chunk: int = 0) -> Any:
    """What rank `rank` of `n` sends at `index` in a reduction (see the module docstring);
    `chunk`: a reduce-scatter's elements per rank (0 for an all-reduce)."""
    own = (index % n == rank) * (1 + _key(index, chunk) % MOVE_PERIOD)
    return own + ((index + 1) % n == rank) * 1


def reduce_sum(index: Any, chunk: int = 0) -> Any:
    """Σ over the n ranks of reduce_value(q, index, n, chunk): the same for every n."""
    return 2 + _key(index, chunk) % MOVE_PERIOD


def move_value(rank: Any, index: Any) -> Any:
    return (MOVE_RANK_STRIDE * rank + index) % MOVE_PERIOD


@dataclass(frozen=True)
class Pattern:
    """A buffer's values as a function of the element index, periodic with `period` inside each
    segment of `segment` elements (0: the buffer is one segment). A buffer is filled and
    compared one period at a time, at the speed of a copy, whatever its size."""

    value: Callable[[Any], Any]
    period: int
    segment: int = 0


def _periods(tensor: Any, pattern: Pattern) -> Iterator[tuple[Any, Any]]:
    """(a view of the tensor, the values it must hold), covering the tensor once."""
    import torch

    numel = tensor.numel()
    if numel <= DIRECT_MAX_ELEMENTS:  # small: one pass over the whole index beats many periods
        yield tensor, pattern.value(torch.arange(numel, device=tensor.device)).to(tensor.dtype)
        return
    segment = pattern.segment or numel
    for first in range(0, numel, segment):
        length = min(segment, numel - first)
        period = min(pattern.period, length)
        index = torch.arange(first, first + period, device=tensor.device)
        base = pattern.value(index).to(tensor.dtype)
        whole = length // period
        yield tensor[first : first + whole * period].view(whole, period), base.expand(whole, period)
        if whole * period < length:
            yield tensor[first + whole * period : first + length], base[: length - whole * period]


def fill(tensor: Any, pattern: Pattern) -> Any:
    for view, values in _periods(tensor, pattern):
        view.copy_(values)
    return tensor


@dataclass(frozen=True)
class Buffers:
    """One rank's tensors for one case: what it sends and where it receives."""

    send: Any
    recv: Any
    run: Callable[[], Any]  # one call of the collective
    expected: Pattern | None  # what recv must hold afterwards; None: this rank receives nothing


def _dist_fn(name: str, old: str) -> Any:
    import torch.distributed as dist

    return getattr(dist, name, None) or getattr(dist, old)


def make_buffers(
    op: str, count: int, dtype: Any, device: str, rank: int, n: int, group: Any, peer: int = 1
) -> Buffers:
    """The tensors and the call of `op` for this rank (group rank `rank` of `n`), filled with the
    check's inputs. `count` is elements(op, S, n, dtype). Groups are ranks 0..n-1 of the world,
    so a peer's group rank is also its global rank (what send, recv and broadcast take)."""
    import torch
    import torch.distributed as dist

    chunk = count // n if op in SPLIT_OPS else count
    send_count = chunk if op == "all_gather" else count
    recv_count = chunk if op == "reduce_scatter" else count
    send = torch.empty(send_count, dtype=dtype, device=device)
    in_place = op in ("all_reduce", "broadcast")
    recv = send if in_place else torch.empty(recv_count, dtype=dtype, device=device)
    if op in REDUCING_OPS:
        split = chunk if op == "reduce_scatter" else 0
        period = math.lcm(n, MOVE_PERIOD)
        fill(send, Pattern(lambda i: reduce_value(rank, i, n, split), period, split))
    else:
        fill(send, Pattern(lambda i: move_value(rank, i), MOVE_PERIOD))
    if not in_place:
        recv.fill_(-1)  # anything a collective failed to write stands out

    def moved(
        source: Callable[[Any], Any], offset: Callable[[Any], Any], segment: int = 0
    ) -> Pattern:
        return Pattern(lambda i: move_value(source(i), offset(i)), MOVE_PERIOD, segment)

    if op == "all_reduce":
        run = lambda: dist.all_reduce(send, group=group)  # noqa: E731
        return Buffers(send, recv, run, Pattern(reduce_sum, MOVE_PERIOD))
    if op == "broadcast":
        run = lambda: dist.broadcast(send, 0, group=group)  # noqa: E731
        return Buffers(send, recv, run, moved(lambda i: 0, lambda i: i))
    if op == "all_gather":
        gather = _dist_fn("all_gather_single", "all_gather_into_tensor")
        expect = moved(lambda i: i // chunk, lambda i: i % chunk, chunk)
        return Buffers(send, recv, lambda: gather(recv, send, group=group), expect)
    if op == "reduce_scatter":
        scatter = _dist_fn("reduce_scatter_single", "reduce_scatter_tensor")
        expect = Pattern(lambda i: reduce_sum(rank * chunk + i, chunk), MOVE_PERIOD)
        return Buffers(send, recv, lambda: scatter(recv, send, group=group), expect)
    if op == "all_to_all":
        run = lambda: dist.all_to_all_single(recv, send, group=group)  # noqa: E731
        return Buffers(
            send, recv, run, moved(lambda i: i // chunk, lambda i: rank * chunk + i % chunk, chunk)
        )
    if op == "sendrecv":
        to, frm = (rank + 1) % n, (rank - 1) % n

        def ring() -> None:
            ops = [
                dist.P2POp(dist.isend, send, to, group),
                dist.P2POp(dist.irecv, recv, frm, group),
            ]
            for work in dist.batch_isend_irecv(ops):
                work.wait()

        return Buffers(send, recv, ring, moved(lambda i: (rank - 1) % n, lambda i: i))
    if op == "pair":
        return _pair(send, recv, rank, peer, group)
    raise ValueError(f"unknown collective {op!r}")


def _pair(send: Any, recv: Any, rank: int, peer: int, group: Any) -> Buffers:
    import torch.distributed as dist

    if rank == 0:
        to = peer
        return Buffers(send, recv, lambda: dist.send(send, to, group=group), None)
    if rank == peer:
        frm = 0
        expect = Pattern(lambda i: move_value(0, i), MOVE_PERIOD)
        return Buffers(send, recv, lambda: dist.recv(recv, frm, group=group), expect)
    return Buffers(send, recv, lambda: None, None)  # a bystander: its time is ~0


def check(buffers: Buffers) -> float:
    """0.0 when every value this rank received is the one expected, else 1.0 (values are small
    integers, compared exactly; NaN never equals)."""
    import torch

    if buffers.expected is None:
        return 0.0
    views = _periods(buffers.recv, buffers.expected)
    return 0.0 if all(torch.equal(view, values) for view, values in views) else 1.0
