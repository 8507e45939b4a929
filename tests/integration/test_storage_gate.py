"""The storage gate asks the storage itself, not the kernel's memory of it (real FUSE mount)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.errors import StorageNotResponding
from svirtd.mount_table import MountTable
from svirtd.storage_gate import StorageGate
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


def test_a_local_path_through_a_symlink_into_stopped_storage_is_asked_not_read(tmp_path: Path,
                                                                             fuse_mounts: Mounts) -> None:
    """An image directory on ext4 with a symlinked subdirectory into a network mount (a stopped FUSE
    server here): the path's text says "local", its lookup waits on the dead server. The gate must ask
    its helper (which follows the link) and answer StorageNotResponding within the timeout, while the
    event loop keeps turning: no lookup of that path may run on the loop. (No thread is asked here:
    one that waits on the stopped server would hold up the end of asyncio.run.)"""
    src, mnt, local = tmp_path / "src", tmp_path / "mnt", tmp_path / "images"
    for d in (src, mnt, local):
        d.mkdir()
    (src / "disk.img").write_bytes(b"x")
    daemon = fuse_mounts.bindfs(src, mnt)
    (local / "remote").symlink_to(mnt)
    disk = str(local / "remote" / "disk.img")
    gate = StorageGate(timeout=1.0, table=MountTable())

    async def scenario() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick = asyncio.create_task(ticker())
        await gate.ensure([disk], "probe while it answers")
        os.kill(daemon.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            with pytest.raises(StorageNotResponding):
                await gate.ensure([disk], "probe while it is stopped")
            with pytest.raises(StorageNotResponding):  # and every later question about it, at once
                await gate.ensure([disk], "asked again")
        finally:
            tick.cancel()
        return time.monotonic() - t0, ticks

    try:
        took, ticks = asyncio.run(scenario())
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        gate.close()
    assert took < 5, f"the gate took {took:.1f}s"
    assert ticks >= took / 0.05 / 2, f"the event loop stalled: {ticks} ticks in {took:.1f}s"
