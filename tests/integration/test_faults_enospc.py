"""Issue 19: svirtd's state directory full (a small tmpfs). Every change svirtd cannot record fails
cleanly: a typed error to the caller, no label applied without its record (or left without its
original), the table unchanged; once space is freed, svirtd works again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.bus import PrivateBus
from testbed.client import CallFailed
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory
from testbed.mounts import Mounts
from tests.conftest import wait_until
from tests.helpers import call, run, tree_labels, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]

IMAGE = "system_u:object_r:svirt_image_t:"
STATE_NOT_WRITABLE = "org.svirt.Manager1.Error.StateNotWritable"


@contextlib.contextmanager
def full(directory: Path, database: Path | None = None, leave: int = 0) -> Iterator[Path]:
    """Fill the filesystem of directory to the last byte (a file of every free block) but `leave` bytes;
    freed after.
    The database's write-ahead log is emptied first (a checkpoint, as SQLite makes by itself): a WAL
    file with room left would take a few more writes however full the disk is."""
    con = sqlite3.connect(database or directory / "state.db")
    try:
        assert con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # not busy
    finally:
        con.close()
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = 65536
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
        if leave:
            os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
    finally:
        os.close(fd)
    try:
        yield filler
    finally:
        filler.unlink()


def rows(bus: PrivateBus) -> list[str]:
    return sorted(r[0] for r in run(call(bus, "List")))


def failed_call(bus: PrivateBus, member: str, *args: str) -> CallFailed:
    with pytest.raises(CallFailed) as exc:
        run(asyncio.wait_for(call(bus, member, "s" * len(args) if member != "Isolate" else "ss", *args), 60))
    return exc.value


def test_a_full_state_directory_fails_each_change_cleanly_and_recovers_without_restart(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, tmp_path: Path, mounts: Mounts) -> None:
    state = tmp_path / "svirtd" / "state"
    mounts.fs("tmpfs", state, "size=2m,mode=0700")
    a = guests.new()
    b, c = guests.new(define=False), guests.new(define=False)
    proc = svirtd(state_dir=str(state))
    wait_until(lambda: rows(bus) == [a.uuid], what="a isolated when svirtd started")
    label_a = xattr(a.disk)
    assert (label_a or "").startswith(IMAGE)
    with full(state):
        # A guest defined now: its pair cannot be recorded, so it stays unconfined, untouched, and the
        # journal says why (libvirt's define itself is not svirtd's to refuse).
        guests.define(c)
        wait_until(lambda: any(c.name in line and "could not record" in line for line in proc.log_text().splitlines()),
                   what="the refused auto-isolation logged")
        assert xattr(c.disk) is None
        # Isolate by hand: refused with the typed error, nothing labeled.
        guests.define(b)
        exc = failed_call(bus, "Isolate", b.uuid, "")
        assert exc.name == STATE_NOT_WRITABLE and str(state) in exc.text, exc
        assert xattr(b.disk) is None
        assert rows(bus) == [a.uuid]
        # A release that cannot be recorded restores nothing: the guest keeps its pair and labels.
        exc = failed_call(bus, "Release", a.uuid)
        assert exc.name == STATE_NOT_WRITABLE, exc
        assert xattr(a.disk) == label_a
        assert rows(bus) == [a.uuid]
        assert run(call(bus, "Query", "s", a.uuid))["resources"][0]["status"] == "labeled"
    # Space again: both go through, no restart.
    run(call(bus, "Isolate", "ss", b.uuid, ""))
    assert (xattr(b.disk) or "").startswith(IMAGE)
    run(call(bus, "Release", "s", a.uuid))
    assert xattr(a.disk) is None
    run(call(bus, "Isolate", "ss", c.uuid, ""))
    assert rows(bus) == sorted([b.uuid, c.uuid])
    assert proc.proc is not None and proc.proc.poll() is None




@pytest.mark.parametrize("leave", [0, 16 * 1024], ids=["at-once", "mid-tree"])
def test_a_full_tree_journal_leaves_the_tree_as_it_was(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                       tmp_path: Path, mounts: Mounts, leave: int) -> None:
    """The journal of a directory tree's originals cannot be written (its filesystem full; here a tmpfs
    of its own under the state directory, so the database still has room), at its first entry or
    part-way through the tree: the tree is not relabeled, nothing is left half-labeled, the caller gets
    a typed error, and the next try after space is freed goes through."""
    state = tmp_path / "svirtd" / "state"
    journals = state / "trees"
    mounts.fs("tmpfs", journals, "size=1m,mode=0700")
    share = guests.image_dir / "share"
    for i in range(1500):  # a journal of a few hundred KiB
        (share / f"d{i % 30}").mkdir(parents=True, exist_ok=True)
        (share / f"d{i % 30}" / f"file-with-a-longish-name-{i}").write_text("x")
    g = guests.new(define=False,
                   extra_devices=f"<filesystem type='mount'><source dir='{share}'/><target dir='share'/></filesystem>")
    svirtd(state_dir=str(state), default_confined=False)
    guests.define(g)
    before = tree_labels(share)
    with full(journals, database=state / "state.db", leave=leave):
        exc = failed_call(bus, "Isolate", g.uuid, "")
        print(f"refused while the journal is full: {exc}")
        assert exc.name in (STATE_NOT_WRITABLE, "org.svirt.Manager1.Error.RelabelFailed"), exc
        assert "No space left" in exc.text or "full" in exc.text, exc.text
        assert tree_labels(share) == before, "the tree was left (half-)labeled"
        assert xattr(g.disk) is None
    run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert all((label or "").startswith(IMAGE) for label in tree_labels(share).values())
    run(call(bus, "Release", "s", g.uuid))
    assert tree_labels(share) == before
