"""Relabel transactions when files change under them: real files, real xattrs, the real store.

The manager runs in-process on the libvirt hook's path (PrepareStart: everything comes from the XML,
libvirt is never called), with one fault injected: the disk image is replaced right after svirtd
guessed which inodes to lock, as a restored backup landing at the wrong moment would.
"""

from __future__ import annotations

import asyncio
import os
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from svirtd import relabel
from svirtd.converge import LOCK_ATTEMPTS
from svirtd.errors import RelabelFailed
from svirtd.manager import Manager
from svirtd.store import Claim
from testbed.guests import Disk, domain_xml, make_disk
from tests.helpers import in_process_manager, xattr

pytestmark = pytest.mark.integration


class NoLibvirt:
    """The hook path must not call libvirt (libvirtd waits on the hook): any call fails the test."""

    connected = False
    selinux_driver = None  # what libvirt said at its last connection: a cached fact, not a call

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"libvirt was called ({name}) on the hook path")


@pytest.fixture
def manager(as_root: None, tmp_path: Path) -> Iterator[Manager]:
    with in_process_manager(tmp_path, NoLibvirt()) as m:
        yield m


def swap_after_guess(disk: Path, times: int) -> tuple[Callable[..., set[str]], list[int]]:
    """relabel.lock_keys, then replace the disk (a new inode) the first `times` calls; and the calls."""
    real = relabel.lock_keys
    calls: list[int] = []

    def guess(plan: relabel.RelabelPlan, held: Iterable[Claim]) -> set[str]:
        keys = real(plan, held)
        calls.append(1)
        if len(calls) <= times:
            new = make_disk(disk.with_name(f"{disk.name}.{len(calls)}"))
            os.replace(new, disk)
        return keys

    return guess, calls


def test_a_disk_replaced_between_lock_and_probe_is_locked_again(manager: Manager, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    disk = make_disk(tmp_path / "a.img")
    xml = domain_xml("svt-txn-a", str(uuidlib.uuid4()), [Disk(disk, "vda")])
    guess, calls = swap_after_guess(disk, times=2)
    monkeypatch.setattr(relabel, "lock_keys", guess)
    assignment = asyncio.run(manager.prepare_start(xml))
    assert assignment is not None
    assert len(calls) == 3  # two stale guesses, then the one that held
    assert xattr(disk) == str(manager.spec.image_label(assignment.level))  # the file that is there now
    [claim] = manager.store.claims_for(assignment.uuid)
    assert (claim.dev, claim.ino) == (os.stat(disk).st_dev, os.stat(disk).st_ino)


def test_a_disk_replaced_on_every_attempt_is_refused_with_nothing_changed(manager: Manager, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    disk = make_disk(tmp_path / "b.img")
    xml = domain_xml("svt-txn-b", str(uuidlib.uuid4()), [Disk(disk, "vda")])
    monkeypatch.setattr(relabel, "lock_keys", swap_after_guess(disk, times=LOCK_ATTEMPTS)[0])
    with pytest.raises(RelabelFailed, match="kept being replaced"):
        asyncio.run(manager.prepare_start(xml))
    assert xattr(disk) is None
    assert manager.store.count() == 0 and manager.allocator.free == manager.allocator.total  # no trace
