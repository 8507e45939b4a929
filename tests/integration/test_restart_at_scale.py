"""Issue 19, restart at scale: a guest defined while svirtd was down is reconciled first, not after every
guest svirtd already isolates has been looked at again (1,000 of them took 2.4 s; bench/load.py measures
restart_1000_reconciled_s). The manager runs in-process on a real store; the stand-in hypervisor records
the order in which the reconcile writes each guest's identity into its definition (one write per guest)."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from svirtd.errors import NoSuchGuest
from svirtd.manager import XmlDomain
from svirtd.models import GuestState
from testbed.guests import domain_xml
from tests.helpers import in_process_manager

pytestmark = pytest.mark.integration


class Libvirt:
    """What the reconcile asks of libvirt: its guests, and the rewrite of their definitions."""

    connected = True
    selinux_driver = False

    def __init__(self, domains: list[XmlDomain]) -> None:
        self.domains = {d.uuid: d for d in domains}
        self.rewritten: list[str] = []

    async def list_domains(self) -> Sequence[XmlDomain]:
        return list(self.domains.values())

    async def lookup(self, guest: str) -> XmlDomain:
        for d in self.domains.values():
            if guest in (d.uuid, d.name):
                return d
        raise NoSuchGuest(guest)

    async def rewrite_definition(self, uuid: str, transform: Callable[[str], str | None]) -> bool:
        self.rewritten.append(uuid)
        new = transform(self.domains[uuid].xmls[0])
        if new is not None:
            d = self.domains[uuid]
            self.domains[uuid] = XmlDomain(d.uuid, d.name, d.state, (new,))
        return new is not None

    async def define_nwfilter(self, name: str, xml: str) -> None:
        pass


def guest(name: str) -> XmlDomain:
    uid = str(uuidlib.uuid4())
    return XmlDomain(uid, name, GuestState.SHUTOFF, (domain_xml(name, uid, []),))


def test_a_guest_defined_while_svirtd_was_down_is_reconciled_first(tmp_path: Path) -> None:
    # Named so that it sorts last: the order must not come from the names.
    known = [guest(f"g{i:03d}") for i in range(40)]
    libvirt = Libvirt(known)
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["g*"]) as manager:
        asyncio.run(manager.reconcile())
        assert manager.store.count() == 40
    newcomer = guest("g999")
    libvirt.domains[newcomer.uuid] = newcomer
    libvirt.rewritten.clear()
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["g*"]) as manager:  # svirtd started again
        asyncio.run(manager.reconcile())
        assert manager.store.count() == 41
    assert newcomer.uuid in libvirt.rewritten
    assert libvirt.rewritten.index(newcomer.uuid) == 0, (
        f"the newcomer was reconciled after {libvirt.rewritten.index(newcomer.uuid)} known guests")
