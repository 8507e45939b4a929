"""Label drift repair racing a change of the guest's claims: real files, real xattrs, the real store.

_repair_drift reads the labels outside the guest's lock and writes libvirt-applied ones back under it.
Whatever happened in between under that lock (a release, a re-isolation at another pair) decides: a
claim that is no longer the one read must not get its label written back -- a released guest's pair
goes to the next guest, which would then reach the file.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.manager import Manager
from svirtd.models import Applier, Assignment, GuestState, Level, Origin, ResourceClass, ResourceKind
from svirtd.store import Claim
from testbed.guests import make_disk
from tests.helpers import in_process_manager, xattr

from .test_relabel_transactions import NoLibvirt

pytestmark = pytest.mark.integration

XATTR = "security.selinux"


@pytest.fixture
def manager(as_root: None, tmp_path: Path) -> Iterator[Manager]:
    with in_process_manager(tmp_path, NoLibvirt()) as m:
        yield m


def running_guest_with_drifted_disk(manager: Manager, disk: Path) -> tuple[str, str, str]:
    """A running guest whose libvirt-applied disk lost its type to a restorecon: (uuid, expected, drifted)."""
    uuid = str(uuidlib.uuid4())
    level = Level.parse("s0:c101,c202")
    now = time.time()
    manager.store.insert_assignment(Assignment(uuid=uuid, name="svt-drift-race", level=level, profile="default",
                                               origin=Origin.API, state=GuestState.RUNNING, created=now,
                                               updated=now))
    expected = str(manager.spec.image_label(level))
    drifted = f"system_u:object_r:virt_image_t:{level}"
    st = os.stat(disk)
    manager.store.put_claims([Claim(uuid=uuid, path=str(disk), device="vda", kind=ResourceKind.FILE,
                                    rclass=ResourceClass.PRIVATE, dev=st.st_dev, ino=st.st_ino, expected=expected,
                                    original=None, phase="applied", real=str(disk), applier=Applier.LIBVIRT)])
    os.setxattr(disk, XATTR, drifted.encode() + b"\0")
    return uuid, expected, drifted


async def repair_while_the_lock_is_held(manager: Manager, uuid: str, meanwhile: object) -> bool:
    """_repair_drift with the guest's lock held until it has read the labels and waits for the lock;
    then `meanwhile()` runs under that lock, as a release or re-isolation would."""
    locks = manager._guest_locks
    async with locks.hold([uuid]):
        task = asyncio.create_task(manager._repair_drift(uuid, "svt-drift-race"))
        for _ in range(1000):
            if locks._users.get(uuid) == 2:  # it read the labels and now waits for the lock
                break
            await asyncio.sleep(0.01)
        assert locks._users.get(uuid) == 2, "the repair never came to wait for the guest's lock"
        assert callable(meanwhile)
        meanwhile()
    return await task


def test_the_drift_of_a_running_guest_is_repaired(manager: Manager, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "a.img")
    uuid, expected, _drifted = running_guest_with_drifted_disk(manager, disk)
    assert asyncio.run(repair_while_the_lock_is_held(manager, uuid, lambda: None))
    assert xattr(disk) == expected


def test_a_claim_released_while_the_repair_waited_is_not_written(manager: Manager, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "b.img")
    uuid, _expected, drifted = running_guest_with_drifted_disk(manager, disk)

    def release() -> None:
        manager.store.delete_claims(uuid, [str(disk)])
        manager.store.delete_assignment(uuid)

    asyncio.run(repair_while_the_lock_is_held(manager, uuid, release))
    assert xattr(disk) == drifted  # the released pair's label is not put back on the file


def test_a_claim_relabeled_at_another_pair_while_the_repair_waited_keeps_its_new_label(
        manager: Manager, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "c.img")
    uuid, _expected, drifted = running_guest_with_drifted_disk(manager, disk)
    [claim] = manager.store.claims_for(uuid)
    other = str(manager.spec.image_label(Level.parse("s0:c303,c404")))

    def reisolate() -> None:
        manager.store.put_claims([claim.model_copy(update={"expected": other})])

    asyncio.run(repair_while_the_lock_is_held(manager, uuid, reisolate))
    assert xattr(disk) in (drifted, other)  # never the pair the guest held before
