"""The allocation table on a real 3-member etcd cluster (loopback), two hosts racing (issue 16).

Two "hosts", each a process of its own (testbed.cluster_host: its own SQLite store, allocator,
LevelBook and ClusterBook, as svirtd wires them, driven without libvirt) allocate 1,000 pairs side
by side, some for the same UUIDs, from a small category space so that picks really collide. Then: one
member killed (allocations go on), two killed (new allocations refused with ClusterUnavailable; guests
with a known pair still get it; guests undefined meanwhile), members back (everything reconciled,
nothing lost).

The baseline, side by side: two plain clients (http.client, one kept-alive connection each, each in a
process of its own) send the same transaction (KeyLayout.reserve, the same JSON) to the leader, at once,
in rounds alternating with the hosts' rounds, so both see the same load: etcd_raw_txn_* is what etcd
itself takes, svirtd_over_raw_p99 how much of the allocation's tail is svirtd's.

etcd's data: the headline numbers run with the members' data dirs on TMPFS (/dev/shm), standing for the
dedicated disk etcd's docs ask for; on this machine the three members would share one busy virtual disk.
The same race then runs again on a fresh cluster with its data on DISK (the temp dir's filesystem),
reported under "on_disk": that is the disk's cost here, not hidden (a production site's fsync is its own).
The hosts' SQLite stores are on disk in both. The machine is shared: each race reports the 1-minute load.

etcd's members run with Go's default of every core (etcd_cores), as production members do; the tests'
members keep to one core each (testbed.etcd). On this 2-core machine at a load of 15-18, one core each
made etcd's own p99 (the plain client's) 77 ms against 23-26 ms with both, with the data on tmpfs; on
disk the fsync dominates either way.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svirtd.cluster_model import Binding, KeyLayout, prefix_end
from svirtd.errors import ClusterUnavailable
from svirtd.etcd_client import EtcdClient, txn_body
from svirtd.models import Level
from testbed.cluster_host import ClusterHost
from testbed.etcd import EtcdCluster

ALLOCATIONS = 1000
SHARED = 50  # UUIDs allocated on both hosts (a guest defined on two hosts): 100 of the 1,000
CATEGORIES = range(80)  # 3,160 pairs: 1,000 picks from two stale-ish views collide now and then
ROUNDS = 5  # the hosts' allocations and the plain clients' transactions alternate, round by round


class Worker:
    """A process of its own (its own event loop and store, as two svirtd daemons are): the parent sends it
    commands over a pipe while, for a host, the ClusterBook's watch and lease run in the background."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any) -> None:
        self.host = name
        self.conn, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()

    def __call__(self, command: str, *args: Any) -> Any:
        self.conn.send((command, args))
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"{self.host}: {value}")
        return value

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self("stop")
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _raw_main(conn: Connection, endpoint: str, name: str) -> None:
    """A plain etcd client: the reserve transaction of a fresh UUID and pair, one after another, on one
    kept-alive HTTP connection; replies with the latencies (ms)."""
    host, _, port = endpoint.removeprefix("http://").partition(":")
    session = http.client.HTTPConnection(host, int(port), timeout=10)
    layout = KeyLayout(f"/svirt-raw-{name}/")
    done = 0
    while True:
        command, args = conn.recv()
        if command == "stop":
            session.close()
            conn.send((True, None))
            return
        latencies = []
        cpu = 0.0
        for _ in range(args[0]):
            level = Level(low=done % 1000, high=1000 + done // 1000)  # a pair nobody holds: it succeeds
            done += 1
            txn = layout.reserve(Binding(str(uuidlib.uuid4()), level, name, (name,)))
            c0, t0 = time.process_time(), time.perf_counter()
            session.request("POST", "/v3/kv/txn", json.dumps(txn_body(txn)), {"Content-Type": "application/json"})
            reply = json.loads(session.getresponse().read())
            latencies.append((time.perf_counter() - t0) * 1000)
            cpu += time.process_time() - c0
            if not reply.get("succeeded"):
                conn.send((False, f"raw txn failed: {reply}"))
                break
        else:
            conn.send((True, (latencies, cpu * 1000)))


def _host_main(conn: Connection, work: Path, host_id: str, endpoints: list[str]) -> None:
    asyncio.run(_serve_host(conn, work, host_id, endpoints))


async def _serve_host(conn: Connection, work: Path, host_id: str, endpoints: list[str]) -> None:
    host = await ClusterHost(work, host_id, endpoints, CATEGORIES, timeout=1.0).start()

    async def allocate(uuids: list[str]) -> tuple[dict[str, str], list[float], float]:
        """The pairs, each allocation's latency, and this process's CPU (ms) while allocating: the watch
        and lease work done meanwhile included, the assignment rows not."""
        got: dict[str, str] = {}
        latencies: list[float] = []
        cpu = 0.0
        for u in uuids:
            c0, t0 = time.process_time(), time.perf_counter()
            level, _note = await host.book.choose(u, u[:8], ())  # the allocation: etcd txn + this host's cache
            latencies.append((time.perf_counter() - t0) * 1000)
            cpu += time.process_time() - c0
            host.record(u, level)  # the assignment row, as with the local backend
            got[u] = str(level)
        return got, latencies, cpu * 1000

    async def isolate(uuids: list[str]) -> list[str]:
        out = []
        for u in uuids:
            try:
                out.append(str(await host.isolate(u)))
            except ClusterUnavailable:
                out.append("ClusterUnavailable")
        return out

    async def undefine(uuids: list[str]) -> None:
        for u in uuids:
            await host.undefine(u)

    async def release_kept(uuids: list[str]) -> None:
        for u in uuids:
            host.release_kept(u)

    async def state() -> dict[str, Any]:
        return {"available": host.book.available, "races_lost": host.book.races_lost,
                "assignments": {a.uuid: str(a.level) for a in host.store.assignments()},
                "rows": {r.uuid: (r.level, r.state) for r in host.store.cluster_bindings()}}

    commands: dict[str, Callable[..., Awaitable[Any]]] = {
        "allocate": allocate, "isolate": isolate, "undefine": undefine, "release_kept": release_kept, "state": state}
    try:
        while True:
            command, args = await asyncio.to_thread(conn.recv)
            if command == "stop":
                conn.send((True, None))
                return
            try:
                conn.send((True, await commands[command](*args)))
            except Exception as exc:
                conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        await host.stop()


async def etcd_table(endpoints: list[str]) -> tuple[dict[str, str], dict[str, tuple[str, ...]], dict[str, str]]:
    """(uuid -> level, uuid -> hosts, level -> owner) as etcd has them."""
    client = EtcdClient(tuple(endpoints), 2.0)
    layout = KeyLayout("/svirt/")
    try:
        guests, _ = await client.range(layout.guests, prefix_end(layout.guests))
        levels, _ = await client.range(layout.levels, prefix_end(layout.levels))
    finally:
        await client.close()
    bindings = [b for b in (layout.binding_in(kv) for kv in guests) if b is not None]
    owners = {str(lv): layout.owner_in(kv.value) or "?" for kv in levels if (lv := layout.level_of_key(kv.key))}
    return {b.uuid: str(b.level) for b in bindings}, {b.uuid: b.hosts for b in bindings}, owners


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(what)


def quantiles(latencies: list[float], what: str) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {f"{what}_p50_ms": round(statistics.median(latencies), 2), f"{what}_p90_ms": round(q[89], 2),
            f"{what}_p99_ms": round(q[98], 2)}


def chunk(items: list[str], r: int) -> list[str]:
    return items[r * len(items) // ROUNDS:(r + 1) * len(items) // ROUNDS]


def scenario(cluster: EtcdCluster, work: Path, faults: bool) -> dict[str, Any]:
    """The race (and, with faults, what follows it) on this cluster; the hosts' stores under work."""
    a = Worker("host-a", _host_main, work, "host-a", cluster.endpoints)
    b = Worker("host-b", _host_main, work, "host-b", cluster.endpoints)
    leader = cluster.endpoints[cluster.leader()]
    raw = [Worker(f"raw-{x}", _raw_main, leader, f"raw-{x}") for x in "ab"]
    out: dict[str, Any] = {}
    try:
        shared = [str(uuidlib.uuid4()) for _ in range(SHARED)]
        own = (ALLOCATIONS - 2 * SHARED) // 2
        only_a = [str(uuidlib.uuid4()) for _ in range(own)]
        only_b = [str(uuidlib.uuid4()) for _ in range(own)]
        load, term = round(os.getloadavg()[0], 2), cluster.raft_term()
        got_a: dict[str, str] = {}
        got_b: dict[str, str] = {}
        latencies: list[float] = []
        raw_latencies: list[float] = []
        elapsed = cpu = raw_cpu = 0.0
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both hosts (both plain clients) at once
            for r in range(ROUNDS):
                per_client = ALLOCATIONS // ROUNDS // 2
                for future in [pool.submit(client, "txns", per_client) for client in raw]:
                    lat, used = future.result()
                    raw_latencies += lat
                    raw_cpu += used
                t0 = time.perf_counter()
                fa = pool.submit(a, "allocate", chunk(only_a + shared, r))
                fb = pool.submit(b, "allocate", chunk(shared + only_b, r))
                (ga, lat_a, cpu_a), (gb, lat_b, cpu_b) = fa.result(), fb.result()
                elapsed += time.perf_counter() - t0
                cpu += cpu_a + cpu_b
                got_a.update(ga)
                got_b.update(gb)
                latencies += lat_a + lat_b
        bound, hosts, owners = asyncio.run(etcd_table(cluster.endpoints))
        mine = {**got_a, **got_b}
        duplicates = len(mine) - len(set(mine.values()))  # a pair handed to two UUIDs
        duplicates += sum(1 for u in shared if got_a[u] != got_b[u])  # one UUID, two pairs
        duplicates += sum(1 for u, lv in mine.items() if bound.get(u) != lv or owners.get(lv) != u)
        alloc, plain = quantiles(latencies, "etcd_alloc"), quantiles(raw_latencies, "etcd_raw_txn")
        out.update(loadavg_1m=load, allocations=len(latencies), seconds=round(elapsed, 2), duplicates=duplicates,
                   shared_uuid_same_pair=all(got_a[u] == got_b[u] for u in shared),
                   races_lost=a("state")["races_lost"] + b("state")["races_lost"], **alloc, **plain,
                   svirtd_over_raw_p50=round(alloc["etcd_alloc_p50_ms"] / plain["etcd_raw_txn_p50_ms"], 2),
                   svirtd_over_raw_p99=round(alloc["etcd_alloc_p99_ms"] / plain["etcd_raw_txn_p99_ms"], 2),
                   # CPU of the allocating process per allocation: what load barely moves
                   cpu_ms_per_alloc=round(cpu / len(latencies), 3),
                   raw_cpu_ms_per_txn=round(raw_cpu / len(raw_latencies), 3),
                   loadavg_1m_after=round(os.getloadavg()[0], 2),
                   elections=cluster.raft_term() - term)  # during the race: each stalls writes for a while
        if not faults:
            return out

        # One member of three killed: a majority is left, allocations go on.
        cluster.kill(0)
        extra = [str(uuidlib.uuid4()) for _ in range(40)]
        more = a("isolate", extra[:20]) + b("isolate", extra[20:])
        out["allocations_continue"] = "ClusterUnavailable" not in more and len(set(more)) == len(extra)

        # Two of three killed: no quorum. New pairs refused; known pairs still served; releases wait.
        cluster.kill(1)
        t1 = time.perf_counter()
        fresh = a("isolate", [str(uuidlib.uuid4()) for _ in range(10)]) + \
            b("isolate", [str(uuidlib.uuid4()) for _ in range(10)])
        out["refused_without_quorum"] = f"{fresh.count('ClusterUnavailable')}/{len(fresh)}"
        out["refusal_ms"] = round((time.perf_counter() - t1) * 1000 / len(fresh), 1)
        known = only_a[:10]
        a("release_kept", known)  # an admin's Release: the guest stays defined, its binding with it
        restarted = a("isolate", known) + b("isolate", only_b[:10])
        out["existing_guests_start"] = restarted == [got_a[u] for u in known] + [got_b[u] for u in only_b[:10]]
        gone = only_a[10:30] + shared[:10]
        a("undefine", gone)
        b("undefine", shared[:10])
        out["pending_while_down"] = sum(1 for _lv, st in a("state")["rows"].values() if st != "bound")

        # Members back: everything done meanwhile reaches etcd.
        cluster.start_member(0)
        cluster.start_member(1)
        cluster.wait_healthy(60)
        states: dict[str, dict[str, Any]] = {}

        def settled() -> bool:
            for h in (a, b):
                states[h.host] = h("state")
            return all(st["available"] and all(s == "bound" for _lv, s in st["rows"].values())
                       for st in states.values())

        back = wait_for(settled, 60, "reconcile")
        bound, hosts, owners = asyncio.run(etcd_table(cluster.endpoints))
        lost = 0
        for host, st in states.items():
            for uuid, level in st["assignments"].items():
                lost += bound.get(uuid) != level or host not in hosts.get(uuid, ())
            for uuid, (level, _state) in st["rows"].items():  # released with the guest still defined: kept
                lost += bound.get(uuid) != level
        leaked = sum(1 for u in gone if u in bound)
        twice = len(bound) - len(set(bound.values())) + sum(1 for u, lv in bound.items() if owners.get(lv) != u)
        out.update(reconciled=leaked == 0, reconcile_seconds=round(back, 2), lost=lost, leaked=leaked,
                   duplicates_after=twice + len(owners) - len(bound))
    finally:
        for worker in (a, b, *raw):
            worker.stop()
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="svirtd-bench-cluster-"))  # the hosts' stores: on disk, as svirtd's
    result: dict[str, Any] = {}
    try:
        # tmpfs first (the headline, with the faults), then the race alone with etcd's data on disk
        for where, under, faults in (("tmpfs", Path("/dev/shm"), True), ("disk", work, False)):
            cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix="svirtd-bench-etcd-", dir=under)), one_core=False)
            try:
                cluster.start()
                got = scenario(cluster, work / where, faults)
            finally:
                cluster.stop()
                shutil.rmtree(cluster.workdir, ignore_errors=True)
            if faults:
                result.update(got)
            else:
                result["on_disk"] = got
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "cluster", "etcd_data": "tmpfs", "etcd_cores": os.cpu_count(), "stores": "disk",
                      **result}))


if __name__ == "__main__":
    main()
