"""bench.topology: NVLink/PCIe paths between GPUs against a fake pynvml, the mapping tables
against pynvml's own constants, and the network link on a fake /sys tree."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from bench import nvml, topology
from bench.pcie import link_gbps
from bench.topology import (
    LOOPBACK,
    NO_LINK,
    NVLINK_GENERATION_BY_NVML_VERSION,
    PCIE_LEVELS,
    Link,
    gpu_group_link,
    gpu_pair_link,
    interface_link,
    network_link,
    nvlink_gbps_per_link,
    nvlink_generation,
    parse_ib_rate_gbit,
    slowest,
    topology_matrix,
)

# --- pure tables ------------------------------------------------------------------------------


def test_nvml_version_enum_maps_to_generation() -> None:
    names = [name for name in dir(pynvml) if re.fullmatch(r"NVML_NVLINK_VERSION_\d+_\d+", name)]
    assert len(names) >= 7  # 1.0 .. 5.0 at least
    for name in names:
        major = int(name.split("_")[3])
        assert NVLINK_GENERATION_BY_NVML_VERSION[getattr(pynvml, name)] == major, name
    assert nvlink_generation(pynvml.NVML_NVLINK_VERSION_INVALID) is None


@pytest.mark.parametrize(
    ("version", "arch", "generation"),
    [
        (5, pynvml.NVML_DEVICE_ARCH_AMPERE, 3),  # A100 reports 3.1
        (6, pynvml.NVML_DEVICE_ARCH_HOPPER, 4),
        (7, pynvml.NVML_DEVICE_ARCH_HOPPER, 4),  # drivers that report 5.0 for H100
        (7, pynvml.NVML_DEVICE_ARCH_BLACKWELL, 5),
        (6, None, 4),
        (99, pynvml.NVML_DEVICE_ARCH_HOPPER, None),
        (None, pynvml.NVML_DEVICE_ARCH_HOPPER, None),
    ],
)
def test_nvlink_generation(version: int | None, arch: int | None, generation: int | None) -> None:
    assert nvlink_generation(version, arch) == generation


def test_nvlink_gbps_per_link() -> None:
    assert [nvlink_gbps_per_link(g) for g in (1, 2, 3, 4, 5, 6)] == [20, 25, 25, 25, 50, None]
    assert 18 * (nvlink_gbps_per_link(4) or 0) == 450  # H100 SXM, one direction
    assert 12 * (nvlink_gbps_per_link(3) or 0) == 300  # A100 SXM


def test_pcie_levels_follow_nvml_constants() -> None:
    labels = {
        pynvml.NVML_TOPOLOGY_INTERNAL: "PIX",
        pynvml.NVML_TOPOLOGY_SINGLE: "PIX",
        pynvml.NVML_TOPOLOGY_MULTIPLE: "PXB",
        pynvml.NVML_TOPOLOGY_HOSTBRIDGE: "PHB",
        pynvml.NVML_TOPOLOGY_NODE: "NODE",
        pynvml.NVML_TOPOLOGY_SYSTEM: "SYS",
    }
    assert {level: label for level, (label, _) in PCIE_LEVELS.items()} == labels


def test_slowest_prefers_unknown_then_lowest() -> None:
    nv, pxb = Link("nvlink", "NV18", 450.0), Link("pcie", "PXB", 31.5)
    unknown = Link("unknown", "unknown", None)
    assert slowest([nv, pxb]) == pxb
    assert slowest([pxb, nv, unknown]) == unknown


# --- a fake NVML ------------------------------------------------------------------------------

SWITCH_PCI = (0, 0xC0, 0)


def _link(peer: tuple[int, int, int], version: int = 4, active: bool = True) -> dict[str, Any]:
    return {"peer": peer, "version": version, "active": active}


def _gpu(bus: int, links: list[dict[str, Any]], pcie: tuple[int, int] = (4, 16)) -> dict:
    return {"pci": (0, bus, 0), "links": links, "pcie": pcie}


class NvmlError(Exception):
    pass


def fake_pynvml(
    gpus: list[dict[str, Any]],
    levels: dict[frozenset[int], int] | None = None,
    arch: int = pynvml.NVML_DEVICE_ARCH_AMPERE,
    remote_type: bool = True,
) -> SimpleNamespace:
    """A pynvml with the calls bench.topology makes; handles are the GPU indices. Queries
    beyond a GPU's links or of an unknown pair raise, as pynvml does."""

    def link(handle: int, index: int) -> dict[str, Any]:
        links = gpus[handle]["links"]
        if index >= len(links):
            raise NvmlError("invalid argument")
        return links[index]

    def handle_by_index(index: int) -> int:
        if index >= len(gpus):
            raise NvmlError("invalid argument")
        return index

    def pci(bus_tuple: tuple[int, int, int]) -> SimpleNamespace:
        return SimpleNamespace(domain=bus_tuple[0], bus=bus_tuple[1], device=bus_tuple[2])

    gpu_pcis = {gpu["pci"] for gpu in gpus}
    fake = SimpleNamespace(
        NVML_NVLINK_MAX_LINKS=18,
        NVML_NVLINK_DEVICE_TYPE_GPU=0,
        NVML_NVLINK_DEVICE_TYPE_SWITCH=2,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=handle_by_index,
        nvmlDeviceGetPciInfo=lambda h: pci(gpus[h]["pci"]),
        nvmlDeviceGetArchitecture=lambda h: arch,
        nvmlDeviceGetNvLinkState=lambda h, i: int(link(h, i)["active"]),
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, i: pci(link(h, i)["peer"]),
        nvmlDeviceGetNvLinkVersion=lambda h, i: link(h, i)["version"],
        nvmlDeviceGetMaxPcieLinkGeneration=lambda h: gpus[h]["pcie"][0],
        nvmlDeviceGetMaxPcieLinkWidth=lambda h: gpus[h]["pcie"][1],
        nvmlDeviceGetTopologyCommonAncestor=lambda a, b: (levels or {})[frozenset((a, b))],
    )
    if remote_type:
        fake.nvmlDeviceGetNvLinkRemoteDeviceType = lambda h, i: (
            0 if link(h, i)["peer"] in gpu_pcis else 2
        )
    return fake


@pytest.fixture
def use_fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(fake: Any) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(nvml, "_init_done", False)
        monkeypatch.setattr(nvml, "_init_reason", None)

    return install


def direct_box() -> SimpleNamespace:
    """GPU 0 and 1 share 4 NVLink 3 links, 0 and 2 share 2 (plus one inactive), 1 and 2 and
    everything with GPU 3 go over PCIe; GPU 3 sits in a Gen3 slot."""
    pcis = [(0, bus, 0) for bus in (0x10, 0x20, 0x30, 0x40)]
    gpus = [
        _gpu(0x10, [_link(pcis[1])] * 4 + [_link(pcis[2])] * 2 + [_link(pcis[2], active=False)]),
        _gpu(0x20, [_link(pcis[0])] * 4),
        _gpu(0x30, [_link(pcis[0])] * 2),
        _gpu(0x40, [], pcie=(3, 16)),
    ]
    levels = {frozenset((1, 2)): 20, frozenset((0, 3)): 50, frozenset((1, 3)): 30}
    levels[frozenset((2, 3))] = 40
    return fake_pynvml(gpus, levels)


def test_direct_nvlink_counts_active_links_to_the_peer(use_fake: Any) -> None:
    use_fake(direct_box())
    assert gpu_pair_link(0, 1) == Link("nvlink", "NV4", 100.0, "NVLink 3, 4 links × 25.0 GB/s")
    assert gpu_pair_link(2, 0).text == "NV2"
    assert gpu_pair_link(0, 2).gbps == 50.0


def test_pcie_path_takes_the_slower_gpu_link(use_fake: Any) -> None:
    use_fake(direct_box())
    sys_path = gpu_pair_link(0, 3)
    assert (sys_path.kind, sys_path.text, sys_path.gbps) == ("pcie", "SYS", link_gbps(3, 16))
    assert "Gen3 x16" in sys_path.detail
    assert gpu_pair_link(1, 2).gbps == link_gbps(4, 16)


def test_group_link_is_the_slowest_pair(use_fake: Any) -> None:
    use_fake(direct_box())
    assert gpu_group_link([0, 1]).text == "NV4"
    assert gpu_group_link([0, 1, 2]).text == "PXB"  # 1-2 over PCIe beats NV2 and NV4 down
    assert gpu_group_link([0, 1, 2, 3]).gbps == link_gbps(3, 16)


def test_group_of_one_gpu_has_no_link(use_fake: Any) -> None:
    use_fake(direct_box())
    assert gpu_group_link([2]) == NO_LINK
    assert gpu_group_link([]) == NO_LINK
    assert gpu_group_link([1, 1]).kind == "same-gpu"


def test_topology_matrix(use_fake: Any) -> None:
    use_fake(direct_box())
    assert topology_matrix([0, 1, 2, 3]) == [
        ["X", "NV4", "NV2", "SYS"],
        ["NV4", "X", "PXB", "PHB"],
        ["NV2", "PXB", "X", "NODE"],
        ["SYS", "PHB", "NODE", "X"],
    ]
    assert topology_matrix([3, 0]) == [["X", "SYS"], ["SYS", "X"]]


@pytest.mark.parametrize("remote_type", [True, False])
def test_nvswitch_reaches_every_gpu_over_all_links(use_fake: Any, remote_type: bool) -> None:
    # H100 HGX: 18 links to the switches, NVML reporting 5.0 (enum 7) on some drivers.
    gpus = [_gpu(bus, [_link(SWITCH_PCI, version=7)] * 18) for bus in (0x10, 0x20, 0x30)]
    gpus.append(_gpu(0x40, [_link(SWITCH_PCI, version=7)] * 12))  # a GPU with links down
    use_fake(fake_pynvml(gpus, arch=pynvml.NVML_DEVICE_ARCH_HOPPER, remote_type=remote_type))
    link = gpu_pair_link(0, 2)
    assert (link.kind, link.text, link.gbps) == ("nvlink", "NV18", 450.0)
    assert "NVSwitch" in link.detail
    assert gpu_group_link([0, 1, 2, 3]).text == "NV12"


def test_blackwell_nvswitch(use_fake: Any) -> None:
    gpus = [_gpu(bus, [_link(SWITCH_PCI, version=7)] * 18) for bus in (0x10, 0x20)]
    use_fake(fake_pynvml(gpus, arch=pynvml.NVML_DEVICE_ARCH_BLACKWELL))
    assert gpu_pair_link(0, 1).gbps == 900.0


def test_unsupported_queries_give_unknown(use_fake: Any) -> None:
    fake = direct_box()
    del fake.nvmlDeviceGetTopologyCommonAncestor
    use_fake(fake)
    assert gpu_pair_link(0, 3).kind == "unknown"
    assert gpu_pair_link(0, 1).text == "NV4"  # NVLink needs no PCIe path
    assert gpu_pair_link(0, 9).kind == "unknown"  # no such GPU
    assert gpu_group_link([0, 1, 3]).gbps is None


def test_without_nvml_everything_is_unknown(use_fake: Any) -> None:
    def broken_init() -> None:
        raise NvmlError("driver not loaded")

    use_fake(SimpleNamespace(nvmlInit=broken_init))
    link = gpu_group_link([0, 1])
    assert (link.kind, link.gbps) == ("unknown", None)
    assert "driver not loaded" in link.detail
    assert topology_matrix([0, 1]) == [["X", "unknown"], ["unknown", "X"]]


# --- between nodes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "gbit"),
    [
        ("400 Gb/sec (4X NDR)", 400.0),
        ("56 Gb/sec (4X FDR)", 56.0),
        ("2.5 Gb/sec (1X SDR)", 2.5),
        ("", None),
        ("fast", None),
    ],
)
def test_parse_ib_rate(rate: str, gbit: float | None) -> None:
    assert parse_ib_rate_gbit(rate) == gbit


def _port(root: Path, device: str, port: int, state: str, rate: str, layer: str) -> None:
    folder = root / "class" / "infiniband" / device / "ports" / str(port)
    folder.mkdir(parents=True)
    (folder / "state").write_text(state + "\n")
    (folder / "rate").write_text(rate + "\n")
    (folder / "link_layer").write_text(layer + "\n")


TEST_NET = "192.0.2.1"  # RFC 5737: never routed; connecting a UDP socket sends nothing


def test_active_infiniband_ports(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "4: ACTIVE", "400 Gb/sec (4X NDR)", "InfiniBand")
    _port(tmp_path, "mlx5_1", 1, "4: ACTIVE", "400 Gb/sec (4X NDR)", "InfiniBand")
    _port(tmp_path, "mlx5_2", 1, "1: DOWN", "800 Gb/sec (4X XDR)", "InfiniBand")
    _port(tmp_path, "mlx5_3", 1, "4: ACTIVE", "800 Gb/sec", "Ethernet")  # RoCE
    link = network_link(TEST_NET, sys_root=tmp_path)
    assert (link.kind, link.text, link.gbps) == ("infiniband", "ib 400 Gb/s ×2", 50.0)
    assert "mlx5_0" in link.detail


def test_roce_port(tmp_path: Path) -> None:
    _port(tmp_path, "mlx5_0", 1, "4: ACTIVE", "100 Gb/sec (4X EDR)", "Ethernet")
    link = network_link(TEST_NET, sys_root=tmp_path)
    assert (link.kind, link.text, link.gbps) == ("ethernet", "roce 100 Gb/s", 12.5)


@pytest.mark.parametrize("rdma", [True, False])
def test_routed_ethernet_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rdma: bool
) -> None:
    if not rdma:  # an active IB port that a TCP-only backend does not use
        _port(tmp_path, "mlx5_0", 1, "4: ACTIVE", "400 Gb/sec (4X NDR)", "InfiniBand")
    _port(tmp_path, "mlx5_9", 1, "1: DOWN", "400 Gb/sec (4X NDR)", "InfiniBand")
    monkeypatch.setattr(topology, "_routed_interface", lambda host: "eth7")
    stats = {"eth7": SimpleNamespace(speed=25000)}
    monkeypatch.setattr(topology.psutil, "net_if_stats", lambda: stats)
    link = network_link(TEST_NET, sys_root=tmp_path, rdma=rdma)
    assert (link.kind, link.text, link.gbps) == ("ethernet", "eth 25 Gb/s", 3.125)


def test_no_route_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "_routed_interface", lambda host: None)
    link = network_link(TEST_NET, sys_root=tmp_path)
    assert (link.kind, link.gbps, link.detail) == ("unknown", None, f"no route to {TEST_NET}")


def test_interface_without_speed() -> None:
    assert interface_link("eth0", 0) == Link("ethernet", "eth", None, "eth0: speed not reported")


@pytest.mark.parametrize("peer", [None, "127.0.0.1", "localhost", "::1"])
def test_local_peer_is_loopback(peer: str | None) -> None:
    assert network_link(peer) == LOOPBACK


def test_real_network_link_does_not_raise(tmp_path: Path) -> None:
    link = network_link(TEST_NET, sys_root=tmp_path)
    assert link.kind in ("ethernet", "unknown")
    assert network_link(TEST_NET).kind in ("infiniband", "ethernet", "unknown")
