"""Query keeps a guest's report while nothing it was made from can have changed, and never says a file
is labeled when it is not (a real store, real files, real xattrs, real mounts, in-process Manager): a
label set behind svirtd's back, a file replaced under its name, a mount over its directory, the table
changing, are all in the very next Query. The hook's PrepareStart of the same definition skips a
converge that would change nothing, and converges as before when a file changed behind its back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from svirtd.errors import NoSuchGuest
from svirtd.isolation import Proof
from svirtd.manager import GuestReport, Manager, VerifyResult
from svirtd.models import Assignment, ResourceStatus
from svirtd.resources import DomainSpec
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, Guest, GuestFactory, domain_xml, make_disk
from testbed.mounts import Mounts
from tests.conftest import wait_until
from tests.helpers import call, in_process_manager, run, xattr

from .test_claims import labeled
from .test_relabel_transactions import NoLibvirt

pytestmark = pytest.mark.integration

XATTR = "security.selinux"
OTHER = "system_u:object_r:virt_image_t:s0"
IMAGE = "system_u:object_r:svirt_image_t:"


@pytest.fixture
def manager(as_root: None, tmp_path: Path) -> Iterator[Manager]:
    with in_process_manager(tmp_path, NoLibvirt()) as m:
        yield m


def isolated(manager: Manager, tmp_path: Path, name: str) -> tuple[str, Path]:
    uuid, disk, _xml = started(manager, tmp_path, name)
    return uuid, disk


def started(manager: Manager, tmp_path: Path, name: str) -> tuple[str, Path, str]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    disk = make_disk(images / f"{name}.img")
    xml = domain_xml(name, str(uuidlib.uuid4()), [Disk(disk, "vda")])
    a = asyncio.run(manager.prepare_start(xml))
    assert a is not None
    return a.uuid, disk, xml


@pytest.fixture
def converges(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The guests each real converge ran for (the real one runs)."""
    calls: list[str] = []
    real = manager.converger.converge

    async def counted(domain: DomainSpec, a: Assignment, libvirt_relabels: bool) -> None:
        calls.append(a.uuid)
        await real(domain, a, libvirt_relabels)

    monkeypatch.setattr(manager.converger, "converge", counted)
    return calls


def disk_state(report: GuestReport, disk: Path) -> tuple[ResourceStatus, str]:
    [state] = [r for r in report.resources if r.path == str(disk)]
    return state.status, state.actual


def query(manager: Manager, uuid: str) -> GuestReport:
    return asyncio.run(manager.query(uuid))


def test_a_repeated_query_reads_nothing_and_a_label_changed_behind_its_back_is_seen(
        manager: Manager, tmp_path: Path) -> None:
    uuid, disk = isolated(manager, tmp_path, "svt-qc-a")
    first = query(manager, uuid)
    expected = str(manager.spec.image_label(first.assignment.level))
    assert disk_state(first, disk) == (ResourceStatus.LABELED, expected)
    assert query(manager, uuid) is first  # kept: nothing was read again
    os.setxattr(disk, XATTR, OTHER.encode() + b"\0")  # as setfattr / chcon would, behind svirtd's back
    assert disk_state(query(manager, uuid), disk) == (ResourceStatus.DRIFTED, OTHER)
    os.setxattr(disk, XATTR, expected.encode() + b"\0")
    assert disk_state(query(manager, uuid), disk) == (ResourceStatus.LABELED, expected)


def test_a_file_replaced_or_removed_under_its_name_is_seen(manager: Manager, tmp_path: Path) -> None:
    uuid, disk = isolated(manager, tmp_path, "svt-qc-b")
    assert disk_state(query(manager, uuid), disk)[0] is ResourceStatus.LABELED
    os.replace(make_disk(disk.with_name("fresh.img")), disk)  # a new inode with no label
    assert disk_state(query(manager, uuid), disk) == (ResourceStatus.DRIFTED, "")
    disk.unlink()
    assert disk_state(query(manager, uuid), disk)[0] is ResourceStatus.ABSENT


def test_a_mount_over_its_directory_is_seen(manager: Manager, tmp_path: Path, mounts: Mounts) -> None:
    uuid, disk = isolated(manager, tmp_path, "svt-qc-c")
    assert disk_state(query(manager, uuid), disk)[0] is ResourceStatus.LABELED
    mounts.fs("tmpfs", disk.parent)  # no inotify event: the mount table's generation tells
    assert disk_state(query(manager, uuid), disk)[0] is ResourceStatus.ABSENT


def test_another_guests_change_keeps_the_report_its_own_change_or_a_proof_does_not(
        manager: Manager, tmp_path: Path) -> None:
    """A burst of other guests' isolations must not make every Query read its files again."""
    uuid, _disk = isolated(manager, tmp_path, "svt-qc-d")
    first = query(manager, uuid)
    isolated(manager, tmp_path, "svt-qc-e")  # the table changed: another guest's row and claims
    assert query(manager, uuid) is first
    manager.store.update_assignment(uuid, note="its own row changed")
    second = query(manager, uuid)
    assert second is not first and second.assignment.note == "its own row changed"
    manager.last_verify = VerifyResult(policy="policy.33", at=time.time(), proof=Proof(1, 1, 1, 1, ()))
    assert query(manager, uuid).isolation.startswith("verified against policy.33")


def test_a_guest_svirtd_has_no_row_of_is_answered_without_a_task_as_the_method_would(
        manager: Manager, tmp_path: Path) -> None:
    """kept_report (the bus handler's) says NoSuchGuest itself, with query()'s words: for a UUID never
    isolated, and for a guest an admin released."""
    uuid, _disk = isolated(manager, tmp_path, "svt-qc-h")
    for ref in (str(uuidlib.uuid4()), uuid):
        if ref == uuid:
            asyncio.run(manager.release(uuid))
        with pytest.raises(NoSuchGuest) as by_method:
            query(manager, ref)
        with pytest.raises(NoSuchGuest) as kept:
            manager.kept_report(ref)
        assert str(kept.value) == str(by_method.value)
    assert "released by an admin" in str(kept.value)
    assert manager.kept_report("svt-qc-h") is None  # a name: query() resolves it


def test_a_guest_without_files_is_reported_without_a_thread(manager: Manager, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to read on any storage: its report waits for no worker thread (busy with a burst's
    converges, they made every first Query of a new guest the slowest call of the burst)."""
    a = asyncio.run(manager.prepare_start(domain_xml("svt-qc-i", str(uuidlib.uuid4()), [])))
    assert a is not None
    hops: list[object] = []
    real = asyncio.to_thread

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        hops.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    manager.store.update_assignment(a.uuid, note="not kept any more")
    report = query(manager, a.uuid)
    assert report.assignment.note == "not kept any more" and report.resources
    assert hops == []
    uuid, disk = isolated(manager, tmp_path, "svt-qc-j")  # with a disk: read in a worker thread, as before
    hops.clear()
    assert disk_state(query(manager, uuid), disk)[0] is ResourceStatus.LABELED and hops


def test_a_start_with_everything_in_place_converges_once(manager: Manager, tmp_path: Path,
                                                         converges: list[str]) -> None:
    uuid, disk, xml = started(manager, tmp_path, "svt-qc-f")  # labels the disk
    starts = [asyncio.run(manager.prepare_start(xml)) for _ in range(3)]
    assert all(a is not None and a.uuid == uuid for a in starts)
    # The second start found everything as the first left it (and wrote nothing): the next ones skip it.
    assert converges == [uuid, uuid]
    level = manager.store.get(uuid).level  # type: ignore[union-attr]
    assert xattr(disk) == str(manager.spec.image_label(level))


def test_a_start_after_a_label_changed_behind_its_back_converges_again(manager: Manager, tmp_path: Path,
                                                                       converges: list[str]) -> None:
    uuid, disk, xml = started(manager, tmp_path, "svt-qc-g")
    asyncio.run(manager.prepare_start(xml))  # finds everything in place: the next start may skip it
    expected = xattr(disk)
    os.setxattr(disk, XATTR, OTHER.encode() + b"\0")
    asyncio.run(manager.prepare_start(xml))
    assert converges == [uuid] * 3 and xattr(disk) == expected  # put back before qemu exists
    asyncio.run(manager.prepare_start(xml))
    os.replace(make_disk(disk.with_name("fresh.img")), disk)
    asyncio.run(manager.prepare_start(xml))
    assert converges == [uuid] * 5 and xattr(disk) == expected
    asyncio.run(manager.prepare_start(xml))
    asyncio.run(manager.prepare_start(xml.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>")))  # another definition
    assert len(converges) == 7


def test_over_the_bus_a_label_set_with_setfattr_is_in_the_next_query(bus: PrivateBus, guests: GuestFactory,
                                                                      svirtd: Callable[..., SvirtdProcess]) -> None:
    """svirtd as a process answering Query from what it kept (the second call on): `setfattr` behind its
    back, and the very next Query says so; `chcon`-style restore, and the next one says that too."""
    svirtd()
    g = guests.new()
    report: dict[str, Any] = wait_until(lambda: labeled(bus, g.uuid), what="the guest isolated")  # type: ignore[assignment]
    [disk] = [r for r in report["resources"] if r["path"] == str(g.disk)]
    settled(bus, guests, g)
    for _ in range(5):  # each round: a kept report (the second equal Query), then a change behind its back
        wait_until(lambda: run(call(bus, "Query", "s", g.uuid)) == run(call(bus, "Query", "s", g.uuid)),
                   what="a settled report")
        subprocess.run(["setfattr", "-n", XATTR, "-v", OTHER, str(g.disk)], check=True)
        assert disk_of(bus, g) == ("drifted", OTHER)
        subprocess.run(["setfattr", "-n", XATTR, "-v", disk["expected"], str(g.disk)], check=True)
        assert disk_of(bus, g) == ("labeled", disk["expected"])


def test_over_the_bus_the_hooks_start_with_everything_in_place_and_after_a_setfattr(
        bus: PrivateBus, guests: GuestFactory, svirtd: Callable[..., SvirtdProcess]) -> None:
    """PrepareStart as the hook sends it (root): the replies of starts with everything in place (answered
    from what svirtd keeps from the third on) are the method's; a label set behind svirtd's back before
    the next start is put back by that start, before qemu would exist."""
    svirtd()
    g = guests.new()
    wait_until(lambda: labeled(bus, g.uuid), what="the guest isolated")
    settled(bus, guests, g)
    wait_until(lambda: run(call(bus, "PrepareStart", "s", g.xml)) == run(call(bus, "PrepareStart", "s", g.xml)),
               what="settled starts")
    replies = [run(call(bus, "PrepareStart", "s", g.xml)) for _ in range(4)]
    assert replies[0]["confined"] is True and all(r == replies[0] for r in replies)
    expected = xattr(g.disk)
    assert expected is not None and expected.startswith(IMAGE)
    subprocess.run(["setfattr", "-n", XATTR, "-v", OTHER, str(g.disk)], check=True)
    after = run(call(bus, "PrepareStart", "s", g.xml))
    assert xattr(g.disk) == expected
    assert next(r for r in after["resources"] if r["path"] == str(g.disk))["actual"] == expected


def settled(bus: PrivateBus, guests: GuestFactory, g: Guest) -> None:
    """svirtd's own follow-up of an isolation done: its identity is in the definition, and libvirt's event
    for that rewrite (which converges the guest again) handled, so that no relabel of its own runs
    while the test changes labels behind its back."""
    wait_until(lambda: "svirtd.org" in guests.virsh("dumpxml", "--inactive", g.name).stdout, what="identity written")
    wait_until(lambda: labeled(bus, g.uuid), what="converged after the rewrite")


def disk_of(bus: PrivateBus, g: Guest) -> tuple[str, str]:
    [state] = [r for r in run(call(bus, "Query", "s", g.uuid))["resources"] if r["path"] == str(g.disk)]
    return state["status"], state["actual"]

