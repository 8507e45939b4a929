"""Load, memory and restart at scale (issue 19), on the real parts: private libvirtd, private bus, svirtd as a
process. Guests have no disks (their count is what is measured, as in guests_api.py).

1. pss_mb_idle: svirtd (and every helper process it keeps) idle, no guest: 35 s after READY (what it reads
   for a proof is let go after 30 s without a question).
2. 100 concurrent bus clients call Query flat out while 1,000 guests are defined in one burst: Query's p99,
   next to the p99 of the bus's own GetId asked on one more connection of the same client process at the
   same time (what the bus and the client cost under that load), and svirtd's Peer.Ping on another (its
   event loop's own latency: a Ping costs svirtd nothing, so it tells the loop's waits from Query's cost);
   `missed`: guests not isolated at the end, plus calls answered with anything but a report or NoSuchGuest
   (a guest defined, not isolated yet). Also the Query throughput and what it implies (Little's law): 100
   calls always in flight wait 100 / throughput on average, however cheap each is -- the floor of p50.
3. restart_1000_reconciled_s: svirtd stopped with 1,000 guests, one more defined meanwhile, svirtd started:
   seconds from its start to owning its bus name, and to Query answering for that guest.
4. pss_mb_10k_guests: with LOAD_BIG (10,000) guests isolated, the moment List says so (svirtd is still writing
   their identities into their definitions then, and handling the events that brings); with --only memory also
   pss_mb_10k_guests_settled: once svirtd has settled (its CPU time grows by less than 2 % over 5 s).
5. pss_growth_mb_100k_queries: PSS after LOAD_QUERIES (100,000) Query calls minus before, once svirtd has
   settled and after a warm-up of a tenth of them (svirtd keeps the reports of the 1,024 guests asked about
   most recently: report_cache.KEPT).

`--only memory` measures 1, 4 and 5 alone (the BIG guests defined at once, no burst, no restart): minutes
instead of the whole run. `--trace N` (with it) runs svirtd under bench/traced.py and prints the N biggest
allocation sites (tracemalloc, by file and line) with the BIG guests isolated; tracemalloc's own overhead
then inflates the PSS figures, which are printed but are not the ones to compare.

PSS is /proc/PID/smaps_rollup summed over svirtd and its descendants. Shared library pages count in part
when other processes map them (other Pythons on this machine): Pss_Anon, what svirtd alone owns, is printed
next to it. The LAST line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
import tracemalloc
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from testbed.daemon import SvirtdProcess
from testbed.guests import define_diskless, domain_xml
from testbed.stack import Stack, private_stack

PREFIX = "svb-load"
BURST = 1000
CLIENTS = 100
BIG = int(os.environ.get("LOAD_BIG", "10000"))
QUERIES = int(os.environ.get("LOAD_QUERIES", "100000"))
IDLE_WAIT = 35.0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def pss_mb(pid: int) -> tuple[float, float]:
    """(Pss, Pss_Anon) in MB of svirtd and its helpers."""
    pss = anon = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Pss":
                    pss += int(value.split()[0])
                elif key == "Pss_Anon":
                    anon += int(value.split()[0])
        except OSError:
            pass
    return pss / 1024, anon / 1024


def define(uri: str, count: int, start: int) -> list[str]:
    return define_diskless(uri, PREFIX, count, start)


def manager_call(member: str, signature: str = "", *body: object) -> Message:
    return Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.svirt.Manager1",
                   member=member, signature=signature, body=list(body))


def ping() -> Message:
    """Answered by svirtd's event loop itself, at no cost of its own: its latency is the loop's."""
    return Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.freedesktop.DBus.Peer",
                   member="Ping")


def getid() -> Message:
    return Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                   member="GetId")


async def isolated_count(address: str) -> int:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(manager_call("List"))
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
        return len(reply.body[0])
    finally:
        bus.disconnect()


async def wait_isolated(address: str, count: int, timeout: float) -> float:
    t0 = time.monotonic()
    while (n := await isolated_count(address)) < count:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{n} of {count} guests isolated after {timeout} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


class Burst:
    """Query from CLIENTS connections flat out, GetId on one more, until stopped."""

    def __init__(self, address: str, defined: list[str]) -> None:
        self.address, self.defined = address, defined
        self.query_ms: list[float] = []
        self.getid_ms: list[float] = []
        self.ping_ms: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def client(self, rng: random.Random) -> None:
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            while not self.stop.is_set():
                if not self.defined:
                    await asyncio.sleep(0.001)
                    continue
                t0 = time.perf_counter()
                reply = await bus.call(manager_call("Query", "s", rng.choice(self.defined)))
                self.query_ms.append((time.perf_counter() - t0) * 1000)
                name = "report" if reply and reply.message_type is MessageType.METHOD_RETURN else (
                    reply.error_name if reply else "none")
                self.outcomes[str(name)] = self.outcomes.get(str(name), 0) + 1
        finally:
            bus.disconnect()

    async def prober(self, message: Callable[[], Message], into: list[float]) -> None:
        bus = await MessageBus(bus_address=self.address).connect()
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                await bus.call(message())
                into.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.005)
        finally:
            bus.disconnect()


async def query_burst(address: str, uri: str) -> dict[str, float | int]:
    burst = Burst(address, [])
    tasks = [asyncio.create_task(burst.client(random.Random(i))) for i in range(CLIENTS)]
    tasks.append(asyncio.create_task(burst.prober(getid, burst.getid_ms)))
    tasks.append(asyncio.create_task(burst.prober(ping, burst.ping_ms)))

    def definer() -> None:
        conn = libvirt.open(uri)
        try:
            for i in range(BURST):
                uid = str(uuidlib.uuid4())
                conn.defineXML(domain_xml(f"{PREFIX}-{i}", uid, []))
                burst.defined.append(uid)
        finally:
            conn.close()

    t0 = time.monotonic()
    thread = threading.Thread(target=definer)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.05)
    defined_s = time.monotonic() - t0
    try:
        settle = await wait_isolated(address, BURST, 300)
    finally:
        burst.stop.set()
        took = time.monotonic() - t0
        await asyncio.gather(*tasks)
    wrong = sum(n for k, n in burst.outcomes.items()
                if k not in ("report", "org.svirt.Manager1.Error.NoSuchGuest"))
    missed = BURST - await isolated_count(address) + wrong
    print(f"burst: {BURST} guests defined in {defined_s:.1f} s, all isolated {settle:.1f} s after; "
          f"{len(burst.query_ms)} Query calls from {CLIENTS} clients: {burst.outcomes}")
    rate = len(burst.query_ms) / took
    # Little's law: CLIENTS calls always in flight, answered at `rate` a second, wait CLIENTS / rate on
    # average -- however fast each call is on its own. The clients, the bus and svirtd share the cores.
    print(f"Query throughput {rate:.0f}/s: {CLIENTS} clients in flight wait {CLIENTS / rate * 1000:.1f} ms on average")
    return {"query_per_s": rate, "little_ms": CLIENTS / rate * 1000,
            "query_p99_ms": p99(burst.query_ms), "query_p50_ms": statistics.median(burst.query_ms),
            "getid_p99_ms": p99(burst.getid_ms), "getid_p50_ms": statistics.median(burst.getid_ms),
            "ping_p99_ms": p99(burst.ping_ms), "ping_p50_ms": statistics.median(burst.ping_ms),
            "missed": missed, "queries": len(burst.query_ms)}


async def owner_of(bus: MessageBus, name: str) -> bool:
    reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
                                   body=[name]))
    return bool(reply and reply.message_type is MessageType.METHOD_RETURN and reply.body[0])


async def restart_at_scale(daemon: SvirtdProcess, address: str, uri: str) -> tuple[float, float]:
    """(to the bus, to the guest defined while down in List), seconds from svirtd's start."""
    daemon.stop()
    newcomer = define(uri, 1, BURST)[0]
    bus = await MessageBus(bus_address=address).connect()
    try:
        failed: list[BaseException] = []

        def start() -> None:
            try:
                daemon.start(timeout=120)
            except BaseException as exc:  # said below
                failed.append(exc)

        t0 = time.monotonic()
        thread = threading.Thread(target=start)
        thread.start()
        on_bus = reconciled = 0.0
        while not reconciled:
            if failed:
                raise failed[0]
            if time.monotonic() - t0 > 120:
                raise TimeoutError("svirtd did not reconcile the newcomer within 120 s")
            if not on_bus and await owner_of(bus, "org.svirt.Manager"):
                on_bus = time.monotonic() - t0
            if on_bus:  # Query, not List: asking for 1,000 rows every 10 ms would slow what is measured
                reply = await bus.call(manager_call("Query", "s", newcomer))
                if reply and reply.message_type is MessageType.METHOD_RETURN:
                    reconciled = time.monotonic() - t0
            await asyncio.sleep(0.01)
        thread.join()
        return on_bus, reconciled
    finally:
        bus.disconnect()


async def many_queries(address: str, uuids: list[str], total: int) -> float:
    """total Query calls from 10 connections; seconds taken."""
    per = total // 10

    async def one(seed: int) -> None:
        rng = random.Random(seed)
        bus = await MessageBus(bus_address=address).connect()
        try:
            for _ in range(per):
                reply = await bus.call(manager_call("Query", "s", rng.choice(uuids)))
                assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply.body
        finally:
            bus.disconnect()

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(10)))
    return time.monotonic() - t0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["memory"], help="measure only this part")
    parser.add_argument("--trace", type=int, default=0, metavar="N",
                        help="with --only memory: print svirtd's N biggest allocation sites (tracemalloc)")
    args = parser.parse_args()
    if args.trace and args.only != "memory":
        parser.error("--trace goes with --only memory")
    with private_stack(PREFIX, auto_verify_max_guests=0) as stack:
        try:
            if args.trace:  # started again under the tracer (before any guest: nothing is lost)
                stack.daemon.stop()
                stack.daemon.start(timeout=120, wrapper=[sys.executable, str(Path(__file__).with_name("traced.py"))])
            if args.only == "memory":
                memory(stack, args.trace)
            else:
                measure(stack)
        except BaseException:
            print(f"svirtd's log, last lines:\n{stack.daemon.log_tail(80)}", file=sys.stderr)
            raise


def idle_pss(daemon: SvirtdProcess) -> tuple[float, float]:
    assert daemon.proc is not None
    time.sleep(IDLE_WAIT)  # idle: the policy read for the proof after connecting is let go after 30 s
    idle, idle_anon = pss_mb(daemon.proc.pid)
    print(f"idle: PSS {idle:.1f} MB (anon {idle_anon:.1f})")
    return idle, idle_anon


def query_growth(daemon: SvirtdProcess, address: str, uuids: list[str]) -> tuple[float, float]:
    """(PSS, Pss_Anon) growth in MB over QUERIES Query calls, after a warm-up of a tenth of them."""
    assert daemon.proc is not None
    asyncio.run(many_queries(address, uuids, QUERIES // 10))  # warm: caches and allocator reach their size
    before, before_anon = pss_mb(daemon.proc.pid)
    took = asyncio.run(many_queries(address, uuids, QUERIES))
    after, after_anon = pss_mb(daemon.proc.pid)
    print(f"{QUERIES} Query calls in {took:.0f} s: PSS {before:.1f} -> {after:.1f} MB "
          f"(anon {before_anon:.1f} -> {after_anon:.1f})")
    return after - before, after_anon - before_anon


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_quiet(pid: int, quiet: float = 5.0, timeout: float = 900.0) -> float:
    """Seconds until svirtd uses less than 2 % of a core over `quiet` seconds (its backlog is done)."""
    t0 = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.02 * quiet:
            return time.monotonic() - t0
        last = now
    raise TimeoutError(f"svirtd still busy {timeout:.0f} s after the guests were isolated")


def trace_report(daemon: SvirtdProcess, top: int) -> None:
    """Ask the traced svirtd for its snapshot (bench/traced.py writes it on SIGUSR2) and print the top sites."""
    assert daemon.proc is not None
    dump = daemon.workdir / "tracemalloc.dump"
    daemon.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 120
    while not (dump.exists() and dump.with_suffix(".done").exists()):
        if time.monotonic() > deadline:
            raise TimeoutError("the traced svirtd wrote no snapshot within 120 s")
        time.sleep(0.5)
    stats = tracemalloc.Snapshot.load(str(dump)).statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"tracemalloc: {total / 2**20:.1f} MB traced in {len(stats)} sites; the {top} biggest:")
    for s in stats[:top]:
        frame = s.traceback[0]
        print(f"  {s.size / 2**20:7.2f} MB {s.count:8d} blocks  {frame.filename}:{frame.lineno}")


def memory(stack: Stack, trace: int) -> None:
    """Idle, BIG guests, QUERIES Query calls: the memory part alone."""
    address, uri, daemon = stack.bus.address, stack.libvirtd.uri, stack.daemon
    idle, idle_anon = idle_pss(daemon)
    t0 = time.monotonic()
    uuids = define(uri, BIG, 0)
    settle = asyncio.run(wait_isolated(address, BIG, 3600))
    assert daemon.proc is not None
    big, big_anon = pss_mb(daemon.proc.pid)
    print(f"{BIG} guests isolated ({time.monotonic() - t0:.0f} s to define and isolate, {settle:.0f} s after the "
          f"last define); PSS {big:.1f} MB (anon {big_anon:.1f})")
    quiet = wait_quiet(daemon.proc.pid)
    settled, settled_anon = pss_mb(daemon.proc.pid)
    print(f"settled {quiet:.0f} s later: PSS {settled:.1f} MB (anon {settled_anon:.1f})")
    if trace:
        trace_report(daemon, trace)
    growth, growth_anon = query_growth(daemon, address, uuids)
    print(json.dumps({
        "pss_mb_idle": round(idle, 1), "pss_anon_mb_idle": round(idle_anon, 1),
        "pss_mb_10k_guests": round(big, 1), "pss_anon_mb_10k_guests": round(big_anon, 1), "big_guests": BIG,
        "pss_mb_10k_guests_settled": round(settled, 1), "pss_anon_mb_10k_guests_settled": round(settled_anon, 1),
        "pss_growth_mb_100k_queries": round(growth, 1), "pss_anon_growth_mb_100k_queries": round(growth_anon, 1),
        "queries": QUERIES, "traced": bool(trace),
    }))


def measure(stack: Stack) -> None:
    address, uri, daemon = stack.bus.address, stack.libvirtd.uri, stack.daemon
    idle, idle_anon = idle_pss(daemon)
    assert daemon.proc is not None and stack.bus.proc is not None
    pids = {"svirtd": daemon.proc.pid, "dbus-daemon": stack.bus.proc.pid}
    cpu0, own0, t0 = {k: cpu_seconds(p) for k, p in pids.items()}, os.times(), time.monotonic()
    burst = asyncio.run(query_burst(address, uri))
    took, own1 = time.monotonic() - t0, os.times()
    shares = {k: (cpu_seconds(p) - cpu0[k]) / took for k, p in pids.items()}
    shares["clients (this process)"] = (own1.user + own1.system - own0.user - own0.system) / took
    print("cores used during the burst: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
          + f" (of {os.cpu_count()})")
    print(f"under the burst (ms): Query p50 {burst['query_p50_ms']:.1f} p99 {burst['query_p99_ms']:.1f}; "
          f"GetId p50 {burst['getid_p50_ms']:.1f} p99 {burst['getid_p99_ms']:.1f}; "
          f"svirtd's Ping p50 {burst['ping_p50_ms']:.1f} p99 {burst['ping_p99_ms']:.1f}; missed {burst['missed']}")
    assert daemon.proc is not None
    pss_1k, anon_1k = pss_mb(daemon.proc.pid)
    on_bus, reconciled = asyncio.run(restart_at_scale(daemon, address, uri))
    print(f"restart with {BURST + 1} guests: on the bus after {on_bus:.2f} s, newcomer reconciled after "
          f"{reconciled:.2f} s")
    t0 = time.monotonic()
    uuids = define(uri, BIG - BURST - 1, BURST + 1)
    settle = asyncio.run(wait_isolated(address, BIG, 3600))
    assert daemon.proc is not None
    big, big_anon = pss_mb(daemon.proc.pid)
    print(f"{BIG} guests isolated ({time.monotonic() - t0:.0f} s to define and isolate, {settle:.0f} s after the "
          f"last define); PSS {big:.1f} MB (anon {big_anon:.1f}); with {BURST}: {pss_1k:.1f} (anon {anon_1k:.1f})")
    quiet = wait_quiet(daemon.proc.pid)  # its own follow-up of the isolations is not the queries' growth
    print(f"settled {quiet:.0f} s later")
    growth, growth_anon = query_growth(daemon, address, uuids)
    print(json.dumps({
        "query_p99_ms_under_burst": round(burst["query_p99_ms"], 1),
        "query_p50_ms_under_burst": round(burst["query_p50_ms"], 1),
        "query_per_s_under_burst": round(burst["query_per_s"]),
        "little_ms_under_burst": round(burst["little_ms"], 1),
        "ping_p99_ms_under_burst": round(burst["ping_p99_ms"], 1),
        "getid_p99_ms_under_burst": round(burst["getid_p99_ms"], 1),
        "missed": burst["missed"],
        "pss_mb_idle": round(idle, 1), "pss_anon_mb_idle": round(idle_anon, 1),
        "pss_mb_1k_guests": round(pss_1k, 1),
        "pss_mb_10k_guests": round(big, 1), "pss_anon_mb_10k_guests": round(big_anon, 1), "big_guests": BIG,
        "pss_growth_mb_100k_queries": round(growth, 1),
        "pss_anon_growth_mb_100k_queries": round(growth_anon, 1), "queries": QUERIES,
        "restart_1000_on_bus_s": round(on_bus, 2),
        "restart_1000_reconciled_s": round(reconciled, 2),
    }))


if __name__ == "__main__":
    main()
