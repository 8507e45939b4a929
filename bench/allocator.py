"""Allocation latency vs. occupancy: svirtd's indexed allocator against libvirt/go-selinux's random retry.

Both run in this process, on the full refpolicy space (c0.c1023 = 523,776 pairs), at the same
occupancies, in the same run. Also: how long a full table takes to say so, and the resident memory of
a real svirtd process (private bus, its own config) started on a table of 100,000 guests, before and
after it answers List with all of them.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.errors import LabelSpaceExhausted
from svirtd.store import _SCHEMA
from testbed.bus import PrivateBus
from testbed.client import SvirtClient
from testbed.daemon import SvirtdProcess

CATEGORIES = 1024
OCCUPANCIES = (0.5, 0.99, 0.9999)
GUESTS = 100_000


class RandomRetryAllocator:
    """The reference: virSecuritySELinuxMCSFind / go-selinux uniqMcs. Two random categories, never
    equal, retried until the pair is unused. Spins forever when the space is full."""

    def __init__(self, used: set[tuple[int, int]], rng: random.Random, max_draws: int | None = None) -> None:
        self.used = used
        self.rng = rng
        self.max_draws = max_draws

    def allocate(self) -> tuple[int, int]:
        draws = 0
        while True:
            draws += 1
            c1 = self.rng.randrange(CATEGORIES)
            c2 = self.rng.randrange(CATEGORIES)
            if c1 == c2:
                continue
            pair = (c1, c2) if c1 < c2 else (c2, c1)
            if pair not in self.used:
                self.used.add(pair)
                return pair
            if self.max_draws is not None and draws >= self.max_draws:
                raise TimeoutError(f"no free pair after {draws} draws")


def measure(occupancy: float, rng: random.Random) -> dict[str, float]:
    space = CategorySpace(range(CATEGORIES))
    alloc = PairAllocator(space, rng)
    target_used = round(space.total * occupancy)
    for _ in range(target_used):
        alloc.allocate()
    used = {space.level_at(i).pair for i in range(space.total) if not alloc.is_free(space.level_at(i))}
    ref = RandomRetryAllocator(set(used), rng)
    ops = 3000 if occupancy < 0.999 else 300

    svirtd_ns: list[int] = []
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        level = alloc.allocate()
        svirtd_ns.append(time.perf_counter_ns() - t0)
        alloc.release(level)  # keep the occupancy constant

    ref_ns: list[int] = []
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        pair = ref.allocate()
        ref_ns.append(time.perf_counter_ns() - t0)
        ref.used.discard(pair)
    return {"svirtd_us": round(statistics.mean(svirtd_ns) / 1000, 3),
            "random_retry_us": round(statistics.mean(ref_ns) / 1000, 3),
            "svirtd_p99_us": round(sorted(svirtd_ns)[int(ops * 0.99)] / 1000, 3),
            "random_retry_p99_us": round(sorted(ref_ns)[int(ops * 0.99)] / 1000, 3)}


def exhaustion(rng: random.Random) -> tuple[float, str]:
    space = CategorySpace(range(CATEGORIES))
    alloc = PairAllocator(space, rng)
    for _ in range(space.total):
        alloc.allocate()
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        try:
            alloc.allocate()
        except LabelSpaceExhausted:
            best = min(best, time.perf_counter() - t0)
    used = {space.level_at(i).pair for i in range(space.total)}
    ref = RandomRetryAllocator(used, rng, max_draws=1_000_000)
    t0 = time.perf_counter()
    try:
        ref.allocate()
        verdict = "returned?!"
    except TimeoutError:
        verdict = f"never returns: still spinning after 1,000,000 draws ({time.perf_counter() - t0:.1f} s)"
    return best * 1000, verdict


def rss_with_100k_guests(rng: random.Random) -> tuple[float, float, float]:
    """A real svirtd process (its own config, private bus) started on a table of 100,000 guests: its
    resident memory once READY, its peak after answering List with all of them, and the List time.
    libvirt is unreachable on purpose: a libvirtd without those guests would make svirtd release them
    all (reconciliation), and they exist nowhere else. svirtd keeps retrying libvirt meanwhile."""
    with tempfile.TemporaryDirectory(prefix="svirtd-bench-") as tmp:
        work = Path(tmp)
        state = work / "svirtd" / "state"
        state.mkdir(parents=True)
        conn = sqlite3.connect(state / "state.db")
        conn.executescript(_SCHEMA)
        space = CategorySpace(range(CATEGORIES))
        alloc = PairAllocator(space, rng)
        now = time.time()
        conn.executemany(
            "INSERT INTO assignments (uuid, name, level, profile, origin, state, note, created, updated)"
            " VALUES (?, ?, ?, 'default', 'auto', 'shutoff', '', ?, ?)",
            ((f"{i:08x}-0000-4000-8000-000000000000", f"guest{i:06d}", str(alloc.allocate()), now, now)
             for i in range(GUESTS)))
        conn.commit()
        conn.close()
        bus = PrivateBus(work / "bus").start()
        daemon = SvirtdProcess(work / "svirtd", bus.address, f"qemu:///system?socket={work / 'no-libvirtd'}",
                               work / "hook.env", log_level="warning")
        try:
            daemon.start(timeout=300)
            assert daemon.proc is not None
            steady = status_kb(daemon.proc.pid, "VmRSS")
            t0 = time.perf_counter()
            rows, free = asyncio.run(list_all(bus.address))
            list_s = time.perf_counter() - t0
            assert len(rows) == GUESTS and free == space.total - GUESTS, (len(rows), free)
            peak = status_kb(daemon.proc.pid, "VmHWM")
        finally:
            daemon.stop()
            bus.stop()
        return steady / 1024, peak / 1024, list_s


async def list_all(address: str) -> tuple[list[Any], int]:
    async with SvirtClient(address) as client:
        return await client.call("List"), await client.prop("CategoriesFree")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def main() -> None:
    rng = random.Random(42)
    result: dict[str, object] = {"occupancy": {}}
    for occ in OCCUPANCIES:
        m = measure(occ, rng)
        result["occupancy"][str(occ)] = m  # type: ignore[index]
        print(f"occupancy {occ}: svirtd {m['svirtd_us']} us (p99 {m['svirtd_p99_us']}), "
              f"random retry {m['random_retry_us']} us (p99 {m['random_retry_p99_us']})")
    exhausted_ms, ref_verdict = exhaustion(rng)
    result["exhausted_ms"] = round(exhausted_ms, 4)
    result["random_retry_exhausted"] = ref_verdict
    print(f"full table: svirtd answers LabelSpaceExhausted in {exhausted_ms:.4f} ms; random retry {ref_verdict}")
    steady, peak, list_s = rss_with_100k_guests(rng)
    result["svirtd_rss_mb_100k_guests"] = round(steady, 1)
    result["svirtd_rss_mb_100k_guests_peak_after_list"] = round(peak, 1)
    result["list_100k_s"] = round(list_s, 3)
    print(f"svirtd with 100,000 guests in its table: {steady:.1f} MB resident when ready, {peak:.1f} MB peak "
          f"after answering List ({list_s:.2f} s)")
    flat = result["occupancy"]["0.9999"]["svirtd_us"] / result["occupancy"]["0.5"]["svirtd_us"]  # type: ignore[index]
    result["svirtd_0.9999_vs_0.5"] = round(flat, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
