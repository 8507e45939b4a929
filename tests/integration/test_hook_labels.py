"""The hook's start/migrate/restore decisions where libvirt's SELinux driver applies the labels.

This host's libvirt has no SELinux driver, so the manager runs in-process on the hook's path against
a hypervisor that only says "the driver is active" and fails the test on any libvirt call (libvirtd
waits on the hook); files, xattrs and the store are real. `make e2e` runs the same paths for real.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.errors import NotConfined, ResourceConflict, UnsafePath
from svirtd.manager import Manager, XmlDomain
from svirtd.models import GuestState, Level
from svirtd.resources import parse_domain
from testbed.guests import Disk, domain_xml, make_disk
from tests.helpers import in_process_manager, xattr

pytestmark = pytest.mark.integration
IMAGE = "system_u:object_r:svirt_image_t:"


class DriverOnly:
    """libvirt's SELinux driver is active; libvirt itself must not be called on the hook's path."""

    connected = False
    selinux_driver = True

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"libvirt was called ({name}) on the hook path")


@pytest.fixture
def manager(as_root: None, tmp_path: Path) -> Iterator[Manager]:
    with in_process_manager(tmp_path, DriverOnly()) as m:
        yield m


def guest_xml(tmp_path: Path, name: str, seclabel: str = "") -> tuple[str, Path, Path]:
    disk = make_disk(tmp_path / f"{name}.img")
    tree = tmp_path / f"{name}-share"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    share = f"<filesystem type='mount'><source dir='{tree}'/><target dir='s'/></filesystem>"
    return domain_xml(name, str(uuidlib.uuid4()), [Disk(disk, "vda")], extra_devices=share, extra=seclabel), disk, tree


def with_label(xml: str, level: Level, kind: str = "dynamic") -> str:
    label = f"system_u:system_r:svirt_t:{level}"
    seclabel = f"<seclabel type='{kind}' model='selinux' relabel='yes'><label>{label}</label></seclabel>"
    return xml.replace("</domain>", f"{seclabel}</domain>")


def test_started_before_its_label_was_written_the_running_label_is_adopted(manager: Manager, tmp_path: Path) -> None:
    """define-then-start / a transient guest: prepare begin gave it P; libvirt then drew Q (the
    definition had no static label yet). Process, table and files must agree on Q."""
    xml, disk, tree = guest_xml(tmp_path, "svt-adopt")
    first = asyncio.run(manager.prepare_start(xml))
    assert first is not None
    assert xattr(disk) is None  # libvirt labels the disk when qemu starts: svirtd does not
    assert xattr(tree / "sub" / "f") == IMAGE + str(first.level)  # svirtd labels trees (libvirt does not)
    running = Level(low=(first.level.low + 1) % 1000, high=1001)
    adopted = asyncio.run(manager.start_check(with_label(xml, running)))
    assert adopted is not None and adopted.level == running and "adopted" in adopted.note
    assert manager.allocator.is_free(first.level) and not manager.allocator.is_free(running)
    assert xattr(tree / "sub" / "f") == IMAGE + str(running)
    # Its own label at the next start: nothing to do (the hook's fast path).
    assert asyncio.run(manager.start_check(with_label(xml, running, "static"))) == adopted


def test_a_running_label_another_guest_holds_refuses_the_start(manager: Manager, tmp_path: Path) -> None:
    other_xml, _, _ = guest_xml(tmp_path, "svt-holder")
    holder = asyncio.run(manager.prepare_start(other_xml))
    xml, _, tree = guest_xml(tmp_path, "svt-late")
    late = asyncio.run(manager.prepare_start(xml))
    assert holder is not None and late is not None
    with pytest.raises(ResourceConflict, match="two guests would share a pair"):
        asyncio.run(manager.start_check(with_label(xml, holder.level)))
    assert manager.store.get(late.uuid) == late  # nothing changed
    assert xattr(tree / "sub" / "f") == IMAGE + str(late.level)


def test_an_incoming_guest_keeps_its_pair_when_free_and_gets_svirtds_label(manager: Manager, tmp_path: Path) -> None:
    """migrate begin / restore begin: the definition libvirt is to use carries svirtd's label."""
    xml, _, _ = guest_xml(tmp_path, "svt-migrant")
    travelled = Level(low=17, high=42)
    out = asyncio.run(manager.rewrite_incoming(with_label(xml, travelled, "static")))
    assert out is not None
    spec = parse_domain(out)
    assert [(s.type, s.relabel, s.label) for s in spec.seclabels] == [
        ("static", True, f"system_u:system_r:svirt_t:{travelled}")]
    assert spec.svirt_metadata["level"] == str(travelled)
    # Arriving with a pair another guest holds here: a new one, and the rewritten definition says so.
    clash_xml, _, _ = guest_xml(tmp_path, "svt-clash")
    clash = asyncio.run(manager.rewrite_incoming(with_label(clash_xml, travelled, "static")))
    assert clash is not None
    new_level = parse_domain(clash).svirt_metadata["level"]
    assert new_level != str(travelled)
    assert f"svirt_t:{new_level}" in clash


def test_without_the_driver_nothing_is_rewritten(as_root: None, tmp_path: Path) -> None:
    hv = DriverOnly()
    hv.selinux_driver = False
    with in_process_manager(tmp_path, hv) as m:
        xml, _, _ = guest_xml(tmp_path, "svt-plain")
        assert asyncio.run(m.rewrite_incoming(xml)) is None
        assert asyncio.run(m.start_check(xml)) is None  # no SELinux label to run in here


class OneRunningGuest:
    """A hypervisor knowing one running guest: its persistent and live definitions."""

    connected = False  # no definition rewrite: not what this test is about
    selinux_driver = True

    def __init__(self, info: XmlDomain) -> None:
        self.info = info

    async def lookup(self, guest: str) -> XmlDomain:
        return self.info


def test_a_running_guest_found_with_another_pair_is_followed_not_relabeled_away(as_root: None,
                                                                               tmp_path: Path) -> None:
    """svirtd was away when the guest started (or libvirt drew its label): the event that follows finds
    qemu running with Q while the table says P. svirtd must never relabel files away from under the
    running qemu: the table follows Q, and so do the files svirtd labels."""
    xml, _disk, tree = guest_xml(tmp_path, "svt-follow")
    spec = parse_domain(xml)
    running = Level(low=3, high=333)
    info = XmlDomain(uuid=spec.uuid, name=spec.name, state=GuestState.RUNNING, xmls=(xml, with_label(xml, running)))
    with in_process_manager(tmp_path, OneRunningGuest(info)) as m:
        first = asyncio.run(m.prepare_start(xml))  # isolated at some P before it ran
        assert first is not None and first.level != running
        followed = asyncio.run(m.isolate(spec.uuid))
        assert followed.level == running and m.allocator.is_free(first.level)
        assert xattr(tree / "sub" / "f") == IMAGE + str(running)


def test_a_known_guest_arriving_with_another_label_gets_its_own_pair_written(manager: Manager,
                                                                             tmp_path: Path) -> None:
    """restore begin / migrate begin of a guest svirtd knows: the pair in svirtd's table wins over the
    label the save image or the source host carries; the definition libvirt uses says so."""
    xml, _, _ = guest_xml(tmp_path, "svt-known")
    a = asyncio.run(manager.prepare_start(xml))
    assert a is not None
    other = Level(low=(a.level.low + 7) % 1000, high=1002)
    out = asyncio.run(manager.rewrite_incoming(with_label(xml, other, "dynamic")))
    assert out is not None
    assert parse_domain(out).seclabels[0].label == f"system_u:system_r:svirt_t:{a.level}"
    assert manager.store.get(a.uuid) == a  # not adopted


def test_an_isolated_guest_about_to_run_without_a_label_is_refused_under_require_confined(as_root: None,
                                                                                          tmp_path: Path) -> None:
    """<seclabel type='none'> on a guest svirtd isolates (a transient create, an edit before the rewrite):
    qemu would run unconfined while Query says isolated."""
    with in_process_manager(tmp_path, DriverOnly(), require_confined=True) as m:
        xml, _, _ = guest_xml(tmp_path, "svt-none")
        assert asyncio.run(m.prepare_start(xml)) is not None
        unconfined = xml.replace("</domain>", "<seclabel type='none' model='selinux'/></domain>")
        with pytest.raises(NotConfined, match="no SELinux label"):
            asyncio.run(m.start_check(unconfined))


def test_a_failed_isolation_of_a_running_guest_keeps_its_pair_reserved(as_root: None, tmp_path: Path) -> None:
    """A guest runs unconfined with a pair libvirt drew (svirtd reserves it as foreign); an Isolate of
    it that fails must not free that pair while its qemu still uses it."""
    disk = make_disk(tmp_path / "ok.img")
    spec_xml = domain_xml("svt-failing", str(uuidlib.uuid4()),
                          [Disk(disk, "vda"), Disk(Path("/etc/shadow"), "vdb")])  # refused: UnsafePath
    spec = parse_domain(spec_xml)
    running = Level(low=11, high=12)
    info = XmlDomain(uuid=spec.uuid, name=spec.name, state=GuestState.RUNNING,
                     xmls=(spec_xml, with_label(spec_xml, running)))
    with in_process_manager(tmp_path, OneRunningGuest(info), default_confined=False) as m:
        m._reserve_foreign(info)  # as the event of its start did
        assert not m.allocator.is_free(running)
        with pytest.raises(UnsafePath):
            asyncio.run(m.isolate(spec.uuid))
        assert not m.allocator.is_free(running), "the pair its qemu runs with was freed"
        assert m.guest_at(running) is not None and m.store.get(spec.uuid) is None
        assert xattr(disk) is None
