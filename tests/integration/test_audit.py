"""Issue 7: denials attributed to guests, live from the kernel's audit netlink multicast.

Records are injected the way a userspace object manager sends them (USER_AVC through libaudit: they
reach the multicast even with audit disabled), travel through the kernel and arrive in svirtd.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import audit
import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from svirtd.ctl import unwrap as plain
from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, Guest, GuestFactory
from tests.conftest import wait_until
from tests.helpers import SignalRecorder, call, run

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]


def avc_text(source_level: str, target_level: str, marker: str = "qemu-system-x86",
             target_type: str = "svirt_image_t") -> str:
    # The marker is also the file's name: Denied signals carry path= (never the raw record).
    return (f'avc:  denied  {{ read write }} for  pid=4242 comm="{marker}" name="{marker}" dev="vda" ino=12 '
            f"scontext=system_u:system_r:svirt_t:{source_level} "
            f"tcontext=system_u:object_r:{target_type}:{target_level} tclass=file permissive=0")


def inject(text: str) -> None:
    fd = audit.audit_open()
    try:
        audit.audit_log_user_avc_message(fd, audit.AUDIT_USER_AVC, text, None, None, None, 0)
    finally:
        audit.audit_close(fd)




async def query(bus: PrivateBus, uuid: str) -> dict[str, Any]:
    async with SvirtClient(bus.address) as c:
        result = await c.call("Query", "s", uuid)
        assert isinstance(result, dict)
        return result


async def stats(bus: PrivateBus) -> dict[str, int]:
    async with SvirtClient(bus.address) as c:
        result = await c.prop("AuditStats")
        assert isinstance(result, dict)
        return result


def level_of(bus: PrivateBus, uuid: str) -> str:
    return str(run(query(bus, uuid))["level"])


def levels_of(bus: PrivateBus, *gs: Guest) -> list[str]:
    return [str(wait_until(functools.partial(level_of, bus, g.uuid), what="isolated")) for g in gs]


@pytest.fixture
def pair(guests: GuestFactory, svirtd: StartSvirtd, bus: PrivateBus) -> Iterator[tuple[SvirtdProcess, Guest, Guest,
                                                                                          str, str]]:
    proc = svirtd()
    a, b = guests.new(), guests.new()
    la, lb = levels_of(bus, a, b)
    yield proc, a, b, la, lb


def test_denial_reaches_a_subscriber_naming_both_guests(bus: PrivateBus, pair: Any) -> None:
    _proc, a, b, la, lb = pair

    async def scenario() -> tuple[dict[str, Any], float]:
        client = await MessageBus(bus_address=bus.address).connect()
        got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def handler(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "Denied" and not got.done():
                got.set_result(plain(msg.body[0]))

        client.add_message_handler(handler)
        await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                  interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                  body=["type='signal',interface='org.svirt.Manager1',member='Denied'"]))
        t0 = time.monotonic()
        await asyncio.to_thread(inject, avc_text(la, lb))
        event = await asyncio.wait_for(got, 30)
        elapsed = time.monotonic() - t0
        client.disconnect()
        return event, elapsed

    event, elapsed = run(scenario())
    print(f"Denied arrived {elapsed * 1000:.1f} ms after the record was sent")
    assert (event["source_uuid"], event["source_name"]) == (a.uuid, a.name)
    assert (event["target_uuid"], event["target_name"]) == (b.uuid, b.name)
    assert f"MCS isolation between guest {a.name} and guest {b.name}" in event["explanation"]
    assert event["permissions"] == ["read", "write"] and event["tclass"] == "file"
    history = run(query(bus, a.uuid))["denials"]
    assert history and history[-1]["target_name"] == b.name and "raw" in history[-1]
    assert run(query(bus, b.uuid))["denials"][-1]["source_name"] == a.name


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


FLOOD = textwrap.dedent("""
    import audit, sys
    la, lb, n, token = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fd = audit.audit_open()
    for i in range(n):
        if i % 3 == 0:
            s, t, marker = la, lb, "flood-a2b"
        elif i % 3 == 1:
            s, t, marker = lb, la, "flood-b2a"
        else:
            s, t, marker = "s0:c1022,c1023", "s0:c1021,c1022", "flood-none"   # nobody's levels
        text = ('avc:  denied  { read } for  pid=1 comm="%s-%s" name="%s-%s" dev="vda" ino=1 '
                'scontext=system_u:system_r:svirt_t:%s tcontext=system_u:object_r:svirt_image_t:%s '
                'tclass=file permissive=0' % (marker, token, marker, token, s, t))
        audit.audit_log_user_avc_message(fd, audit.AUDIT_USER_AVC, text, None, None, None, 0)
""")
FLOOD_RECORDS = 10_000
A2B, B2A = len(range(0, FLOOD_RECORDS, 3)), len(range(1, FLOOD_RECORDS, 3))  # 3334 and 3333; the rest: nobody's


def denied_for(recorder: SignalRecorder, uuid: str) -> list[dict[str, Any]]:
    """Denied signals whose rate-limit key is this guest (the source guest, as svirtd keys them)."""
    return [s.body[0] for s in recorder.signals("Denied") if s.body[0]["source_uuid"] == uuid]


def sentinel_through(recorder: SignalRecorder, source: str, target: str, uuid: str, token: str) -> int:
    """Send marked records from source's level to target's, one at a time, until one comes back as a
    Denied signal (the rate limit holds the others back and counts them). Records travel and are
    handled in order, so every record sent before it has been handled too. Returns how many were sent."""
    for k in range(1, 400):
        marker = f"sentinel-{token}-{k}"
        inject(avc_text(source, target, marker=marker))
        if wait_for_signal(recorder, uuid, marker, 0.25):
            return k
    raise AssertionError("no sentinel record came back as a Denied signal in 400 tries (100 s)")


def wait_for_signal(recorder: SignalRecorder, uuid: str, marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(marker in event["path"] for event in denied_for(recorder, uuid)):
            return True
        time.sleep(0.01)
    return False


def test_a_flood_of_10000_records_is_attributed_exactly_and_rate_limited(bus: PrivateBus, pair: Any) -> None:
    """Only what this test sent is counted: svirtd hears every audit record on the host (other suites
    flood too), so counts come from the Denied signals of this test's guests, whose rate limit (50 per
    guest per second) reports how many it held back. AuditStats are host-wide: lower bounds only."""
    proc, a, b, la, lb = pair
    assert proc.proc is not None
    token = secrets.token_hex(3)
    before_stats = run(stats(bus))
    rss_before = rss_kb(proc.proc.pid)
    latencies: list[float] = []
    with SignalRecorder(bus, "type='signal',interface='org.svirt.Manager1',member='Denied'") as recorder:
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, la, lb, str(FLOOD_RECORDS), token])

        async def probe() -> None:
            """Query A every 10 ms while the flood is being sent: every answer must be A's."""
            async with SvirtClient(bus.address) as c:
                while flood.poll() is None or not latencies:
                    t0 = time.monotonic()
                    assert (await c.call("Query", "s", a.uuid))["uuid"] == a.uuid
                    latencies.append(time.monotonic() - t0)
                    await asyncio.sleep(0.01)

        run(probe())
        assert flood.wait(120) == 0
        sent_a = sentinel_through(recorder, la, lb, a.uuid, token)
        sent_b = sentinel_through(recorder, lb, la, b.uuid, token)
        signals_a, signals_b = denied_for(recorder, a.uuid), denied_for(recorder, b.uuid)
    after = run(stats(bus))
    rss_after = rss_kb(proc.proc.pid)
    print(f"flood: {len(latencies)} Queries while it was sent, median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms; Denied signals A {len(signals_a)}, B {len(signals_b)}; host-wide "
          f"deltas: received {after['received'] - before_stats['received']}, attributed "
          f"{after['attributed'] - before_stats['attributed']}, unattributed "
          f"{after['unattributed'] - before_stats['unattributed']}, lost {after['lost'] - before_stats['lost']}; "
          f"RSS {rss_before} -> {rss_after} kB")
    for uuid, signals, expected in ((a.uuid, signals_a, A2B + sent_a), (b.uuid, signals_b, B2A + sent_b)):
        # Every record this test sent about the guest: passed as a signal, or held back and counted.
        assert sum(1 + e["suppressed"] for e in signals) == expected, (uuid, len(signals))
        assert all(token in e["path"] for e in signals), "a Denied signal for a record this test did not send"
        assert all(e["raw"] == "" for e in signals), "a Denied signal carries the raw record to every listener"
        # At most 50 per second: passed signals in k windows of >= 1 s each span at least k - 1 seconds.
        times = [e["time"] for e in signals]
        assert len(signals) <= 50 * (int(max(times) - min(times)) + 1), (len(signals), max(times) - min(times))
        assert any(e["suppressed"] for e in signals), "the rate limit never held a signal back"
    # Host-wide counters only grow with other processes' records: lower bounds.
    assert after["attributed"] - before_stats["attributed"] >= A2B + B2A + sent_a + sent_b
    assert after["unattributed"] - before_stats["unattributed"] >= FLOOD_RECORDS - A2B - B2A
    assert rss_after - rss_before < 30 * 1024, "memory grew with the flood"
    for guest, other, own_marker, other_marker in ((a, b, "flood-a2b", "flood-b2a"), (b, a, "flood-b2a", "flood-a2b")):
        history = run(query(bus, guest.uuid))["denials"]
        assert 0 < len(history) <= 50  # bounded
        assert f"sentinel-{token}" in history[-1]["raw"]  # the latest is the last one this test sent
        for entry in history:
            pair_names = {entry["source_name"], entry["target_name"]}
            assert pair_names == {guest.name, other.name}, entry
            if "sentinel" in entry["raw"]:
                continue
            expected_source = guest.name if own_marker in entry["raw"] else other.name
            assert other_marker in entry["raw"] or own_marker in entry["raw"]
            assert entry["source_name"] == expected_source, "attributed to the wrong guest"


def test_1000_malformed_records_are_counted_never_fatal(bus: PrivateBus, pair: Any) -> None:
    proc, a, b, la, lb = pair
    token = secrets.token_hex(3)
    before = run(stats(bus))
    good = avc_text(la, lb, marker=f"cut-{token}")
    fd = audit.audit_open()
    try:
        for i in range(1000):
            cut = good[: (i * 7) % 180]  # truncated at every length, contexts missing
            if i % 4 == 0:
                cut = good.replace("scontext=", "scontxt=")
            elif i % 4 == 1:
                cut = good.replace("{ read write }", "{ }")
            audit.audit_log_user_avc_message(fd, audit.AUDIT_USER_AVC, cut, None, None, None, 0)
    finally:
        audit.audit_close(fd)
    # A well-formed record after them: once it is in A's history, all 1000 have been handled.
    sentinel = f"after-{token}"
    inject(avc_text(la, lb, marker=sentinel))
    wait_until(lambda: sentinel in run(query(bus, a.uuid))["denials"][-1]["raw"], what="the record after them")
    after = run(stats(bus))
    # Host-wide counters (other processes' records count too): at least the 1000 sent here.
    assert after["malformed"] - before["malformed"] >= 1000
    assert after["received"] - before["received"] >= 1001
    for guest in (a, b):  # none of the broken ones was taken for a denial
        assert not [e for e in run(query(bus, guest.uuid))["denials"] if f"cut-{token}" in e["raw"]]
    assert proc.proc is not None and proc.proc.poll() is None
    assert run(query(bus, a.uuid))["uuid"] == a.uuid  # still serving


@contextlib.contextmanager
def audit_enabled() -> Iterator[None]:
    fd = audit.audit_open()
    was = audit.audit_is_enabled(fd)
    audit.audit_set_enabled(fd, 1)
    try:
        yield
    finally:
        audit.audit_set_enabled(fd, was)
        audit.audit_close(fd)


@contextlib.contextmanager
def audit_records() -> Iterator[Callable[[int, str], str]]:
    """With audit enabled and the kernel's audit multicast joined: wait_for(record type, text in it)
    returns the first such record that arrives ("" after 30 s)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)
    sock.bind((0, 1))
    sock.settimeout(0.5)

    def wait_for(record_type: int, needle: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            length, msg_type = struct.unpack_from("=IH", data)
            text = data[16:length].decode(errors="replace")
            if msg_type == record_type and needle in text:
                return text
        return ""

    try:
        with audit_enabled():
            yield wait_for
    finally:
        sock.close()


def test_virt_machine_id_record_for_a_new_binding(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd()
    with audit_records() as wait_for:
        g = guests.new()
        found = wait_for(audit.AUDIT_VIRT_MACHINE_ID, g.uuid)
    assert found, "no VIRT_MACHINE_ID record for the new binding"
    level = run(query(bus, g.uuid))["level"]
    assert f"vm-ctx=system_u:system_r:svirt_t:{level}" in found
    assert f"img-ctx=system_u:object_r:svirt_image_t:{level}" in found and "model=selinux" in found
    assert f'vm="{g.name}"' in found


def test_virt_control_record_for_a_release(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd()
    g = guests.new()
    levels_of(bus, g)
    with audit_records() as wait_for:
        run(call(bus, "Release", "s", g.uuid))
        found = wait_for(audit.AUDIT_VIRT_CONTROL, g.uuid)
    assert found, "no VIRT_CONTROL record for the release"
    assert "virt=kvm op=release" in found and f'vm="{g.name}"' in found and "res=success" in found, found
    assert not any(r[0] == g.uuid for r in run(call(bus, "List")))


def test_virt_control_record_for_a_refused_isolation(bus: PrivateBus, guests: GuestFactory,
                                                     svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    owner = guests.new()
    run(call(bus, "Isolate", "ss", owner.uuid, ""))
    taker = guests.new(disk_specs=[Disk(owner.disk, "vda")])  # another guest's private disk
    with audit_records() as wait_for:
        with pytest.raises(CallFailed) as exc:
            run(call(bus, "Isolate", "ss", taker.uuid, ""))
        found = wait_for(audit.AUDIT_VIRT_CONTROL, taker.uuid)
    assert exc.value.name == "org.svirt.Manager1.Error.ResourceConflict"
    assert found, "no VIRT_CONTROL record for the refused isolation"
    assert "op=isolate reason=ResourceConflict" in found and f'vm="{taker.name}"' in found, found
    assert "res=failed" in found, found


def test_audit_log_file_fallback(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("type=DAEMON_START msg=audit(1795643000.000:1): op=start\n")
    svirtd(audit_source=f"file:{log}")
    a, b = guests.new(), guests.new()
    la, lb = levels_of(bus, a, b)
    with log.open("a") as fh:
        fh.write(f'type=AVC msg=audit(1795643064.286:7): {avc_text(la, lb).replace("qemu-system-x86", "qemu")}\n')
    history = wait_until(lambda: run(query(bus, a.uuid))["denials"], what="denial from audit.log")
    assert isinstance(history, list) and history[-1]["target_name"] == b.name
    os.truncate(log, 0)  # rotation/truncation: keeps following
    with log.open("a") as fh:
        fh.write(f"type=AVC msg=audit(1795643065.286:8): {avc_text(lb, la)}\n")
    wait_until(lambda: run(query(bus, b.uuid))["denials"][-1]["target_name"] == a.name, what="after truncation")
