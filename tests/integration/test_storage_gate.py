"""The storage gate asks the storage itself, not the kernel's memory of it (real FUSE mount)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.errors import StorageNotResponding
from svirtd.mount_table import MountTable
from svirtd.storage_gate import INLINE_MAX_PATHS, LOCAL_FSTYPES, StorageGate
from testbed.mounts import Mounts


@pytest.fixture
def fuse_mounts() -> Iterator[Mounts]:
    m = Mounts()
    yield m
    problems = m.teardown()
    assert not problems, problems


def test_a_stopped_server_is_noticed_while_the_kernel_still_caches_its_attributes(tmp_path: Path,
                                                                                  fuse_mounts: Mounts) -> None:
    """bindfs keeps libfuse's 1 s attribute cache: a plain stat() of a file looked at a moment ago is
    answered by the kernel although the server is stopped; the open() that follows would then wait
    for it forever. The gate must see the stopped server at once."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "disk.img").write_bytes(b"x")
    daemon = fuse_mounts.bindfs(src, mnt)
    disk = str(mnt / "disk.img")
    gate = StorageGate(timeout=1.0, table=MountTable())

    async def scenario() -> float:
        await gate.ensure([disk], "probe while it answers")  # starts the helper; the server answers
        os.stat(disk)  # the kernel now holds the file's attributes
        os.kill(daemon.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(StorageNotResponding, match="has not answered"):
            await gate.ensure([disk], "probe while it is stopped")
        return time.monotonic() - t0

    try:
        took = asyncio.run(scenario())
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        gate.close()
    assert took < 5, f"the gate took {took:.1f}s to notice"


def test_local_files_need_no_helper_and_no_thread(tmp_path: Path) -> None:
    """Files on this host's own filesystems (here ext4, or whatever holds the test's tmp dir if it is
    local) cannot hang: no helper process is asked, and a small read runs on the event loop."""
    table = MountTable()
    mount = table.mount_of(str(tmp_path))
    assert mount is not None
    if mount.fstype not in LOCAL_FSTYPES:
        pytest.fail(f"the test's tmp dir lies on {mount.fstype}: run it where tmp is local storage")
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    gate = StorageGate(timeout=1.0, table=table)
    loop_thread = threading.get_ident()

    async def scenario() -> tuple[dict[str, str], int]:
        hung = await gate.unresponsive([str(disk)])
        ran_in = await gate.read([str(disk)], "read", threading.get_ident)
        return hung, ran_in

    hung, ran_in = asyncio.run(scenario())
    gate.close()
    assert hung == {} and ran_in == loop_thread
    assert all(m.proc is None for m in gate._mounts.values())  # no helper was started
    many = [str(disk)] * (INLINE_MAX_PATHS + 1)  # a big job still goes to a worker thread
    assert asyncio.run(gate.read(many, "read", threading.get_ident)) != loop_thread
