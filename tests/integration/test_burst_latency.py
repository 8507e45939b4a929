"""Issue 19: svirtd answers on the bus while a burst of guests is defined. Peer.Ping is answered by svirtd's
own event loop and costs nothing itself, so its latency is the loop's: everything a define makes svirtd do
on the loop (the table's commits, the guest's bus objects, the libvirt events) shows in it. What held the
loop, each cause with its own test that failed before its fix: test_event_burst.py. This one guards the
whole path on the real parts: private libvirtd (300 diskless guests defined in a row from another thread),
private bus, svirtd as a process. Without other clients the old code stayed within the bound too (p99 39 ms
on the loaded 2-core machine): it is a guard against a loop held for long stretches, not a measurement
(bench/load.py measures, with 100 clients calling Query at the same time). The figures are printed."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory, define_diskless
from testbed.libvirtd import Libvirtd

pytestmark = pytest.mark.integration

BURST = 300
# The loop answers a Ping in well under a millisecond when idle. A bound this wide is missed only by a loop
# held for long stretches (a loaded machine adds tens of ms).
PING_P99_BOUND_MS = 250.0


def ping() -> Message:
    return Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.freedesktop.DBus.Peer",
                   member="Ping")


def listed() -> Message:
    return Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.svirt.Manager1",
                   member="List")


def test_the_bus_is_answered_while_guests_are_defined_in_a_burst(
        svirtd: Callable[..., SvirtdProcess], bus: PrivateBus, libvirtd: Libvirtd, guests: GuestFactory) -> None:
    svirtd(log_level="info", auto_verify_max_guests=0)
    defined = threading.Event()
    failed: list[BaseException] = []

    def definer() -> None:
        try:
            define_diskless(libvirtd.uri, guests.prefix, BURST)
        except BaseException as exc:  # said below
            failed.append(exc)
        finally:
            defined.set()

    async def scenario() -> tuple[list[float], int, float]:
        conn = await MessageBus(bus_address=bus.address).connect()
        try:
            reply = await conn.call(ping())  # svirtd answers before the burst
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            latencies: list[float] = []
            thread = threading.Thread(target=definer)
            t0 = time.monotonic()
            thread.start()
            isolated, last_count = 0, 0.0
            while isolated < BURST and time.monotonic() - t0 < 300:
                sent = time.perf_counter()
                reply = await conn.call(ping())
                latencies.append((time.perf_counter() - sent) * 1000)
                assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
                if defined.is_set() and time.monotonic() - last_count > 0.5:
                    last_count = time.monotonic()
                    rows = await conn.call(listed())
                    assert rows is not None and rows.message_type is MessageType.METHOD_RETURN, rows
                    isolated = sum(1 for row in rows.body[0] if row[1].startswith(guests.prefix))
                await asyncio.sleep(0.01)
            thread.join()
            return latencies, isolated, time.monotonic() - t0
        finally:
            conn.disconnect()

    latencies, isolated, took = asyncio.run(scenario())
    assert not failed, failed
    p99 = sorted(latencies)[int(len(latencies) * 0.99)]
    print(f"{BURST} guests defined and isolated in {took:.1f} s; {len(latencies)} Pings: p50 "
          f"{statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms")
    assert isolated == BURST, f"{isolated} of {BURST} guests isolated"
    assert p99 < PING_P99_BOUND_MS, f"Ping p99 {p99:.1f} ms while {BURST} guests were defined"
