"""bench.blockdev: what a directory is stored on, over fake /proc mount tables and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.blockdev import (
    KINDS,
    Mount,
    describe,
    mount_for,
    parse_mountinfo,
    parse_proc_mounts,
    storage_of,
)


class FakeSys:
    """A /sys tree as the kernel lays it out: device directories under devices/, reached
    through the dev/block/MAJ:MIN, block/NAME and class/block/NAME symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("dev/block", "block", "class/block", "bus/virtio/drivers/virtio_blk"):
            (root / sub).mkdir(parents=True)

    def _link(self, name: str, dev: tuple[int, int], node: Path, disk: bool) -> None:
        (self.root / "dev" / "block" / f"{dev[0]}:{dev[1]}").symlink_to(node)
        (self.root / "class" / "block" / name).symlink_to(node)
        if disk:
            (self.root / "block" / name).symlink_to(node)

    def disk(
        self,
        name: str,
        dev: tuple[int, int],
        rotational: str | None = "0",
        model: str | None = None,
        driver: str | None = None,
    ) -> Path:
        node = self.root / "devices" / "pci0000:00" / "block" / name
        (node / "queue").mkdir(parents=True)
        (node / "device").mkdir()
        if rotational is not None:
            (node / "queue" / "rotational").write_text(rotational + "\n")
        if model is not None:
            (node / "device" / "model").write_text(model + "   \n")  # SCSI pads with spaces
        if driver is not None:
            (node / "device" / "driver").symlink_to(
                self.root / "bus" / "virtio" / "drivers" / driver
            )
        self._link(name, dev, node, disk=True)
        return node

    def partition(self, disk: Path, name: str, dev: tuple[int, int]) -> Path:
        node = disk / name
        node.mkdir()
        (node / "partition").write_text("1\n")
        self._link(name, dev, node, disk=False)
        return node

    def holder(
        self,
        name: str,
        dev: tuple[int, int],
        slaves: list[Path],
        dm_name: str = "",
        level: str = "",
    ) -> Path:
        """A device-mapper (dm-N) or md device over `slaves` (disk or partition directories)."""
        node = self.root / "devices" / "virtual" / "block" / name
        (node / "slaves").mkdir(parents=True)
        (node / "queue").mkdir()
        (node / "queue" / "rotational").write_text("0\n")  # dm says 0 whatever is below
        for slave in slaves:
            (node / "slaves" / slave.name).symlink_to(slave)
        if dm_name:
            (node / "dm").mkdir()
            (node / "dm" / "name").write_text(dm_name + "\n")
        if level:
            (node / "md").mkdir()
            (node / "md" / "level").write_text(level + "\n")
        self._link(name, dev, node, disk=True)
        return node


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "sys")


def mountinfo(*mounts: tuple[str, str, str, str, str]) -> str:
    """mountinfo lines from (MAJ:MIN, mount point, fstype, source, super options)."""
    return "".join(
        f"{i + 20} 1 {dev} / {point} rw,relatime shared:{i} - {fs} {source} {options}\n"
        for i, (dev, point, fs, source, options) in enumerate(mounts)
    )


# --- the mount table ----------------------------------------------------------------------------


def test_parse_mountinfo_reads_fields_past_the_optional_ones_and_unescapes() -> None:
    text = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 259:2 / / rw,relatime shared:1 master:3 - ext4 /dev/nvme0n1p2 rw,discard\n"
        "30 27 0:40 / /mnt/my\\040data rw - nfs4 srv:/exp\\040ort rw,vers=4.2\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts == [
        Mount("/proc", "proc", "proc", (0, 21), "rw"),
        Mount("/", "ext4", "/dev/nvme0n1p2", (259, 2), "rw,discard"),
        Mount("/mnt/my data", "nfs4", "srv:/exp ort", (0, 40), "rw,vers=4.2"),
    ]


def test_parse_proc_mounts_has_no_device_numbers() -> None:
    text = "/dev/sda1 / ext4 rw,relatime 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n"
    assert parse_proc_mounts(text) == [
        Mount("/", "ext4", "/dev/sda1", None, "rw,relatime"),
        Mount("/dev/shm", "tmpfs", "tmpfs", None, "rw"),
    ]


@given(st.text(alphabet=st.sampled_from("ab \t\\\n/é"), min_size=1, max_size=12))
def test_mount_points_with_any_characters_come_back_from_their_escaped_form(name: str) -> None:
    point = "/mnt/" + name
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in point)
    (mount,) = parse_mountinfo(f"30 1 8:1 / {escaped} rw - ext4 /dev/sda1 rw\n")
    assert mount.mount_point == point


def _m(point: str, fs: str = "ext4") -> Mount:
    return Mount(point, fs, "/dev/x", (8, 0), "")


def test_mount_for_takes_the_longest_containing_mount_point_by_whole_components() -> None:
    mounts = [_m("/"), _m("/data"), _m("/data/fast"), _m("/data2")]
    assert mount_for("/data/fast/x", mounts) is mounts[2]
    assert mount_for("/data/fastx", mounts) is mounts[1]  # not a prefix by components
    assert mount_for("/data2/y", mounts) is mounts[3]
    assert mount_for("/data", mounts) is mounts[1]
    assert mount_for("/home", mounts) is mounts[0]
    assert mount_for("/x", []) is None


def test_a_later_mount_on_the_same_point_hides_the_earlier() -> None:
    mounts = [_m("/"), _m("/dev/shm", "ext4"), _m("/dev/shm", "tmpfs")]
    assert mount_for("/dev/shm/a", mounts) is mounts[2]


@given(
    st.lists(st.lists(st.sampled_from(["a", "ab", "b"]), min_size=1, max_size=3), max_size=6),
    st.lists(st.sampled_from(["a", "ab", "b"]), max_size=4),
)
def test_mount_for_is_the_deepest_mount_above_the_path(
    points: list[list[str]], path: list[str]
) -> None:
    mounts = [_m("/")] + [_m("/" + "/".join(p)) for p in points]
    where = "/" + "/".join(path)
    found = mount_for(where, mounts)
    assert found is not None
    depth = len(found.mount_point.strip("/").split("/")) if found.mount_point != "/" else 0
    assert path[:depth] == (found.mount_point.strip("/").split("/") if depth else [])
    above = [p for p in points if path[: len(p)] == p]
    assert depth == max([0, *map(len, above)])


# --- classification -----------------------------------------------------------------------------


def test_nvme_partition_is_its_disk(sysfs: FakeSys) -> None:
    disk = sysfs.disk("nvme0n1", (259, 0), "0", model="Samsung SSD 980 PRO 1TB")
    sysfs.partition(disk, "nvme0n1p2", (259, 2))
    mounts = parse_mountinfo(mountinfo(("259:2", "/", "ext4", "/dev/nvme0n1p2", "rw")))
    got = describe("/home/u/results", mounts, sysfs.root, (259, 2))
    assert (got.device, got.kind, got.model, got.filesystem) == (
        "nvme0n1",
        "nvme",
        "Samsung SSD 980 PRO 1TB",
        "ext4",
    )
    assert got.mount_point == "/"
    assert "nvme0n1" in got.description and "ext4 on /" in got.description


@pytest.mark.parametrize(("flag", "kind"), [("1", "hdd"), ("0", "ssd"), (None, "unknown")])
def test_a_scsi_disk_is_what_its_rotational_flag_says(
    sysfs: FakeSys, flag: str | None, kind: str
) -> None:
    sysfs.disk("sdb", (8, 16), flag, model="ST4000NM0035")
    mounts = parse_mountinfo(mountinfo(("8:16", "/data", "xfs", "/dev/sdb", "rw")))
    got = describe("/data/x", mounts, sysfs.root, (8, 16))
    assert (got.device, got.kind, got.model, got.filesystem) == ("sdb", kind, "ST4000NM0035", "xfs")


def test_a_virtio_disk_reports_the_kernel_flag_and_says_it_is_virtual(sysfs: FakeSys) -> None:
    sysfs.disk("vda", (254, 0), "1", driver="virtio_blk")
    mounts = parse_mountinfo(mountinfo(("254:0", "/", "ext4", "/dev/vda", "rw")))
    got = describe("/tmp", mounts, sysfs.root, (254, 0))
    assert (got.device, got.kind, got.model) == ("vda", "hdd", "virtio-blk")
    assert "virtual disk" in got.description and "rotational=1" in got.description


def test_a_virtual_disk_without_a_rotational_flag_is_virtual(sysfs: FakeSys) -> None:
    sysfs.disk("xvda", (202, 0), None)
    mounts = parse_mountinfo(mountinfo(("202:0", "/", "ext4", "/dev/xvda", "rw")))
    assert describe("/x", mounts, sysfs.root, (202, 0)).kind == "virtual"


def test_device_mapper_over_an_nvme_partition(sysfs: FakeSys) -> None:
    disk = sysfs.disk("nvme1n1", (259, 4), "0", model="Micron 7450")
    part = sysfs.partition(disk, "nvme1n1p3", (259, 7))
    sysfs.holder("dm-0", (253, 0), [part], dm_name="vg0-root")
    mounts = parse_mountinfo(mountinfo(("253:0", "/", "ext4", "/dev/mapper/vg0-root", "rw")))
    got = describe("/srv", mounts, sysfs.root, (253, 0))
    assert (got.device, got.kind, got.model) == ("dm-0", "nvme", "Micron 7450")
    assert "vg0-root" in got.description and "nvme1n1" in got.description


def test_md_over_mixed_disks_is_the_slowest(sysfs: FakeSys) -> None:
    hdd = sysfs.partition(sysfs.disk("sda", (8, 0), "1", model="HDD"), "sda1", (8, 1))
    ssd = sysfs.partition(sysfs.disk("sdb", (8, 16), "0", model="SSD"), "sdb1", (8, 17))
    sysfs.holder("md0", (9, 0), [hdd, ssd], level="raid1")
    mounts = parse_mountinfo(mountinfo(("9:0", "/data", "ext4", "/dev/md0", "rw")))
    got = describe("/data", mounts, sysfs.root, (9, 0))
    assert (got.device, got.kind, got.model) == ("md0", "hdd", "HDD + SSD")
    assert "raid1" in got.description


def test_dm_over_md_over_nvme_is_followed_down(sysfs: FakeSys) -> None:
    disks = [sysfs.disk(f"nvme{i}n1", (259, i), "0", model="PM9A3") for i in range(2)]
    md = sysfs.holder("md127", (9, 127), disks, level="raid0")
    sysfs.holder("dm-1", (253, 1), [md], dm_name="crypt")
    mounts = parse_mountinfo(mountinfo(("253:1", "/scratch", "xfs", "/dev/mapper/crypt", "rw")))
    got = describe("/scratch", mounts, sysfs.root, (253, 1))
    assert (got.kind, got.model) == ("nvme", "PM9A3")


@given(st.lists(st.sampled_from(["0", "1", "nvme"]), min_size=1, max_size=4))
def test_md_kind_is_the_slowest_of_its_disks(flags: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sysfs = FakeSys(Path(tmp))
        disks = [
            sysfs.disk(
                f"nvme{i}n1" if f == "nvme" else f"sd{'abcd'[i]}",
                (8, 16 * i),
                "0" if f == "nvme" else f,
            )
            for i, f in enumerate(flags)
        ]
        sysfs.holder("md0", (9, 0), disks)
        mounts = parse_mountinfo(mountinfo(("9:0", "/d", "ext4", "/dev/md0", "rw")))
        kind = describe("/d", mounts, sysfs.root, (9, 0)).kind
    expected = "hdd" if "1" in flags else "ssd" if "0" in flags else "nvme"
    assert kind == expected


def test_btrfs_anonymous_device_falls_back_to_the_mount_source(sysfs: FakeSys) -> None:
    disk = sysfs.disk("nvme0n1", (259, 0), "0", model="WD SN850")
    sysfs.partition(disk, "nvme0n1p2", (259, 2))
    mounts = parse_mountinfo(mountinfo(("0:45", "/home", "btrfs", "/dev/nvme0n1p2", "rw")))
    got = describe("/home/u", mounts, sysfs.root, (0, 47))  # a subvolume's own anonymous st_dev
    assert (got.device, got.kind, got.model) == ("nvme0n1", "nvme", "WD SN850")


def test_mapper_source_without_numbers_is_found_by_dm_name(sysfs: FakeSys) -> None:
    sysfs.holder("dm-3", (253, 3), [sysfs.disk("sdc", (8, 32), "1")], dm_name="vg-data")
    mounts = parse_proc_mounts("/dev/mapper/vg-data /data ext4 rw 0 0\n")
    got = describe("/data", mounts, sysfs.root, None)
    assert (got.device, got.kind) == ("dm-3", "hdd")


@pytest.mark.parametrize(
    ("fs", "source", "kind"),
    [
        ("nfs4", "filer:/export/data", "network"),
        ("cifs", "//nas/share", "network"),
        ("fuse.sshfs", "u@host:/d", "network"),
        ("lustre", "10.0.0.1@tcp:/fs", "network"),
        ("tmpfs", "tmpfs", "ram"),
        ("ramfs", "none", "ram"),
        ("virtiofs", "hostshare", "virtual"),
        ("proc", "proc", "unknown"),
    ],
)
def test_filesystems_without_a_local_disk(sysfs: FakeSys, fs: str, source: str, kind: str) -> None:
    mounts = parse_mountinfo(mountinfo(("0:30", "/mnt/d", fs, source, "rw")))
    got = describe("/mnt/d/x", mounts, sysfs.root, (0, 30))
    assert (got.kind, got.device, got.filesystem) == (kind, source, fs)
    if kind == "ram":
        assert "RAM" in got.description


def test_overlay_takes_the_kind_of_its_upper_directory(sysfs: FakeSys) -> None:
    sysfs.disk("nvme0n1", (259, 0), "0", model="Fast")
    text = mountinfo(
        ("259:0", "/", "ext4", "/dev/nvme0n1", "rw"),
        ("0:50", "/merged", "overlay", "overlay", "rw,lowerdir=/l,upperdir=/var/up,workdir=/var/w"),
    )
    got = describe("/merged/x", parse_mountinfo(text), sysfs.root, (0, 50))
    assert (got.filesystem, got.kind, got.device, got.model) == (
        "overlay",
        "nvme",
        "nvme0n1",
        "Fast",
    )
    assert got.description.startswith("overlay on /merged")


def test_overlay_root_of_a_container_is_virtual(sysfs: FakeSys) -> None:
    text = mountinfo(
        ("0:50", "/", "overlay", "overlay", "rw,lowerdir=/l,upperdir=/var/lib/docker/x/diff"),
    )
    got = describe("/results", parse_mountinfo(text), sysfs.root, (0, 50))
    assert (got.kind, got.filesystem) == ("virtual", "overlay")


def test_ram_and_loop_block_devices(sysfs: FakeSys) -> None:
    sysfs.disk("zram0", (252, 0), "0")
    loop = sysfs.disk("loop3", (7, 3), "0")
    (loop / "loop").mkdir()
    (loop / "loop" / "backing_file").write_text("/var/img.squashfs\n")
    mounts = parse_mountinfo(
        mountinfo(
            ("252:0", "/z", "ext4", "/dev/zram0", "rw"),
            ("7:3", "/snap", "squashfs", "/dev/loop3", "ro"),
        )
    )
    assert describe("/z", mounts, sysfs.root, (252, 0)).kind == "ram"
    snap = describe("/snap/a", mounts, sysfs.root, (7, 3))
    assert snap.kind == "virtual" and "/var/img.squashfs" in snap.description


def test_no_mount_and_no_block_device_are_unknown(sysfs: FakeSys) -> None:
    assert describe("/x", [], sysfs.root).kind == "unknown"
    mounts = parse_mountinfo(mountinfo(("8:99", "/", "ext4", "/dev/sdz", "rw")))
    got = describe("/x", mounts, sysfs.root, (8, 99))
    assert got.kind == "unknown" and "/dev/sdz" in got.description


def test_a_cycle_in_slaves_does_not_hang(sysfs: FakeSys) -> None:
    a = sysfs.holder("dm-0", (253, 0), [])
    b = sysfs.holder("dm-1", (253, 1), [a])
    (a / "slaves" / "dm-1").symlink_to(b)
    mounts = parse_mountinfo(mountinfo(("253:0", "/", "ext4", "/dev/dm-0", "rw")))
    assert describe("/", mounts, sysfs.root, (253, 0)).kind in KINDS


# --- this machine -------------------------------------------------------------------------------


def test_storage_of_this_machine(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    got = storage_of(link)
    assert got.path == os.path.realpath(tmp_path)
    assert got.kind in KINDS and got.filesystem and got.description
    if Path("/dev/shm").is_dir():
        shm = storage_of("/dev/shm")
        assert (shm.filesystem, shm.kind) == ("tmpfs", "ram")
