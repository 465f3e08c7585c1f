"""What a directory is stored on: its mount, filesystem, block device, the device's kind and model.

Storage figures mean little without the device under them, so every storage row says what it
measured. The facts come from the kernel alone:

- the mount: the longest mount point of /proc/self/mountinfo (or /proc/mounts) containing the
  directory's resolved path (a later mount of the same point hides an earlier one);
- the block device: the directory's st_dev (major:minor) -> /sys/dev/block/MAJ:MIN; where that is
  no block device (btrfs and other anonymous-device filesystems) the mount's own major:minor,
  then its source (/dev/NAME, /dev/mapper/NAME). A partition stands for its disk; device-mapper
  and md devices for the disks under them (their `slaves`, followed down);
- the kind: network filesystems are "network", tmpfs/ramfs (and zram, brd) "ram", overlay the
  kind of its upper directory's filesystem where that is visible (else "virtual"); a disk is
  "nvme" by name, else the kernel's rotational flag: 1 "hdd", 0 "ssd". Virtual disks (virtio
  vdX, Xen xvdX) get that flag too, as the kernel reports it (virtio sets rotational whatever the
  host's medium is, and the description says so); "virtual" only where the flag is missing.

`describe(path, mounts, sys_root, dev)` is a pure function of the mount table and a /sys tree, so
tests feed it fake ones; `storage_of(directory)` asks the running kernel.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Filesystems whose data lives on another machine.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs",
        "gpfs", "beegfs", "panfs", "wekafs", "orangefs", "pvfs2", "davfs",
        "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs",
        "fuse.glusterfs", "fuse.ceph-fuse", "fuse.ceph", "fuse.blobfuse", "fuse.blobfuse2",
        "fuse.goofys", "fuse.mountpoint-s3", "fuse.davfs",
    }
)  # fmt: skip
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
# A host directory shared into a virtual machine or container: its medium is not visible here.
VIRTUAL_FILESYSTEMS = frozenset({"virtiofs", "vboxsf", "vmhgfs", "fuse.vmhgfs-fuse"})
OVERLAY_FILESYSTEMS = frozenset({"overlay", "aufs"})
KINDS = ("nvme", "ssd", "hdd", "network", "ram", "virtual", "unknown")
# Where a device-mapper or md device spans disks of different kinds, the slowest names it.
_SLOWEST_FIRST = ("hdd", "network", "unknown", "virtual", "ssd", "nvme", "ram")
# Block devices whose "disk" is memory.
_RAM_DISK = re.compile(r"(zram|ram)\d+$")
# Device-mapper and md nesting is shallow; a cycle in a broken /sys tree must not hang.
_MAX_DEPTH = 8


@dataclass(frozen=True)
class Mount:
    mount_point: str
    filesystem: str
    source: str
    dev: tuple[int, int] | None  # major:minor from mountinfo; None from /proc/mounts
    options: str  # superblock options (mountinfo) or all options (/proc/mounts)


@dataclass(frozen=True)
class Disk:
    """A block device below a filesystem, followed down to the disks that hold the data."""

    name: str  # the device the filesystem is on, e.g. "nvme0n1", "dm-0", "md0", "vda"
    kind: str
    model: str
    detail: str  # how the kind was found, and what it sits on


@dataclass(frozen=True)
class Storage:
    path: str  # the directory, symlinks resolved
    mount_point: str
    filesystem: str
    device: str  # block device name, or the mount source where there is none
    kind: str  # one of KINDS
    model: str
    description: str  # one line for people: device, kind, model, filesystem and mount


def _unescape(field: str) -> str:
    """mountinfo and /proc/mounts write space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of /proc/self/mountinfo, in order:
    `id parent MAJ:MIN root mount_point options [optional...] - fstype source super_options`."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        major, _, minor = fields[2].partition(":")
        dev = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
        options = fields[sep + 3] if len(fields) > sep + 3 else ""
        mounts.append(
            Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]), dev, options)
        )
    return mounts


def parse_proc_mounts(text: str) -> list[Mount]:
    """The mounts of /proc/mounts (`source mount_point fstype options 0 0`), which has no
    device numbers."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(
                Mount(_unescape(fields[1]), fields[2], _unescape(fields[0]), None, fields[3])
            )
    return mounts


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (absolute, symlinks resolved): the longest mount point that is
    `path` or one of its parent directories; of equal ones the last mounted (it hides the rest)."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/")
        contains = path in (mount.mount_point, point) or path.startswith(point + "/")
        if contains and (best is None or len(point) >= len(best.mount_point.rstrip("/"))):
            best = mount
    return best


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _disk_dir(sys_root: Path, dev: tuple[int, int] | None, source: str) -> Path | None:
    """The /sys directory of the block device: by number, else by the mount source's name."""
    if dev is not None and dev[0] != 0:
        by_number = sys_root / "dev" / "block" / f"{dev[0]}:{dev[1]}"
        if by_number.exists():
            return by_number.resolve()
    if not source.startswith("/dev/"):
        return None
    name = source.rsplit("/", 1)[-1]
    if source.startswith("/dev/mapper/"):  # device-mapper names map to dm-N through dm/name
        for dm in sorted((sys_root / "block").glob("dm-*")):
            if _read(dm / "dm" / "name") == name:
                return dm.resolve()
    by_name = sys_root / "class" / "block" / name
    return by_name.resolve() if by_name.exists() else None


def _whole_disk(node: Path) -> Path:
    """A partition's /sys directory stands for its disk (the directory above it)."""
    return node.parent if (node / "partition").exists() else node


def _disk_model(node: Path) -> str:
    model = _read(node / "device" / "model")
    if model:
        return " ".join(model.split())
    driver = node / "device" / "driver"
    driver_name = driver.resolve().name if driver.exists() else ""
    return {"virtio_blk": "virtio-blk", "vbd": "xen-blkfront"}.get(driver_name, "")


def _is_virtual_disk(node: Path) -> bool:
    return bool(re.fullmatch(r"x?vd[a-z]+", node.name)) or _disk_model(node) in (
        "virtio-blk",
        "xen-blkfront",
    )


def classify_disk(node: Path, depth: int = 0) -> Disk:
    """Kind and model of the block device at /sys directory `node` (a partition counts as its
    disk), following device-mapper and md devices down to their disks."""
    node = _whole_disk(node)
    name = node.name
    slaves = sorted((node / "slaves").iterdir()) if (node / "slaves").is_dir() else []
    if slaves and depth < _MAX_DEPTH:
        below = [classify_disk(s.resolve(), depth + 1) for s in slaves]
        kind = min((d.kind for d in below), key=_SLOWEST_FIRST.index)
        models = " + ".join(dict.fromkeys(d.model for d in below if d.model))
        label = _read(node / "dm" / "name") or _read(node / "md" / "level")
        what = "device-mapper" if name.startswith("dm-") else "md" if name.startswith("md") else ""
        head = " ".join(x for x in (what, label) if x)
        parts = ", ".join(f"{d.name} ({d.detail})" for d in below)
        return Disk(name, kind, models, f"{head} over {parts}" if head else f"over {parts}")
    if _RAM_DISK.match(name):
        return Disk(name, "ram", _disk_model(node), "a RAM-backed block device")
    if name.startswith("loop"):
        backing = _read(node / "loop" / "backing_file")
        return Disk(name, "virtual", "", f"loop device over {backing or 'an unknown file'}")
    model = _disk_model(node)
    if name.startswith("nvme"):
        return Disk(name, "nvme", model, "NVMe")
    rotational = _read(node / "queue" / "rotational")
    virtual = _is_virtual_disk(node)
    if rotational not in ("0", "1"):
        kind = "virtual" if virtual else "unknown"
        return Disk(name, kind, model, "no rotational flag in /sys")
    kind = "hdd" if rotational == "1" else "ssd"
    detail = f"kernel: rotational={rotational}"
    if virtual:
        detail = (
            f"virtual disk; kernel: rotational={rotational}, which need not match the host's medium"
        )
    return Disk(name, kind, model, detail)


def describe(
    path: str,
    mounts: list[Mount],
    sys_root: Path,
    dev: tuple[int, int] | None = None,
    depth: int = 0,
) -> Storage:
    """What `path` (absolute, symlinks resolved) is stored on, from a mount table and a /sys tree.
    `dev` is the path's st_dev as (major, minor), where known; the mount's own numbers otherwise.
    """
    mount = mount_for(path, mounts)
    if mount is None:
        return Storage(path, "", "", "", "unknown", "", f"{path}: no mount found")
    fs, source, where = mount.filesystem, mount.source, mount.mount_point

    def plain(kind: str, what: str) -> Storage:
        return Storage(path, where, fs, source, kind, "", f"{fs} on {where}: {what}")

    if fs in NETWORK_FILESYSTEMS:
        return plain("network", f"network filesystem {source}")
    if fs in RAM_FILESYSTEMS:
        return plain("ram", "the data lives in RAM")
    if fs in VIRTUAL_FILESYSTEMS:
        return plain("virtual", f"a host directory shared into this machine ({source})")
    if fs in OVERLAY_FILESYSTEMS:
        upper = re.search(r"(?:^|,)upperdir=([^,]*)", mount.options)
        upper_dir = _unescape(upper.group(1)) if upper else ""
        under = mount_for(upper_dir, mounts) if upper_dir.startswith("/") else None
        if under is None or under.filesystem in OVERLAY_FILESYSTEMS or depth >= _MAX_DEPTH:
            return plain("virtual", "overlay whose upper directory is not visible here")
        inner = describe(upper_dir, mounts, sys_root, None, depth + 1)
        return Storage(
            path,
            where,
            fs,
            inner.device,
            inner.kind,
            inner.model,
            f"{fs} on {where}, upper directory on {inner.description}",
        )
    node = None
    for numbers in (dev, mount.dev):
        node = node or _disk_dir(sys_root, numbers, "")
    node = node or _disk_dir(sys_root, None, source)
    if node is None:
        return plain("unknown", f"{source}, no block device found in /sys")
    disk = classify_disk(node)
    shown = (
        f"{disk.name} ({disk.model}; {disk.detail})"
        if disk.model
        else f"{disk.name} ({disk.detail})"
    )
    return Storage(path, where, fs, disk.name, disk.kind, disk.model, f"{fs} on {where}: {shown}")


def storage_of(directory: str | os.PathLike[str]) -> Storage:
    """What `directory` is stored on, from this machine's mount table and /sys."""
    path = os.path.realpath(directory)
    st = os.stat(path)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        try:
            mounts = parse_proc_mounts(Path("/proc/mounts").read_text())
        except OSError:
            mounts = []
    return describe(path, mounts, Path("/sys"), dev)
