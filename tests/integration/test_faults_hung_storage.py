"""Issue 19: 200 guests whose images lie on storage that hangs (a stopped FUSE server, a dead NFS
server's stand-in) must not hold up any other guest, nor cost svirtd a thread or a process each.

Real parts: a bindfs mount whose daemon is SIGSTOPped, a private libvirtd with 200 real definitions,
svirtd as a real process on a private bus.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from svirtd.service import IO_THREADS
from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.mounts import Mounts
from tests.helpers import call, run, xattr
from tests.integration.test_relabel import fuse_waiters

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]

HUNG_GUESTS = int(os.environ.get("SVIRTD_FAULTS_GUESTS", "200"))  # `make soak` may ask for more
IO_TIMEOUT = 2.0
HEALTHY_BOUND = 10.0  # seconds one healthy guest's isolation (or release) may take meanwhile
IMAGE = "system_u:object_r:svirt_image_t:"


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def children(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            count += int(stat.rsplit(")", 1)[1].split()[1]) == pid  # field 4, after the command name
    return count


async def isolate_all(address: str, uuids: list[str], per_connection: int = 50,
                      answered: list[str] | None = None) -> list[tuple[float, str]]:
    """Isolate every guest at once (all calls in flight together, a few connections: the bus limits
    pending replies per connection): (seconds, error name and text) per guest; `answered` gets each
    guest's UUID as its answer comes."""
    async def one(client: SvirtClient, uuid: str) -> tuple[float, str]:
        t0 = time.monotonic()
        try:
            await client.call("Isolate", "ss", uuid, "")
            return time.monotonic() - t0, ""
        except CallFailed as exc:
            return time.monotonic() - t0, f"{exc.name}: {exc.text}"
        finally:
            if answered is not None:
                answered.append(uuid)

    async def batch(part: list[str]) -> list[tuple[float, str]]:
        async with SvirtClient(address) as client:
            return await asyncio.gather(*(one(client, u) for u in part))

    parts = [uuids[i:i + per_connection] for i in range(0, len(uuids), per_connection)]
    return [answer for answers in await asyncio.gather(*(batch(p) for p in parts)) for answer in answers]


def test_200_guests_on_hung_storage_hold_up_no_other_guest(bus: PrivateBus, guests: GuestFactory,
                                                           svirtd: StartSvirtd, tmp_path: Path,
                                                           mounts: Mounts) -> None:
    d = guests.image_dir
    src, hung = tmp_path / "hang-src", d / "hang"
    server = mounts.bindfs(src, hung, "--xattr-none")
    for i in range(HUNG_GUESTS):
        make_disk(src / f"{i}.img")
    stuck = [guests.new(disk_specs=[Disk(hung / f"{i}.img", "vda")]) for i in range(HUNG_GUESTS)]
    os.kill(server.pid, signal.SIGSTOP)  # the storage dies before svirtd ever looked at it
    t0 = time.monotonic()
    proc = svirtd(io_timeout_seconds=IO_TIMEOUT, require_confined=True)
    started = time.monotonic() - t0  # READY=1 comes after the first reconcile with libvirt: 200 refusals
    assert proc.proc is not None
    pid = proc.proc.pid
    peak_threads = peak_children = 0

    async def scenario() -> tuple[list[tuple[float, str]], list[float]]:
        nonlocal peak_threads, peak_children
        flood = asyncio.create_task(isolate_all(bus.address, [g.uuid for g in stuck]))
        await asyncio.sleep(0.5)  # the calls are in svirtd's hands
        peak_threads, peak_children = threads(pid), children(pid)
        healthy_times: list[float] = []
        for _ in range(3):  # meanwhile, guests on healthy storage are defined, isolated and released
            g = guests.new(define=False)
            await asyncio.to_thread(guests.define, g)
            t1 = time.monotonic()
            await asyncio.wait_for(call(bus, "Isolate", "ss", g.uuid, ""), HEALTHY_BOUND)
            assert (xattr(g.disk) or "").startswith(IMAGE)
            report = await asyncio.wait_for(call(bus, "Query", "s", g.uuid), HEALTHY_BOUND)  # reads labels on disk
            assert report["resources"][0]["status"] == "labeled", report
            await asyncio.wait_for(call(bus, "Release", "s", g.uuid), HEALTHY_BOUND)
            assert xattr(g.disk) is None
            healthy_times.append(time.monotonic() - t1)
            peak_threads, peak_children = max(peak_threads, threads(pid)), max(peak_children, children(pid))
        return await asyncio.wait_for(flood, 120), healthy_times

    try:
        answers, healthy_times = run(scenario())
        waiting = fuse_waiters(pid)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    slowest = max(t for t, _ in answers)
    print(f"svirtd ready in {started:.1f}s with {HUNG_GUESTS} guests on hung storage; {HUNG_GUESTS} Isolate calls "
          f"answered, slowest in {slowest:.1f}s; healthy isolate+release {max(healthy_times):.2f}s at most; "
          f"peak {peak_threads} threads, {peak_children} child processes")
    for _, error in answers:  # each refused with the typed error, naming the storage
        assert error.startswith("org.svirt.Manager1.Error.StorageNotResponding") and str(hung) in error, error
    assert slowest < IO_TIMEOUT * 3 + HEALTHY_BOUND, f"a stuck guest waited {slowest:.1f}s"
    assert waiting == 0, f"{waiting} svirtd threads wait on the hung storage"
    # Bounded whatever the number of stuck guests: the I/O pool, the loop, libvirt's and the gate's own.
    assert peak_threads <= IO_THREADS + 8, f"{peak_threads} threads"
    assert peak_children <= 4, f"{peak_children} child processes"


def test_storage_dying_under_200_isolations_in_flight_starves_no_other_guest(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, tmp_path: Path, mounts: Mounts) -> None:
    """The harder case: the storage answers the gate, then dies while 200 isolations on it are under
    way (lookups, probes, label reads in worker threads). Each thread that touched it waits in the
    kernel for good; that must cost neither the other guests nor the answers to the stuck ones. It did
    on the old code, whatever the number of threads: a label read through libselinux's binding kept the
    GIL while it waited on the dead server, so one such thread froze all of svirtd (no D-Bus answer,
    libvirt's keepalive lapsed and libvirtd dropped svirtd)."""
    d = guests.image_dir
    src, hung = tmp_path / "hang-src", d / "hang"
    server = mounts.bindfs(src, hung)  # xattrs pass through: labels are written on it
    for i in range(HUNG_GUESTS):
        make_disk(src / f"{i}.img")
    # Names outside auto_confine_names: svirtd leaves them alone until asked.
    stuck = [guests.new(name=f"{guests.prefix}x{i}", disk_specs=[Disk(hung / f"{i}.img", "vda")])
             for i in range(HUNG_GUESTS)]
    proc = svirtd(io_timeout_seconds=IO_TIMEOUT)
    assert proc.proc is not None
    pid = proc.proc.pid
    peak_threads = peak_children = 0

    async def scenario() -> tuple[list[tuple[float, str]], list[float]]:
        nonlocal peak_threads, peak_children
        answered: list[str] = []
        flood = asyncio.create_task(isolate_all(bus.address, [g.uuid for g in stuck], answered=answered))
        # Stop the server once the first isolations went through: the others are in flight.
        while len(answered) < 5:
            assert not flood.done(), "every isolation finished before the storage could die: the test proves nothing"
            await asyncio.sleep(0.01)
        os.kill(server.pid, signal.SIGSTOP)
        # Every request is answered (done before the storage died, or refused): none waits for good.
        answers = await asyncio.wait_for(flood, 120)
        healthy_times: list[float] = []
        for _ in range(3):
            g = guests.new(define=False)
            await asyncio.to_thread(guests.define, g)
            t1 = time.monotonic()
            await asyncio.wait_for(call(bus, "Isolate", "ss", g.uuid, ""), HEALTHY_BOUND)
            assert (xattr(g.disk) or "").startswith(IMAGE)
            await asyncio.wait_for(call(bus, "Release", "s", g.uuid), HEALTHY_BOUND)
            assert xattr(g.disk) is None
            healthy_times.append(time.monotonic() - t1)
            peak_threads, peak_children = max(peak_threads, threads(pid)), max(peak_children, children(pid))
        return answers, healthy_times

    try:
        answers, healthy_times = run(scenario())
        waiting = fuse_waiters(pid)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    done = sum(not error for _, error in answers)
    refused = [error for _, error in answers if error]
    print(f"storage died under {HUNG_GUESTS} isolations: {done} finished, {len(refused)} refused, slowest answer "
          f"{max(t for t, _ in answers):.1f}s; healthy isolate+release {max(healthy_times):.2f}s at most; "
          f"{waiting} threads left waiting on the storage; peak {peak_threads} threads, {peak_children} children")
    for error in refused:
        assert error.startswith("org.svirt.Manager1.Error.StorageNotResponding"), error
    assert waiting <= 8, f"{waiting} svirtd threads wait on the hung storage"
    assert peak_threads <= IO_THREADS + 8, f"{peak_threads} threads"
