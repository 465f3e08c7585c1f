"""The links between the ranks of a distributed run, and what each can carry at most.

Inside a node the ranks' GPUs meet over NVLink (direct or through NVSwitch) or over PCIe; NVML
tells which, like `nvidia-smi topo -m`. Between nodes they meet over InfiniBand (or RoCE), read
from /sys, or over the Ethernet interface that routes to the peer, read through psutil. Each
link comes with its theoretical one-direction bandwidth per rank in decimal GB/s, the ceiling
for a collective's bus bandwidth. Nothing here raises: what cannot be told becomes a Link of kind
"unknown" with the reason in `detail`.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import psutil

from bench.nvml import _call, _nvml
from bench.pcie import link_gbps


@dataclass(frozen=True)
class Link:
    """One path between ranks. `kind`: nvlink, pcie, loopback, infiniband, ethernet, same-gpu,
    none (a single GPU: no path) or unknown. `text` is the short label ("NV18", "PXB",
    "ib 400 Gb/s"); `gbps` the theoretical one-direction GB/s per rank, None when unknown."""

    kind: str
    text: str
    gbps: float | None
    detail: str = ""


LOOPBACK = Link("loopback", "loopback", None, "the peer is on this node: no network crossed")
NO_LINK = Link("none", "", None, "one GPU: no link between ranks")


def _unknown(reason: str) -> Link:
    return Link("unknown", "unknown", None, reason)


# --- NVLink -----------------------------------------------------------------------------------

# nvmlDeviceGetNvLinkVersion answers an nvmlNvlinkVersion_t, not the generation (hwloc #658):
# 1 = 1.0, 2 = 2.0, 3 = 2.2, 4 = 3.0, 5 = 3.1, 6 = 4.0, 7 = 5.0, 8 = 6.0 (pynvml's
# NVML_NVLINK_VERSION_* constants).
NVLINK_GENERATION_BY_NVML_VERSION = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5, 8: 6}
# The newest generation each architecture (nvmlDeviceGetArchitecture) has: some drivers report
# 5.0 for H100's NVLink 4, so the architecture caps the reported version.
_MAX_NVLINK_GENERATION_BY_ARCH = {4: 1, 5: 2, 6: 2, 7: 3, 9: 4, 10: 5, 13: 6}
# One direction of one link in GB/s: NVLink 1 runs 8 lanes at 20 Gb/s; 2-4 carry 25 GB/s
# (V100 6 links = 150, A100 12 = 300, H100 18 = 450); NVLink 5 doubles it (B200 18 = 900).
_NVLINK_GBPS_PER_LINK = {1: 20.0, 2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}


def nvlink_generation(nvml_version: int | None, architecture: int | None = None) -> int | None:
    """The NVLink generation behind NVML's version enum, capped by the GPU's architecture."""
    generation = NVLINK_GENERATION_BY_NVML_VERSION.get(nvml_version or 0)
    cap = _MAX_NVLINK_GENERATION_BY_ARCH.get(architecture or 0)
    return min(generation, cap) if generation is not None and cap is not None else generation


def nvlink_gbps_per_link(version: int) -> float | None:
    """One-direction GB/s of one link of NVLink generation `version`; None when not known."""
    return _NVLINK_GBPS_PER_LINK.get(version)


# --- PCIe -------------------------------------------------------------------------------------

# nvmlGpuTopologyLevel_t -> nvidia-smi topo's label and what the path crosses. INTERNAL (two
# GPUs on one board) goes through the board's own PCIe switch, hence PIX.
PCIE_LEVELS: dict[int, tuple[str, str]] = {
    0: ("PIX", "on one board"),
    10: ("PIX", "through one PCIe switch"),
    20: ("PXB", "through several PCIe switches"),
    30: ("PHB", "through a PCIe host bridge"),
    40: ("NODE", "between host bridges of one NUMA node"),
    50: ("SYS", "across the interconnect between NUMA nodes"),
}


class _NvLinkEnd(NamedTuple):
    peer: tuple[int, ...] | None  # PCI (domain, bus, device) at the far end
    to_switch: bool
    generation: int | None


@dataclass(frozen=True)
class _Gpu:
    """What NVML tells of one GPU's links, read once per call."""

    index: int
    handle: Any
    pcie: tuple[int | None, int | None]  # max generation and width with this GPU in this slot
    nvlinks: tuple[_NvLinkEnd, ...]  # the active links
    pci: tuple[int, ...] | None  # (domain, bus, device)


def _pci_key(pci: Any) -> tuple[int, ...] | None:
    key = tuple(getattr(pci, field, None) for field in ("domain", "bus", "device"))
    return key if all(isinstance(part, int) for part in key) else None  # type: ignore[return-value]


def _read_gpu(pynvml: ModuleType, index: int, gpu_pcis: set[tuple[int, ...]]) -> _Gpu | None:
    handle = _call("nvmlDeviceGetHandleByIndex", index)
    if handle is None:
        return None
    architecture = _call("nvmlDeviceGetArchitecture", handle)
    nvlinks = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        if not _call("nvmlDeviceGetNvLinkState", handle, link):
            continue  # inactive, or beyond the GPU's links
        peer = _pci_key(_call("nvmlDeviceGetNvLinkRemotePciInfo", handle, link))
        peer_type = _call("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link)
        if peer_type is None:  # older drivers: a peer that is no GPU is a switch
            to_switch = peer is not None and peer not in gpu_pcis
        else:
            to_switch = peer_type == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
        version = _call("nvmlDeviceGetNvLinkVersion", handle, link)
        nvlinks.append(_NvLinkEnd(peer, to_switch, nvlink_generation(version, architecture)))
    pcie = (
        _call("nvmlDeviceGetMaxPcieLinkGeneration", handle),
        _call("nvmlDeviceGetMaxPcieLinkWidth", handle),
    )
    pci = _pci_key(_call("nvmlDeviceGetPciInfo", handle))
    return _Gpu(index, handle, pcie, tuple(nvlinks), pci)


def _read_gpus(indices: Sequence[int]) -> tuple[dict[int, _Gpu | None], str | None]:
    pynvml, reason = _nvml()
    if pynvml is None:
        return {}, reason
    count = _call("nvmlDeviceGetCount") or 0
    handles = [_call("nvmlDeviceGetHandleByIndex", i) for i in range(count)]
    pcis = {_pci_key(_call("nvmlDeviceGetPciInfo", h)) for h in handles if h is not None}
    known = {pci for pci in pcis if pci is not None}
    return {i: _read_gpu(pynvml, i, known) for i in dict.fromkeys(indices)}, None


def _nvlink_between(a: _Gpu, b: _Gpu) -> Link | None:
    direct = [gen for peer, to_switch, gen in a.nvlinks if not to_switch and peer == b.pci]
    switched_a = [gen for _, to_switch, gen in a.nvlinks if to_switch]
    switched_b = [gen for _, to_switch, gen in b.nvlinks if to_switch]
    switched = min(len(switched_a), len(switched_b))
    links = len(direct) + switched
    if links == 0:
        return None
    generations = [g for g in direct + (switched_a + switched_b if switched else []) if g]
    generation = min(generations) if generations else None
    per_link = nvlink_gbps_per_link(generation) if generation else None
    via = " through NVSwitch" if switched else ""
    detail = f"NVLink {generation or '?'}{via}, {links} links × {per_link or '?'} GB/s"
    return Link("nvlink", f"NV{links}", links * per_link if per_link else None, detail)


def _pcie_between(a: _Gpu, b: _Gpu) -> Link:
    level = _call("nvmlDeviceGetTopologyCommonAncestor", a.handle, b.handle)
    if level not in PCIE_LEVELS:
        return _unknown(f"NVML did not tell the PCIe path between GPUs {a.index} and {b.index}")
    label, path = PCIE_LEVELS[level]
    slower = min((a, b), key=lambda gpu: link_gbps(*gpu.pcie) or float("inf"))
    gbps = link_gbps(*slower.pcie)
    speed = f"Gen{slower.pcie[0]} x{slower.pcie[1]}" if gbps else "link speed not reported"
    return Link("pcie", label, gbps, f"PCIe {speed}, {path}")


def _pair(gpus: dict[int, _Gpu | None], a: int, b: int, reason: str | None) -> Link:
    if a == b:
        return Link("same-gpu", "X", None, f"both ranks on GPU {a}")
    gpu_a, gpu_b = gpus.get(a), gpus.get(b)
    if gpu_a is None or gpu_b is None:
        return _unknown(reason or f"NVML has no GPU {a if gpu_a is None else b}")
    return _nvlink_between(gpu_a, gpu_b) or _pcie_between(gpu_a, gpu_b)


def gpu_pair_link(nvml_a: int, nvml_b: int) -> Link:
    """The path between two GPUs (NVML indices): NVLink when they share active links, directly
    or through NVSwitch (then every GPU reaches every other over all its switch links), else
    PCIe at the slower of the two GPUs' links."""
    gpus, reason = _read_gpus([nvml_a, nvml_b])
    return _pair(gpus, nvml_a, nvml_b, reason)


def slowest(links: Sequence[Link]) -> Link:
    """The bottleneck: a link of unknown bandwidth first (no ceiling can be claimed), then the
    lowest GB/s."""
    return min(links, key=lambda link: link.gbps or 0.0)


def gpu_group_link(nvml_indices: Sequence[int]) -> Link:
    """The slowest path between any two of the GPUs (the bottleneck of a ring, and of
    all-to-all); NO_LINK (kind "none", text "", gbps None) for a single GPU."""
    if len(nvml_indices) < 2:
        return NO_LINK
    gpus, reason = _read_gpus(nvml_indices)
    pairs = dict.fromkeys(tuple(sorted(p)) for p in itertools.combinations(nvml_indices, 2))
    return slowest([_pair(gpus, a, b, reason) for a, b in pairs])


def topology_matrix(nvml_indices: Sequence[int]) -> list[list[str]]:
    """`nvidia-smi topo -m` between the GPUs: "X" on the diagonal, "NV<links>", "PIX", "PXB",
    "PHB", "NODE", "SYS" or "unknown" elsewhere; rows and columns in the order given."""
    gpus, reason = _read_gpus(nvml_indices)
    return [
        ["X" if i == j else _pair(gpus, a, b, reason).text for j, b in enumerate(nvml_indices)]
        for i, a in enumerate(nvml_indices)
    ]


# --- between nodes ----------------------------------------------------------------------------


def parse_ib_rate_gbit(rate: str) -> float | None:
    """Gb/s from an InfiniBand port's `rate` file ("400 Gb/sec (4X NDR)" -> 400.0)."""
    number, unit, _ = rate.partition("Gb/sec")
    try:
        return float(number) if unit else None
    except ValueError:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _rdma_link(sys_root: Path) -> Link | None:
    """The fastest ACTIVE port under <sys_root>/class/infiniband, InfiniBand before RoCE."""
    ports = []
    for port in sorted(sys_root.glob("class/infiniband/*/ports/*")):
        rate = _read(port / "rate")
        gbit = parse_ib_rate_gbit(rate)
        if _read(port / "state").split(":")[-1].strip() == "ACTIVE" and gbit:
            is_ib = _read(port / "link_layer") in ("InfiniBand", "")
            ports.append((is_ib, gbit, f"{port.parent.parent.name} port {port.name}: {rate}"))
    if not ports:
        return None
    is_ib, gbit, where = max(ports, key=lambda port: port[:2])
    same = sum(1 for port in ports if port[:2] == (is_ib, gbit))
    count = f" ×{same}" if same > 1 else ""
    kind, label = ("infiniband", "ib") if is_ib else ("ethernet", "roce")
    detail = f"{'InfiniBand' if is_ib else 'RoCE'} {where}; {same} active at this rate"
    return Link(kind, f"{label} {gbit:g} Gb/s{count}", gbit / 8, detail)


def _is_local(peer_host: str) -> bool:
    try:
        peers = {info[4][0] for info in socket.getaddrinfo(peer_host, None)}
    except (OSError, UnicodeError):
        return False
    own = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return any(ipaddress.ip_address(p.split("%")[0]).is_loopback or p in own for p in peers)


def _routed_interface(peer_host: str) -> str | None:
    """The interface the kernel routes peer_host through (a UDP connect sends nothing)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(peer_host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            local = sock.getsockname()[0].split("%")[0]
    except (OSError, UnicodeError, IndexError):
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == local for a in addresses):
            return name
    return None


def interface_link(name: str, speed_mbps: int | None) -> Link:
    """An Ethernet interface of `speed_mbps` (psutil's unit; 0 when the driver does not say)."""
    if not speed_mbps or speed_mbps <= 0:
        return Link("ethernet", "eth", None, f"{name}: speed not reported")
    gbit = speed_mbps / 1000
    return Link("ethernet", f"eth {gbit:g} Gb/s", gbit / 8, f"{name} at {speed_mbps} Mb/s")


def network_link(peer_host: str | None, sys_root: str | Path = "/sys", rdma: bool = True) -> Link:
    """This node's link to the node of peer_host: loopback when the peer is local or None; else
    the fastest active InfiniBand/RoCE port (rdma=False skips them, for TCP-only backends such
    as Gloo); else the interface that routes to the peer. gbps is one port's rate / 8; text
    says how many such ports are active ("ib 400 Gb/s ×8")."""
    if peer_host is None or _is_local(peer_host):
        return LOOPBACK
    if rdma and (link := _rdma_link(Path(sys_root))) is not None:
        return link
    name = _routed_interface(peer_host)
    if name is None:
        return _unknown(f"no route to {peer_host}")
    stats = psutil.net_if_stats().get(name)
    return LOOPBACK if name == "lo" else interface_link(name, stats.speed if stats else None)


__all__ = [
    "LOOPBACK",
    "NO_LINK",
    "NVLINK_GENERATION_BY_NVML_VERSION",
    "PCIE_LEVELS",
    "Link",
    "gpu_group_link",
    "gpu_pair_link",
    "interface_link",
    "network_link",
    "nvlink_gbps_per_link",
    "nvlink_generation",
    "parse_ib_rate_gbit",
    "slowest",
    "topology_matrix",
]
