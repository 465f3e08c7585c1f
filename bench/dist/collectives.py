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
destination rank, so a chunk delivered to the wrong rank shows too. Buffers are filled and compared in chunks, so a check needs little memory
beyond the buffers themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "sendrecv", "pair")
SPLIT_OPS = frozenset({"all_gather", "reduce_scatter", "all_to_all"})  # S split among ranks
REDUCING_OPS = frozenset({"all_reduce", "reduce_scatter"})
POINT_TO_POINT = frozenset({"sendrecv", "pair"})
DTYPES = ("float32", "bfloat16", "float16", "float64", "int8")
ITEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8, "int8": 1}
MOVE_PERIOD, MOVE_RANK_STRIDE = 101, 5
CHECK_CHUNK = 1 << 24  # elements filled or compared at once


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
class Buffers:
    """One rank's tensors for one case: what it sends and where it receives."""

    send: Any
    recv: Any
    run: Callable[[], Any]  # one call of the collective
    expected: (
        Callable[[Any], Any] | None
    )  # global index array -> expected recv values; None: no recv


def _dist_fn(name: str, old: str) -> Any:
    import torch.distributed as dist

    return getattr(dist, name, None) or getattr(dist, old)


def make_buffers(
    op: str, count: int, dtype: Any, device: str, rank: int, n: int, group: Any, peer: int = 1
) -> Buffers:
    """The tensors and the call of `op` for this rank (group rank `rank` of `n`), filled with the
    check's inputs. `count` is elements(op, S, n, dtype)."""
    import torch
    import torch.distributed as dist

    def fill(tensor: Any, value: Callable[[Any], Any]) -> Any:
        for start in range(0, tensor.numel(), CHECK_CHUNK):
            stop = min(start + CHECK_CHUNK, tensor.numel())
            index = torch.arange(start, stop, device=device)
            tensor[start:stop] = value(index).to(tensor.dtype)
        return tensor

    chunk = count // n if op in SPLIT_OPS else count
    send_count = chunk if op == "all_gather" else count
    recv_count = chunk if op == "reduce_scatter" else count
    send = torch.empty(send_count, dtype=dtype, device=device)
    recv = (
        send
        if op in ("all_reduce", "broadcast")
        else torch.empty(recv_count, dtype=dtype, device=device)
    )
    if op in REDUCING_OPS:
        split = chunk if op == "reduce_scatter" else 0
        fill(send, lambda i: reduce_value(rank, i, n, split))
    else:
        fill(send, lambda i: move_value(rank, i))
    if recv is not send:
        recv.fill_(-1)  # anything a collective failed to write stands out

    if op == "all_reduce":
        return Buffers(send, recv, lambda: dist.all_reduce(send, group=group), reduce_sum)
    if op == "broadcast":
        return Buffers(
            send,
            recv,
            lambda: dist.broadcast(send, _global(group, 0), group=group),
            lambda i: move_value(0, i),
        )
    if op == "all_gather":
        gather = _dist_fn("all_gather_single", "all_gather_into_tensor")
        return Buffers(
            send,
            recv,
            lambda: gather(recv, send, group=group),
            lambda i: move_value(i // chunk, i % chunk),
        )
    if op == "reduce_scatter":
        scatter = _dist_fn("reduce_scatter_single", "reduce_scatter_tensor")
        return Buffers(
            send,
            recv,
            lambda: scatter(recv, send, group=group),
            lambda i: reduce_sum(rank * chunk + i, chunk),
        )
    if op == "all_to_all":
        return Buffers(
            send,
            recv,
            lambda: dist.all_to_all_single(recv, send, group=group),
            lambda i: move_value(i // chunk, rank * chunk + i % chunk),
        )
    if op == "sendrecv":
        to, frm = _global(group, (rank + 1) % n), _global(group, (rank - 1) % n)

        def ring() -> None:
            ops = [
                dist.P2POp(dist.isend, send, to, group),
                dist.P2POp(dist.irecv, recv, frm, group),
            ]
            for work in dist.batch_isend_irecv(ops):
                work.wait()

        return Buffers(send, recv, ring, lambda i: move_value((rank - 1) % n, i))
    if op == "pair":
        return _pair(send, recv, rank, peer, group)
    raise ValueError(f"unknown collective {op!r}")


def _pair(send: Any, recv: Any, rank: int, peer: int, group: Any) -> Buffers:
    import torch.distributed as dist

    if rank == 0:
        to = _global(group, peer)
        return Buffers(send, recv, lambda: dist.send(send, to, group=group), None)
    if rank == peer:
        frm = _global(group, 0)
        return Buffers(
            send, recv, lambda: dist.recv(recv, frm, group=group), lambda i: move_value(0, i)
        )
    return Buffers(send, recv, lambda: None, None)  # a bystander: its time is ~0


def _global(group: Any, group_rank: int) -> int:
    """The global rank of `group_rank` in `group` (our groups are ranks 0..n-1: the same)."""
    return group_rank


def check(buffers: Buffers) -> float:
    """0.0 when every value this rank received is the one expected, else 1.0 (values are small
    integers, compared exactly; NaN never equals)."""
    import torch

    if buffers.expected is None:
        return 0.0
    out = buffers.recv
    for start in range(0, out.numel(), CHECK_CHUNK):
        stop = min(start + CHECK_CHUNK, out.numel())
        index = torch.arange(start, stop, device=out.device)
        if not torch.equal(out[start:stop], buffers.expected(index).to(out.dtype)):
            return 1.0
    return 0.0
