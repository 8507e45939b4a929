"""The definitions svirtd keeps (for Query while libvirt is away, and to see what changed) are those of
guests libvirt has or svirtd isolates: a guest that only passed through the hook unconfined, or that
libvirt no longer has, is not kept. A host that runs transient guests for months (CI farms: `virsh
create`, destroy, repeat) must not grow with every UUID it ever saw. The manager runs in-process on a
real store; the stand-in hypervisor knows no guest."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from pathlib import Path

import pytest

from svirtd.errors import NoSuchGuest
from svirtd.manager import Manager, XmlDomain
from svirtd.models import GuestState
from testbed.guests import domain_xml
from tests.helpers import in_process_manager

pytestmark = pytest.mark.integration


class NoGuests:
    connected = True
    selinux_driver = False

    async def list_domains(self) -> list[XmlDomain]:
        return []

    async def lookup(self, guest: str) -> XmlDomain:
        raise NoSuchGuest(guest)


class Undefined:
    def __init__(self, uuid: str, name: str) -> None:
        self.uuid, self.name, self.kind = uuid, name, "undefined"


def kept(m: Manager) -> int:
    return len(m._domains)  # the cache under test has no public face


def test_unconfined_guests_through_the_hook_are_not_kept(tmp_path: Path) -> None:
    with in_process_manager(tmp_path, NoGuests(), auto_confine_names=("confined-*",)) as m:
        for i in range(50):
            uid = str(uuidlib.uuid4())
            assert asyncio.run(m.prepare_start(domain_xml(f"transient-{i}", uid, []))) is None
        assert kept(m) == 0
        assert len(m._guest_locks) == 0  # nor a lock per UUID that passed


def test_a_guest_libvirt_no_longer_has_is_not_kept(tmp_path: Path) -> None:
    with in_process_manager(tmp_path, NoGuests(), auto_confine_names=("confined-*",)) as m:
        uid = str(uuidlib.uuid4())
        info = XmlDomain(uid, "left-alone", GuestState.SHUTOFF, (domain_xml("left-alone", uid, []),))
        m._parse(info)  # as an event or a proof does for a guest svirtd leaves unconfined
        assert kept(m) == 1

        async def undefine() -> None:
            m.on_event(Undefined(uid, "left-alone"))
            await m.drain()

        asyncio.run(undefine())
        assert kept(m) == 0
