"""What the guests' bus objects keep per guest (issue 19: 10,000 guests within 100 MB for all of svirtd).
tracemalloc counts the bytes Python allocated for them: no timing, the same count on any machine load.

The bus is dbus-fast's, not connected (nothing is sent); the manager is a stand-in answering what the
objects ask (rows as SQLite hands them: new strings each time)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid as uuidlib
from typing import Any, cast

from svirtd.dbus_guests import GuestObjects, ObjectManagerBus
from svirtd.models import Assignment, GuestState, Level, Origin

GUESTS = 2000
# Bytes kept per guest: its snapshot (11 properties, ~0.5 KB for these) and its place in the table. An
# exported dbus-fast ServiceInterface with prebuilt variants kept ~6 KB.
BUDGET = 1000


class Store:
    def __init__(self, uuids: list[str]) -> None:
        self.uuids = uuids
        self.observer: object = None

    def get(self, uuid: str) -> Assignment:
        n = self.uuids.index(uuid) if len(self.uuids) < 10 else int(uuid[-6:], 16)
        return Assignment(uuid="".join(uuid), name=f"guest-{n:05d}", level=Level(low=n % 1000, high=1000 + n // 1000),
                          profile="".join("default"), origin=Origin.AUTO, state=GuestState.SHUTOFF, created=0.0,
                          updated=0.0)

    def claims_for(self, uuid: str) -> list[object]:
        return []

    def summary_rows(self) -> list[tuple[str, ...]]:
        return [(u,) for u in self.uuids]


class Spec:
    def image_label(self, level: Level) -> str:
        return f"system_u:object_r:svirt_image_t:{level}"


class Manager:
    def __init__(self, uuids: list[str]) -> None:
        self.store, self.spec = Store(uuids), Spec()
        self.on_verified: object = None

    def process_label(self, a: Assignment, tcg: bool) -> str:
        return f"system_u:system_r:svirt_t:{a.level}"

    def is_tcg(self, uuid: str) -> bool:
        return False

    def isolation_status(self, uuid: str) -> str:
        return "".join("not verified yet (run `svirtctl verify`)")


class Iface:
    jobs = None


async def kept_per_guest(count: int) -> float:
    uuids = [str(uuidlib.UUID(int=uuidlib.uuid4().int & ~0xFFFFFF | n)) for n in range(count)]
    bus = ObjectManagerBus(bus_address="unix:path=/nonexistent")
    objects = GuestObjects(bus, cast(Any, Manager(uuids)), cast(Any, Iface()))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        objects.start()
        while objects.path_of(uuids[-1]) is None:  # the rest are exported a chunk per turn of the loop
            await asyncio.sleep(0)
        assert all(objects.path_of(u) for u in uuids)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def test_a_guests_object_keeps_little_more_than_its_properties() -> None:
    per_guest = asyncio.run(kept_per_guest(GUESTS))
    print(f"{per_guest:.0f} bytes kept per guest")
    assert per_guest < BUDGET, f"{per_guest:.0f} bytes per guest"
