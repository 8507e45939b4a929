"""Review of issue 13: the relabeling engine's findings, each against the real parts.

Real loop devices (swap, btrfs), real files and xattrs, the real tree helper and svirtd as a real
process on the private bus and libvirtd. Every device, mount and swap area made here is undone in a
fixture, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd import labels
from svirtd.errors import UnsafePath
from svirtd.models import ResourceKind
from testbed.mounts import Mounts, mounted

pytestmark = pytest.mark.integration


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
