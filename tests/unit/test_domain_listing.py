"""libvirt_watch's listing: bulk state/active/persistent when the driver has them, each domain asked
when it has not (fakes stand for libvirt's domain and connection objects: pure logic)."""

from __future__ import annotations

from typing import Any

import libvirt

from svirtd.libvirt_watch import LibvirtWatcher
from svirtd.models import GuestState


class FakeDomain:
    def __init__(self, uuid: str, name: str, state: int, persistent: bool) -> None:
        self.uuid, self.nm, self.st, self.persistent = uuid, name, state, persistent
        self.asked: list[str] = []

    def UUIDString(self) -> str:
        return self.uuid

    def name(self) -> str:
        return self.nm

    def state(self) -> tuple[int, int]:
        self.asked.append("state")
        return self.st, 0

    def isPersistent(self) -> int:
        self.asked.append("isPersistent")
        return int(self.persistent)

    def isActive(self) -> int:
        self.asked.append("isActive")
        return int(self.st == libvirt.VIR_DOMAIN_RUNNING)

    def XMLDesc(self, flags: int) -> str:
        return f"<domain><name>{self.nm}</name><!-- flags {flags} --></domain>"

    def securityLabelList(self) -> list[tuple[str, int]]:
        return [("system_u:system_r:svirt_t:s0:c1,c2", 1)]


class FakeConn:
    def __init__(self, domains: list[FakeDomain], bulk: bool) -> None:
        self.domains, self.bulk = domains, bulk

    def listAllDomains(self, flags: int) -> list[FakeDomain]:
        if flags == libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE:
            return [d for d in self.domains if d.st == libvirt.VIR_DOMAIN_RUNNING]
        if flags == libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT:
            return [d for d in self.domains if d.persistent]
        return list(self.domains)

    def getAllDomainStats(self, stats: int) -> list[tuple[FakeDomain, dict[str, Any]]]:
        if not self.bulk:
            raise libvirt.libvirtError("this function is not supported by the connection driver")
        return [(d, {"state.state": d.st, "state.reason": 0}) for d in self.domains]


def listing(bulk: bool) -> tuple[list[FakeDomain], dict[str, tuple[GuestState, bool, int, int]]]:
    domains = [FakeDomain("u1", "off", libvirt.VIR_DOMAIN_SHUTOFF, True),
               FakeDomain("u2", "on", libvirt.VIR_DOMAIN_RUNNING, True),
               FakeDomain("u3", "transient", libvirt.VIR_DOMAIN_RUNNING, False)]
    watch = LibvirtWatcher("test:///default", lambda _e: None, _nothing)
    infos = watch._list_blocking(FakeConn(domains, bulk))
    return domains, {i.uuid: (i.state, i.persistent, len(i.xmls), len(i.running_labels)) for i in infos}


async def _nothing() -> None:
    return None


def test_bulk_answers_spare_three_calls_per_domain_and_say_the_same() -> None:
    domains, bulk = listing(bulk=True)
    assert all(d.asked == [] for d in domains)
    each_domains, each = listing(bulk=False)
    assert all(d.asked == ["state", "isPersistent", "isActive"] for d in each_domains)
    assert bulk == each == {"u1": (GuestState.SHUTOFF, True, 1, 0), "u2": (GuestState.RUNNING, True, 2, 1),
                            "u3": (GuestState.RUNNING, False, 1, 1)}
