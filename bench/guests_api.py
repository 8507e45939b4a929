"""The per-guest objects at scale: with GUESTS isolated guests, what GetManagedObjects and List cost
(next to the bus's own GetId on the same connection), and how long after libvirt's lifecycle event a
watcher of one guest's object gets PropertiesChanged for its State.

Real dbus-daemon (our policy file), real libvirtd, svirtd as a process. The guests have no disks
(their count is what is measured, not relabeling); one guest is started and destroyed STARTS times
with real qemu. The event time is when a libvirt client of the same libvirtd (this script, its own
connection and event loop thread) receives the lifecycle event; the signal time is when a bus client
(tests.helpers.SignalRecorder, its own thread) receives PropertiesChanged. Both are time.monotonic().

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt
from dbus_fast import Message, MessageType

from svirtd.dbus_guests import guest_path
from testbed.client import SvirtClient
from testbed.guests import define_diskless
from testbed.stack import private_stack
from tests.helpers import SignalRecorder

GUESTS = 1000
ROUNDS = 20
STARTS = 30
PREFIX = "svb-api"


def define_guests(uri: str, count: int) -> list[str]:
    return define_diskless(uri, PREFIX, count)


async def list_count(address: str) -> int:
    async with SvirtClient(address) as client:
        return len(await client.call("List"))


async def call_costs(address: str) -> dict[str, float]:
    """Medians (ms) of raw calls, each reply fully received and parsed by the client."""
    async with SvirtClient(address) as client:
        assert client.bus is not None
        bus = client.bus
        messages: dict[str, Callable[[], Message]] = {
            "getid": lambda: Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                     interface="org.freedesktop.DBus", member="GetId"),
            "managed_objects": lambda: Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                                               interface="org.freedesktop.DBus.ObjectManager",
                                               member="GetManagedObjects"),
            "list": lambda: Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                                    interface="org.svirt.Manager1", member="List"),
        }
        times: dict[str, list[float]] = {name: [] for name in messages}
        sizes: dict[str, int] = {}
        for _ in range(ROUNDS):
            for name, make in messages.items():
                t0 = time.perf_counter()
                reply = await bus.call(make())
                times[name].append(time.perf_counter() - t0)
                if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                    raise RuntimeError(f"{name} failed: {reply.body if reply else None}")
                sizes[name] = len(reply.body[0]) if reply.body else 0
    out = {name: statistics.median(t) * 1000 for name, t in times.items()}
    out["objects"] = sizes["managed_objects"]
    return out


class LibvirtEvents:
    """Lifecycle events of one guest as a libvirt client receives them (monotonic time, state)."""

    def __init__(self, uri: str, uuid: str) -> None:
        libvirt.virEventRegisterDefaultImpl()
        self.conn = libvirt.open(uri)
        self.events: list[tuple[float, int]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.conn.domainEventRegisterAny(self.conn.lookupByUUIDString(uuid), libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         self._lifecycle, None)

    def _lifecycle(self, _conn: Any, _dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        self.events.append((time.monotonic(), event))

    def _run(self) -> None:
        while not self._stop:
            libvirt.virEventRunDefaultImpl()

    def close(self) -> None:
        self._stop = True
        self.conn.close()


def state_latencies(stack: Any, uuid: str) -> tuple[list[float], list[float]]:
    """ms from each STARTED/STOPPED lifecycle event to the PropertiesChanged with that State (negative:
    the signal came first: svirtd learns a start from libvirt's hook, before libvirt sends the event),
    and from the start of the create()/destroy() call to it."""
    path = guest_path(uuid)
    events = LibvirtEvents(stack.libvirtd.uri, uuid)
    conn = libvirt.open(stack.libvirtd.uri)
    dom = conn.lookupByUUIDString(uuid)
    latencies: list[float] = []
    after_call: list[float] = []
    try:
        with SignalRecorder(stack.bus, f"type='signal',path='{path}',member='PropertiesChanged'") as rec:
            for _ in range(STARTS):
                for action, event, state in ((dom.create, libvirt.VIR_DOMAIN_EVENT_STARTED, "running"),
                                             (dom.destroy, libvirt.VIR_DOMAIN_EVENT_STOPPED, "shutoff")):
                    seen = len(rec.signals())
                    called = time.monotonic()
                    action()
                    deadline = time.monotonic() + 10
                    signal = None
                    while signal is None and time.monotonic() < deadline:
                        signal = next((s for s in rec.signals()[seen:] if s.body[1].get("State") == state), None)
                        time.sleep(0.002)
                    if signal is None:
                        raise RuntimeError(f"no PropertiesChanged State={state} within 10 s of the call")
                    # This call's event (not an earlier one's), which reaches this script's own event thread
                    # seconds late on a loaded machine.
                    sent = None
                    while sent is None and time.monotonic() < deadline + 10:
                        sent = next((t for t, e in reversed(events.events) if e == event and t >= called), None)
                        time.sleep(0.002)
                    if sent is None:
                        raise RuntimeError(f"the State={state} signal came, libvirt's event to this script not")
                    latencies.append((signal.received - sent) * 1000)
                    after_call.append((signal.received - called) * 1000)
    finally:
        conn.close()
        events.close()
    return latencies, after_call


def main() -> None:
    with private_stack(PREFIX, auto_verify_max_guests=0, rescan_seconds=0) as stack:
        t0 = time.monotonic()
        uuids = define_guests(stack.libvirtd.uri, GUESTS)
        while asyncio.run(list_count(stack.bus.address)) < GUESTS:
            if time.monotonic() - t0 > 600:
                raise TimeoutError("svirtd did not isolate every guest within 600 s")
            time.sleep(0.5)
        print(f"{GUESTS} guests defined and isolated in {time.monotonic() - t0:.1f} s")
        costs = asyncio.run(call_costs(stack.bus.address))
        after_event, after_call = (sorted(x) for x in state_latencies(stack, uuids[0]))
        print(f"medians of {ROUNDS} (ms): GetId {costs['getid']:.3f}, GetManagedObjects {costs['managed_objects']:.1f} "
              f"({costs['objects']} objects), List {costs['list']:.1f}")
        print(f"State PropertiesChanged, {len(after_event)} starts and stops (ms): after libvirt's event p50 "
              f"{statistics.median(after_event):.1f} p99 {p99(after_event):.1f}; after the create()/destroy() call "
              f"p50 {statistics.median(after_call):.1f} p99 {p99(after_call):.1f}")
        print(json.dumps({
            "guests": GUESTS,
            "objects": costs["objects"],
            "getid_ms": round(costs["getid"], 3),
            "managed_objects_ms": round(costs["managed_objects"], 1),
            "list_ms": round(costs["list"], 1),
            "state_signal_after_event_p99_ms": round(p99(after_event), 1),
            "state_signal_after_call_p99_ms": round(p99(after_call), 1),
        }))


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


if __name__ == "__main__":
    main()
