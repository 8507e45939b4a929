"""Issue 19: a burst of libvirt events (1,000 guests defined in a row) must not take svirtd's event loop
away from the bus. Two causes, each with its test; the manager runs in-process on a real store (SQLite
in WAL mode on disk), the stand-in hypervisor answers from memory (tests/helpers.StandInLibvirt).

- The commit of a new guest's pair (an fsync) ran on the loop: while the state database's disk was slow
  (here: another connection holding its write lock, as a backup tool or a slow disk would), nothing else
  ran, no bus call was answered. It runs in the store's writer thread now.
- Every event got its own task at once: 1,000 handlers queued 1,000 lookups on the one libvirt thread and
  took turns with the bus's calls. Now a guest's newer event replaces its older one still waiting, and a
  bounded number of handlers take them in order.
- The MCS translation file (rewritten 5 times a second during a burst: a read, an fsync) was written on
  the loop. Its I/O runs in a thread now."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from svirtd.manager import EVENT_HANDLERS, XmlDomain
from svirtd.models import GuestState
from svirtd.setrans import TranslationFile
from testbed.guests import domain_xml
from tests.helpers import StandInLibvirt, in_process_manager

pytestmark = pytest.mark.integration

HELD_SECONDS = 2.0  # how long the database's write lock is held by someone else


@dataclass(frozen=True)
class Event:
    uuid: str
    name: str
    kind: str = "defined"


def guest(name: str) -> XmlDomain:
    uid = str(uuidlib.uuid4())
    return XmlDomain(uid, name, GuestState.SHUTOFF, (domain_xml(name, uid, []),))


def test_a_slow_commit_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    newcomer = guest("burst-0")
    libvirt = StandInLibvirt([newcomer])
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["burst-*"]) as manager:
        other = sqlite3.connect(manager.store.path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock: svirtd's commit waits for it (busy timeout 5 s)
            threading.Timer(HELD_SECONDS, other.rollback).start()  # from a thread: the loop may be the one stuck

            async def scenario() -> float:
                longest, last = 0.0, time.monotonic()
                manager.on_event(Event(newcomer.uuid, newcomer.name))
                deadline = last + 30
                while manager.store.get(newcomer.uuid) is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # the loop's turn: how long it was away shows here
                    now = time.monotonic()
                    longest, last = max(longest, now - last), now
                await manager.drain()
                return longest

            longest = asyncio.run(scenario())
        finally:
            other.close()
        assert manager.store.get(newcomer.uuid) is not None, "the guest was not isolated once the lock was free"
    print(f"the loop's longest absence while the commit waited {HELD_SECONDS} s for the lock: {longest:.3f} s")
    assert longest < HELD_SECONDS / 4, f"the event loop stopped for {longest:.2f} s while a commit waited"


def test_a_burst_of_events_is_handled_a_bounded_number_at_a_time(tmp_path: Path) -> None:
    burst = [guest(f"burst-{i}") for i in range(300)]
    libvirt = StandInLibvirt(burst)
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["burst-*"]) as manager:

        async def scenario() -> None:
            for d in burst:  # defined, then (as svirtd's own rewrite does) defined again, before any handler ran
                manager.on_event(Event(d.uuid, d.name))
            for d in burst:
                manager.on_event(Event(d.uuid, d.name))
            await manager.drain()

        asyncio.run(scenario())
        assert manager.store.count() == len(burst)
    print(f"{libvirt.lookups} lookups for {2 * len(burst)} events, at most {libvirt.most_in_flight} at once")
    assert libvirt.most_in_flight <= EVENT_HANDLERS
    assert libvirt.lookups == len(burst), "each guest is looked up once for the events that waited together"


def test_the_translation_file_is_written_off_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "svirtd-translations.conf"
    os.mkfifo(path)  # reading it waits for a writer: file I/O that lasts as long as the test wants
    translations = TranslationFile(path, lambda: [("s0:c1,c2", "web01", str(uuidlib.uuid4()))], delay=0)

    def writer() -> None:  # opens the FIFO once someone reads it (or once it is a regular file again)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                    raise
                time.sleep(0.05)

    async def scenario() -> float:
        longest, last = 0.0, time.monotonic()
        translations.changed()
        deadline = last + 30
        while translations.writes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        await translations.flush()
        return longest

    timer = threading.Timer(HELD_SECONDS, writer)
    timer.start()
    try:
        longest = asyncio.run(scenario())
    finally:
        timer.join()
    assert path.read_text().endswith("s0:c1,c2=web01\n")
    print(f"the loop's longest absence while the file's read waited {HELD_SECONDS} s: {longest:.3f} s")
    assert longest < HELD_SECONDS / 4, f"the event loop stopped for {longest:.2f} s while the file was written"
