"""Host <-> device transfers: how fast data crosses the link between host memory and a GPU.

Variants (suite key `directions`): "h2d" (host to device: bytes = S), "d2h" (device to host:
bytes = S) and "bidir" (both at once on two streams, S each way: bytes = 2·S). Parameters:
`bytes` = S and `memory` = "pinned" (page-locked host memory: the GPU's DMA engines read and
write it directly) or "pageable" (ordinary memory: the driver stages it through a pinned buffer
of its own). The variant is also the parameter `direction`, so a point's byte count and its
convention follow from its parameters alone. The host side holds raw bytes (dtype "bytes").

Per backend:
  torch  host tensors from torch.empty(pin_memory=...), Tensor.copy_(non_blocking=True) on the
         current stream, so the harness's CUDA events bracket the copy; bidir issues the two
         copies on two side streams that wait for the current one, which then waits for both.
  cupy   cupyx.empty_pinned or a NumPy array; cudaMemcpyAsync through MemoryPointer, streams
         and events as for torch.
  jax    pageable h2d: jax.device_put(numpy array, gpu). Pageable d2h: the copy np.asarray
         makes (ArrayImpl._single_device_array_to_np_array_did_copy), called directly: JAX
         keeps an array's host copy after the first np.asarray, device_get or device_put to
         the CPU device, so every later call through those would move nothing. Pinned:
         device_put between the GPU's "pinned_host" and "device" memory kinds; Unsupported
         where the GPU has no pinned_host.

The check: every byte is random; after a call into an output overwritten with a poison value,
sampled bytes of each destination must equal the source's. Transfers are GPU-only: a CPU case
is Unsupported.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.backends.base import Unsupported
from bench.errors import UserError
from bench.units import size_points
from bench.workloads.base import Prepared, Workload, check_counts_fit, choices

DIRECTIONS = ("h2d", "d2h", "bidir")
MEMORY = ("pinned", "pageable")
# 4 KiB (latency-bound: a few microseconds per copy) to 1 GiB (the link's plateau), as the
# issue asks.
DEFAULT_SIZES = {"from": "4KiB", "to": "1GiB", "step": 2}
KEYS = {
    "directions": f"list of {', '.join(DIRECTIONS)} (default all): each is a variant",
    "memory": f"list of {', '.join(MEMORY)} host memory (default both)",
    "sizes": 'bytes each way: a list ("64MiB", ...) or { from = "4KiB", to = "1GiB", step = 2 }'
    " (the default)",
}
CONVENTION = {
    "h2d": "one way: 1 × buffer host to device",
    "d2h": "one way: 1 × buffer device to host",
    "bidir": "both ways at once: 1 × buffer host to device + 1 × buffer device to host",
}
# Bytes compared after a call, at random places (plus the first and last): a copy that misses
# 1/1000 of the buffer fails with probability > 98 %.
CHECK_SAMPLES = 4096
# What a destination holds before the check's call: a copy that moves nothing leaves it, and
# random bytes match it at all sampled places with probability 256^-4096.
POISON = 0xA5
# The method np.asarray(jax array) copies a one-device array to the host with (it then caches
# the result on the array, which this workload must avoid).
_UNCACHED_COPY = "_single_device_array_to_np_array_did_copy"


def parse(entry: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    for key in entry:
        if key not in KEYS:
            raise UserError(f"{where}: unknown key {key!r} for transfer; valid: {', '.join(KEYS)}")
    directions = choices(
        entry.get("directions", list(DIRECTIONS)), DIRECTIONS, f"{where}.directions"
    )
    memory = choices(entry.get("memory", list(MEMORY)), MEMORY, f"{where}.memory")
    sizes = size_points(entry.get("sizes", DEFAULT_SIZES), f"{where}.sizes")
    points: list[tuple[str, dict[str, Any]]] = []
    for direction in directions:
        for kind in memory:
            for size in sizes:
                p = {"direction": direction, "memory": kind, "bytes": size}
                check_counts_fit(0, bytes_moved(p, "bytes"), f"{where}.sizes")
                points.append((direction, p))
    return points


def flops(p: dict[str, Any]) -> int:
    return 0


def bytes_moved(p: dict[str, Any], dtype: str) -> int:
    """Bytes across the link per call: S, or S each way for bidir (nvbandwidth's bidirectional
    tests report each direction; their sum is this)."""
    return (2 if p["direction"] == "bidir" else 1) * p["bytes"]


def bytes_convention(p: dict[str, Any]) -> str:
    return CONVENTION[p["direction"]]


@dataclass(frozen=True)
class Ops:
    """What a backend builds for one point. `run()` makes one call and returns what the backend's
    sync waits on; `poison()` overwrites the destinations with POISON; `read(out, idx)` gives
    the bytes at `idx` of each destination the call `out` came from wrote (one array each)."""

    run: Callable[[], Any]
    poison: Callable[[], None]
    read: Callable[[Any, np.ndarray], list[np.ndarray]]
    impl: str


def setup(bk: Any, device: str, dtype: str, p: dict[str, Any], seed: int) -> Prepared:
    if device == "cpu":
        raise Unsupported("transfer measures copies between host memory and a GPU; a CPU has none")
    if dtype != "bytes":
        raise Unsupported(f"transfer moves raw bytes (dtype bytes), not {dtype}")
    direction, memory, size = p["direction"], p["memory"], p["bytes"]
    data = random_bytes(size, seed)
    idx = sample_indices(size, seed)
    expected = data[idx]
    ops = BUILDERS[bk.name](bk, device, direction, memory, data)
    del data  # the backend keeps what it needs; the check needs only the sampled bytes

    def check() -> float:
        ops.poison()
        out = ops.run()
        bk.sync(out)
        # The fraction of sampled bytes that differ from the source, in the worse destination.
        return max(float(np.mean(got != expected)) for got in ops.read(out, idx))

    return Prepared(run=ops.run, check=check, tolerance=0.0, impl=ops.impl)


def random_bytes(size: int, seed: int) -> np.ndarray:
    """`size` random bytes (drawn 8 at a time: 8× faster than byte by byte)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64 - 1, -(-size // 8), dtype=np.uint64, endpoint=True)
    return words.view(np.uint8)[:size]


def sample_indices(size: int, seed: int) -> np.ndarray:
    picks = np.random.default_rng(seed + 1).integers(0, size, min(size, CHECK_SAMPLES))
    return np.unique(np.concatenate([[0, size - 1], picks]))


def _needs(direction: str) -> tuple[bool, bool]:
    """(moves host to device, moves device to host)."""
    return direction in ("h2d", "bidir"), direction in ("d2h", "bidir")


# --- torch --------------------------------------------------------------------------------------


def _torch(bk: Any, device: str, direction: str, memory: str, data: np.ndarray) -> Ops:
    torch = bk.torch
    dev = torch.device(device)
    pinned = memory == "pinned"
    up, down = _needs(direction)

    def host_buffer() -> Any:
        return torch.empty(len(data), dtype=torch.uint8, pin_memory=pinned)

    h_src = d_dst = d_src = h_dst = None
    if up:
        h_src = host_buffer()
        h_src.numpy()[:] = data
        d_dst = torch.empty(len(data), dtype=torch.uint8, device=dev)
    if down:
        d_src = torch.from_numpy(data).to(dev)
        h_dst = host_buffer()

    if direction == "bidir":
        streams = torch.cuda.Stream(dev), torch.cuda.Stream(dev)

        def run() -> Any:
            current = torch.cuda.current_stream(dev)
            for s in streams:
                s.wait_stream(current)
            with torch.cuda.stream(streams[0]):
                d_dst.copy_(h_src, non_blocking=True)
            with torch.cuda.stream(streams[1]):
                h_dst.copy_(d_src, non_blocking=True)
            for s in streams:  # the harness's stop event, on the current stream, follows both
                current.wait_stream(s)
            return d_dst  # torch's sync waits for the whole device

    elif up:

        def run() -> Any:
            return d_dst.copy_(h_src, non_blocking=True)

    else:

        def run() -> Any:
            h_dst.copy_(d_src, non_blocking=True)
            return d_src  # a CUDA tensor: torch's sync then waits for the device

    def poison() -> None:
        for buf in (d_dst, h_dst):
            if buf is not None:
                buf.fill_(POISON)
        torch.cuda.synchronize(dev)

    def read(out: Any, idx: np.ndarray) -> list[np.ndarray]:
        return [
            buf[torch.as_tensor(idx, device=buf.device)].cpu().numpy()
            for buf in (d_dst, h_dst)
            if buf is not None
        ]

    return Ops(run, poison, read, f"torch.Tensor.copy_(non_blocking=True), {memory} host tensor")


# --- cupy ---------------------------------------------------------------------------------------


def _cupy(bk: Any, device: str, direction: str, memory: str, data: np.ndarray) -> Ops:
    cp = bk.cupy
    import cupyx

    bk.device_name(device)  # makes the case's GPU CuPy's current device
    up, down = _needs(direction)
    n = len(data)

    def host_buffer() -> np.ndarray:
        return (
            cupyx.empty_pinned((n,), dtype=np.uint8)
            if memory == "pinned"
            else np.empty(n, np.uint8)
        )

    h_src = d_dst = d_src = h_dst = None
    if up:
        h_src = host_buffer()
        h_src[:] = data
        d_dst = cp.empty(n, dtype=np.uint8)
    if down:
        d_src = cp.asarray(data)
        h_dst = host_buffer()

    def h2d(stream: Any) -> None:
        d_dst.data.copy_from_host_async(ctypes.c_void_p(h_src.ctypes.data), n, stream)

    def d2h(stream: Any) -> None:
        d_src.data.copy_to_host_async(ctypes.c_void_p(h_dst.ctypes.data), n, stream)

    if direction == "bidir":
        streams = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)

        def run() -> Any:
            current = cp.cuda.get_current_stream()
            start = current.record()
            for s in streams:
                s.wait_event(start)
            h2d(streams[0])
            d2h(streams[1])
            for s in streams:  # the harness's stop event, on the current stream, follows both
                current.wait_event(s.record())
            return d_dst

    else:

        def run() -> Any:
            (h2d if up else d2h)(cp.cuda.get_current_stream())
            return d_dst if up else d_src

    def poison() -> None:
        if d_dst is not None:
            d_dst.fill(POISON)
        if h_dst is not None:
            h_dst.fill(POISON)
        cp.cuda.Device().synchronize()

    def read(out: Any, idx: np.ndarray) -> list[np.ndarray]:
        got = [cp.asnumpy(d_dst[cp.asarray(idx)])] if d_dst is not None else []
        return got + ([h_dst[idx].copy()] if h_dst is not None else [])

    return Ops(run, poison, read, f"cudaMemcpyAsync (cupy MemoryPointer), {memory} host buffer")


# --- jax ----------------------------------------------------------------------------------------


def _jax(bk: Any, device: str, direction: str, memory: str, data: np.ndarray) -> Ops:
    jax, jnp = bk.jax, bk.jnp
    from jax.sharding import SingleDeviceSharding

    gpu = jax.devices("gpu")[int(device.split(":")[1])]
    on_device = SingleDeviceSharding(gpu, memory_kind="device")
    up, down = _needs(direction)
    pinned = memory == "pinned"
    if pinned:
        kinds = {m.kind for m in gpu.addressable_memories()}
        if "pinned_host" not in kinds:
            raise Unsupported(
                f"jax {jax.__version__} offers no pinned_host memory on {gpu.device_kind} "
                f"(memory kinds: {', '.join(sorted(kinds))})"
            )
        in_pinned = SingleDeviceSharding(gpu, memory_kind="pinned_host")

    h_src = d_src = None
    if up:
        h_src = jax.device_put(data, in_pinned).block_until_ready() if pinned else data
    if down:
        d_src = jax.device_put(data, on_device).block_until_ready()
        if not pinned and not hasattr(d_src, _UNCACHED_COPY):
            raise Unsupported(
                f"jax {jax.__version__} has no {_UNCACHED_COPY}: its public device-to-host "
                "paths cache the host copy, so repeated calls would move nothing"
            )

    def h2d() -> Any:
        return jax.device_put(h_src, on_device)

    def d2h() -> Any:
        if pinned:
            return jax.device_put(d_src, in_pinned)
        # np.asarray's own copy, without the caching that would make later calls free.
        return getattr(d_src, _UNCACHED_COPY)()[0]

    if direction == "bidir":

        def run() -> Any:
            return h2d(), d2h()  # device_put returns at once: both transfers are in flight

    else:
        run = h2d if up else d2h

    def read(out: Any, idx: np.ndarray) -> list[np.ndarray]:
        to_device, to_host = out if direction == "bidir" else ((out, None) if up else (None, out))
        got = [np.asarray(jnp.take(to_device, jnp.asarray(idx)))] if up else []
        return got + ([np.asarray(jax.device_get(to_host))[idx]] if down else [])

    # Every call makes new destination arrays, so there is nothing to poison: a stale one
    # cannot be read back.
    if pinned:
        impl = "jax.device_put between the pinned_host and device memory kinds"
    else:
        impl = {
            "h2d": "jax.device_put(numpy array, gpu)",
            "d2h": "np.asarray's copy, uncached",
            "bidir": "jax.device_put(numpy array, gpu) + np.asarray's copy, uncached",
        }[direction]
    return Ops(run, lambda: None, read, impl)


BUILDERS: dict[str, Callable[[Any, str, str, str, np.ndarray], Ops]] = {
    "torch": _torch,
    "cupy": _cupy,
    "jax": _jax,
}

WORKLOAD = Workload(
    name="transfer",
    description="host <-> GPU copies: h2d, d2h and both at once, pinned and pageable host memory",
    parse=parse,
    flops=flops,
    bytes=bytes_moved,
    setup=setup,
    keys=KEYS,
    dtypes=("bytes",),
    device_kinds=("gpu",),
    bytes_convention=bytes_convention,
)
