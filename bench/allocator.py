"""Allocation latency vs. occupancy: svirtd's indexed allocator against libvirt/go-selinux's random retry.

Both run in this process, on the full refpolicy space (c0.c1023 = 523,776 pairs), at the same
occupancies, in the same run. Also: how long a full table takes to say so, and the resident memory of
a daemon process holding 100,000 guests (store + allocator loaded, as at start-up).

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.errors import LabelSpaceExhausted
from svirtd.store import _SCHEMA

CATEGORIES = 1024
OCCUPANCIES = (0.5, 0.99, 0.9999)


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


RSS_PROBE = """
import sys, random
sys.path.insert(0, {repo!r})
from pathlib import Path
from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.manager import Manager
from svirtd.store import Store
store = Store(Path({db!r}))
alloc = PairAllocator(CategorySpace(range(1024)), random.Random(1))
n = Manager.load_table(store, alloc)
assert n == 100_000 and alloc.used == 100_000, (n, alloc.used)
steady = int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])
rows = store.summary_rows()
after_list = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
print(steady, after_list)
"""


def rss_with_100k_guests(rng: random.Random) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="svirtd-bench-") as tmp:
        db = Path(tmp) / "state.db"
        conn = sqlite3.connect(db)
        conn.executescript(_SCHEMA)
        space = CategorySpace(range(CATEGORIES))
        alloc = PairAllocator(space, rng)
        now = time.time()
        conn.executemany(
            "INSERT INTO assignments (uuid, name, level, profile, origin, state, note, created, updated)"
            " VALUES (?, ?, ?, 'default', 'auto', 'shutoff', '', ?, ?)",
            ((f"{i:08x}-0000-4000-8000-000000000000", f"guest{i:06d}", str(alloc.allocate()), now, now)
             for i in range(100_000)))
        conn.commit()
        conn.close()
        out = subprocess.run([sys.executable, "-c", RSS_PROBE.format(repo=str(Path(__file__).parent.parent),
                                                                      db=str(db))],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]) / 1024, int(out[1]) / 1024


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
    steady, peak = rss_with_100k_guests(rng)
    result["rss_mb_100k_guests"] = round(steady, 1)
    result["rss_mb_100k_guests_peak_after_list"] = round(peak, 1)
    print(f"100,000 guests: {steady:.1f} MB resident after loading the table, {peak:.1f} MB peak after a List")
    flat = result["occupancy"]["0.9999"]["svirtd_us"] / result["occupancy"]["0.5"]["svirtd_us"]  # type: ignore[index]
    result["svirtd_0.9999_vs_0.5"] = round(flat, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
