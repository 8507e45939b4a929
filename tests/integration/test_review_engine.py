"""Review of issue 13: the relabeling engine's findings, each against the real parts.

Real loop devices (swap, btrfs), real files and xattrs, the real tree helper and svirtd as a real
process on the private bus and libvirtd. Every device, mount and swap area made here is undone in a
fixture, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svirtd import labels
from svirtd.errors import UnsafePath
from svirtd.models import ResourceKind
from testbed.bus import PrivateBus
from testbed.client import CallFailed
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.mounts import Mounts, mounted
from tests.helpers import call, run, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]


# -- finding 11: block devices the host uses --------------------------------------------------------


@pytest.fixture
def swap_device(tmp_path: Path, mounts: Mounts) -> Iterator[str]:
    """A loop device the host uses as swap (swapoff'ed before `mounts` detaches it)."""
    dev = mounts.loop_device(tmp_path / "swap.img", 4 * 1024 * 1024)
    subprocess.run(["mkswap", dev], capture_output=True, check=True)
    subprocess.run(["swapon", dev], capture_output=True, check=True)
    try:
        yield dev
    finally:
        subprocess.run(["swapoff", dev], capture_output=True)
    assert dev not in Path("/proc/swaps").read_text(), f"{dev} is still in use as swap"


@pytest.fixture
def btrfs_device(tmp_path: Path, mounts: Mounts) -> Iterator[str]:
    """A loop device holding a mounted btrfs (its mountinfo line names an anonymous 0:NN device)."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.fail("mkfs.btrfs is missing: scripts/install-deps.sh installs btrfs-progs")
    dev = mounts.loop_device(tmp_path / "btrfs.img", 128 * 1024 * 1024)
    subprocess.run(["mkfs.btrfs", "-q", dev], capture_output=True, check=True)
    target = tmp_path / "btrfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "btrfs", dev, str(target)], capture_output=True, check=True)
    try:
        yield dev
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert not mounted(target), f"{target} is still mounted"


def test_a_block_device_the_host_uses_as_swap_is_refused(swap_device: str) -> None:
    with pytest.raises(UnsafePath, match="the host uses it"):
        labels.open_resource(swap_device, ResourceKind.BLOCK)


def test_a_block_device_holding_a_mounted_btrfs_is_refused(btrfs_device: str) -> None:
    with pytest.raises(UnsafePath, match="the host uses it"):
        labels.open_resource(btrfs_device, ResourceKind.BLOCK)


def test_a_block_device_nobody_uses_is_accepted(tmp_path: Path, mounts: Mounts) -> None:
    dev = mounts.loop_device(tmp_path / "free.img")
    with labels.open_resource(dev, ResourceKind.BLOCK) as opened:
        assert opened.path == dev



def test_each_check_sees_the_host_use_on_its_own(swap_device: str, btrfs_device: str) -> None:
    """Defense in depth: the exclusive-open probe answers first, so the other checks are asked directly."""
    for dev, check in ((swap_device, labels._swap_use), (btrfs_device, labels._mount_use)):
        devices = labels.block_devices(os.stat(dev))
        assert check(devices), (dev, check.__name__)
        fd = os.open(dev, os.O_PATH | os.O_CLOEXEC)
        try:
            assert "the kernel holds it" in labels._claimed(fd)
        finally:
            os.close(fd)


# -- finding 8: symlinked parents an unprivileged user controls -------------------------------------

NOBODY = 65534


def test_a_directory_link_a_user_owns_does_not_redirect_a_relabel(tmp_path: Path) -> None:
    """A user who owns a directory on A's disk path points it at B's directory: refused, naming the link
    and its owner, and B's disk is never reached."""
    base = tmp_path / "images"
    (base / "b").mkdir(parents=True)
    b_disk = base / "b" / "disk.img"
    b_disk.write_bytes(b"B")
    user_dir = base / "u"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)
    link = user_dir / "sub"
    link.symlink_to(base / "b")
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafePath) as exc:
        labels.open_resource(str(link / "disk.img"), ResourceKind.FILE)
    assert str(link) in str(exc.value) and f"uid {NOBODY}" in str(exc.value)


def test_a_root_owned_link_in_a_directory_others_can_write_is_not_followed(tmp_path: Path) -> None:
    """The link is root's, but whoever can write its directory can swap it for their own at any time."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "disk.img").write_bytes(b"x")
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    (drop / "images").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="writable by others"):
        labels.open_resource(str(drop / "images" / "disk.img"), ResourceKind.FILE)


def test_an_admins_link_in_a_root_only_directory_is_followed(tmp_path: Path) -> None:
    """/var/lib/libvirt/images -> /srv/images keeps working: root's link, in a directory only root writes."""
    (tmp_path / "srv" / "images").mkdir(parents=True)
    disk = tmp_path / "srv" / "images" / "disk.img"
    disk.write_bytes(b"x")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "images").symlink_to("../srv/images")  # relative, with '..'
    with labels.open_resource(str(tmp_path / "lib" / "images" / "disk.img"), ResourceKind.FILE) as opened:
        assert opened.path == str(disk) and opened.st.st_ino == disk.stat().st_ino


def test_a_guest_cannot_be_handed_another_guests_disk_through_a_users_link(bus: PrivateBus, guests: GuestFactory,
                                                                          svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    b_disk = make_disk(d / "b" / "b.img")
    user_dir = d / "u"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)
    (user_dir / "sub").symlink_to(d / "b")
    os.chown(user_dir / "sub", NOBODY, NOBODY, follow_symlinks=False)
    svirtd(default_confined=False)
    a = guests.new(disk_specs=[Disk(user_dir / "sub" / "b.img", "vda")])
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", a.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.UnsafePath", exc.value
    assert str(user_dir / "sub") in exc.value.text
    assert xattr(b_disk) is None and run(call(bus, "List")) == []
