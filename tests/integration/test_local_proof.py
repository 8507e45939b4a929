"""Query's fast path skips the storage helper only for files it PROVES local (real tmpfs and FUSE
mounts): the mount table's view follows mounts as they come and go, and a symlinked parent into a
stopped FUSE server is never looked up in the proof, whatever the path's text says."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from svirtd import labels
from svirtd.errors import StorageNotResponding, UnsafePath
from svirtd.local_proof import provably_local, text_is_local
from svirtd.models import ResourceKind
from svirtd.mount_table import MountTable
from svirtd.service import IO_THREADS
from svirtd.storage_gate import THREADS_PER_MOUNT, StorageGate
from testbed.mounts import Mounts


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    yield m
    problems = m.teardown()
    assert not problems, problems


def test_a_mount_appearing_on_the_way_is_seen_at_the_next_question(tmp_path: Path, mounts: Mounts) -> None:
    """The table is kept between questions (no read of mountinfo per file), yet a FUSE mount made
    over a directory that was proven local makes its files unproven at once, and its device's
    filesystem type is known; once it is gone, they are local again."""
    table = MountTable()
    images = tmp_path / "images"
    images.mkdir()
    disk = str(images / "disk.img")
    Path(disk).write_bytes(b"x")
    assert provably_local(disk, table)
    assert [m.fstype for m in table.along(disk)][-1] == "ext4"
    mounts.fs("tmpfs", images)
    assert table.along(disk)[-1].fstype == "tmpfs" and provably_local(disk, table)
    st = os.stat(images)
    mount = table.by_device(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    assert mount is not None and mount.fstype == "tmpfs"
    mounts.bindfs(tmp_path / "src", images / "remote")
    remote = str(images / "remote" / "disk.img")
    assert not text_is_local(remote, table) and not provably_local(remote, table)
    assert mounts.teardown() == []
    assert table.along(disk)[-1].fstype == "ext4" and provably_local(disk, table)
    assert provably_local(remote, table)  # no mount there any more: a missing file in a local directory


def test_a_symlinked_parent_into_stopped_storage_is_not_proven_and_not_looked_up(tmp_path: Path,
                                                                               mounts: Mounts) -> None:
    """images/remote -> a FUSE mount whose server is stopped: the text says ext4; the proof must stop
    at the link (the kernel refuses it before following it), so read_local() answers "not proven"
    at once, fn not run, and no thread waits on the dead server (the old text-only shortcut hung)."""
    src, mnt, images = tmp_path / "src", tmp_path / "mnt", tmp_path / "images"
    images.mkdir()
    daemon = mounts.bindfs(src, mnt)
    (src / "disk.img").write_bytes(b"x")
    (images / "remote").symlink_to(mnt)
    disk = str(images / "remote" / "disk.img")
    table = MountTable()
    assert text_is_local(disk, table)  # what the text alone would say
    gate = StorageGate(timeout=1.0, table=table)
    ran: list[str] = []
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        local, result = asyncio.run(gate.read_local([disk], "probe", ran.append, "fn ran"))
        took = time.monotonic() - t0
        assert not provably_local(disk, table)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        gate.close()
    assert (local, result, ran) == (False, None, [])
    assert took < 1.0, f"the proof took {took:.1f}s: it waited on the stopped server"


def test_read_local_runs_fn_for_proven_files_and_resolve_still_refuses_untrusted_links(tmp_path: Path) -> None:
    """The one-call lookup (openat2) serves link-free paths; a path through a link someone other than
    root could swap is still refused by the careful walk, as before."""
    images = tmp_path / "images"
    images.mkdir()
    disk = images / "disk.img"
    disk.write_bytes(b"x")
    gate = StorageGate(timeout=1.0, table=MountTable())
    try:
        assert asyncio.run(gate.read_local([str(disk)], "probe", len, "abc")) == (True, 3)
    finally:
        gate.close()
    with labels.open_resource(str(disk), ResourceKind.FILE) as opened:
        assert opened.path == str(disk) and os.path.samestat(opened.st, disk.stat())
    other = tmp_path / "other"
    other.mkdir()
    (other / "disk.img").write_bytes(b"y")
    link = images / "link"
    link.symlink_to(other)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UnsafePath, match="symlink owned by uid 65534"):
        labels.open_resource(str(link / "disk.img"), ResourceKind.FILE)


def test_a_path_named_twice_is_still_proven(tmp_path: Path) -> None:
    """Query names a claimed disk twice (its definition's decision and its claim): the fast path must
    not take the repeat for an unproven file (it did, and every Query paid three thread hops)."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    gate = StorageGate(timeout=1.0, table=MountTable())
    try:
        assert asyncio.run(gate.read_local([str(disk), "controller0", str(disk)], "probe", len, "ab")) == (True, 2)
    finally:
        gate.close()


def test_a_local_disk_that_stopped_answering_holds_at_most_its_mounts_threads(tmp_path: Path) -> None:
    """Local storage can hang too (ext4 on iSCSI or multipath queueing with no path): once read_local's
    work there missed its deadline the mount is known hung, and later Query calls must not start more
    work there than the mount's thread slots -- each one would hold an I/O thread until the disk answers,
    and enough of them stall every guest's file work. (The work stands in for a read the kernel never
    answers: it blocks until the test lets it go.)"""
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x")
    stuck = threading.Event()
    entered: list[int] = []

    def read_that_hangs() -> int:
        entered.append(1)
        stuck.wait(30)
        return 0

    async def queries() -> tuple[int, list[tuple[bool, int | None] | BaseException]]:
        # svirtd's own pool size (service.IO_THREADS): asyncio's default would hide the threads' number.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=IO_THREADS))
        try:
            with pytest.raises(StorageNotResponding):
                await gate.read_local([str(disk)], "probe", read_that_hangs)
            answers = await asyncio.gather(*(gate.read_local([str(disk)], "probe", read_that_hangs)
                                             for _ in range(3 * THREADS_PER_MOUNT)), return_exceptions=True)
            return len(entered), answers
        finally:
            stuck.set()  # before the loop's end waits for its threads

    gate = StorageGate(timeout=0.2, table=MountTable())
    try:
        started, answers = asyncio.run(queries())
        assert started <= THREADS_PER_MOUNT, f"{started} threads stuck on one hung mount"
        assert all(a == (False, None) or isinstance(a, StorageNotResponding) for a in answers), answers
    finally:
        stuck.set()
        gate.close()
