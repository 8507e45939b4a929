"""Issue 19, restart at scale: a guest defined while svirtd was down is reconciled first, not after every
guest svirtd already isolates has been looked at again (1,000 of them took 2.4 s; bench/load.py measures
restart_1000_reconciled_s). The manager runs in-process on a real store; the stand-in hypervisor records
the order in which the reconcile writes each guest's identity into its definition (one write per guest)."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

import pytest

from svirtd.manager import XmlDomain
from svirtd.models import GuestState
from testbed.guests import domain_xml
from tests.helpers import StandInLibvirt, in_process_manager

pytestmark = pytest.mark.integration


def guest(name: str) -> XmlDomain:
    uid = str(uuidlib.uuid4())
    return XmlDomain(uid, name, GuestState.SHUTOFF, (domain_xml(name, uid, []),))


def test_a_guest_defined_while_svirtd_was_down_is_reconciled_first(tmp_path: Path) -> None:
    # Named so that it sorts last: the order must not come from the names.
    known = [guest(f"g{i:03d}") for i in range(40)]
    libvirt = StandInLibvirt(known)
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


class Reading(StandInLibvirt):
    """Records how many definitions had been read when each guest's identity was written."""

    def __init__(self, domains: list[XmlDomain]) -> None:
        super().__init__(domains)
        self.read_before: dict[str, int] = {}

    async def rewrite_definition(self, uuid: str, transform: Callable[[str], str | None]) -> bool:
        self.read_before.setdefault(uuid, sum(self.listed))
        return await super().rewrite_definition(uuid, transform)


def test_the_newcomer_is_reconciled_before_the_known_definitions_are_read(tmp_path: Path) -> None:
    # Reading 1,000 definitions (one libvirt call each) took most of the 2 s before a newcomer was reconciled.
    known = [guest(f"g{i:03d}") for i in range(40)]
    libvirt = Reading(known)
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["g*"]) as manager:
        asyncio.run(manager.reconcile())
    newcomer = guest("g999")
    libvirt.domains[newcomer.uuid] = newcomer
    libvirt.listed.clear()
    libvirt.read_before.clear()
    with in_process_manager(tmp_path, libvirt, auto_confine_names=["g*"]) as manager:
        asyncio.run(manager.reconcile())
        assert manager.store.count() == 41
    assert libvirt.read_before[newcomer.uuid] == 1, (
        f"{libvirt.read_before[newcomer.uuid]} definitions were read before the newcomer was reconciled")
    assert sum(libvirt.listed) == 41  # each definition once
