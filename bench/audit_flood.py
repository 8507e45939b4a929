"""Query latency while svirtd takes in an audit flood, against the same Query with no flood, side by side.

Real dbus-daemon, real libvirtd, svirtd as a process, two isolated guests. Each round: Query (raw
messages, nothing unwrapped) every 10 ms for as long as a flood of 10,000 USER_AVC records (a third
A->B, a third B->A, a third nobody's) is being sent, then as many Queries with no flood; which goes
first alternates. Medians and p99 of all rounds, and their ratios (the numbers to watch).

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType

from testbed.client import SvirtClient
from testbed.stack import private_stack

PREFIX = "svb-flood"
ROUNDS = 4
RECORDS = 10_000
FLOOD = """
import audit, sys
la, lb, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = audit.audit_open()
for i in range(n):
    s, t = ((la, lb), (lb, la), ("s0:c1022,c1023", "s0:c1021,c1022"))[i % 3]
    audit.audit_log_user_avc_message(fd, audit.AUDIT_USER_AVC,
        'avc:  denied  { read } for  pid=1 comm="bench-flood" name="x" dev="vda" ino=1 '
        'scontext=system_u:system_r:svirt_t:%s tcontext=system_u:object_r:svirt_image_t:%s '
        'tclass=file permissive=0' % (s, t), None, None, None, 0)
"""


async def queries(address: str, uuid: str, until: float | None = None, flood: subprocess.Popen[bytes] | None = None,
                  count: int = 0) -> list[float]:
    """Query latencies: while flood runs (flood given), else `count` of them."""
    times: list[float] = []
    async with SvirtClient(address) as client:
        assert client.bus is not None
        while (flood is not None and flood.poll() is None) or (flood is None and len(times) < count):
            msg = Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.svirt.Manager1",
                          member="Query", signature="s", body=[uuid])
            t0 = time.perf_counter()
            reply = await client.bus.call(msg)
            times.append(time.perf_counter() - t0)
            if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                raise RuntimeError(f"Query failed: {reply.body if reply else None}")
            await asyncio.sleep(0.01)
    return times


async def level(address: str, uuid: str) -> str | None:
    async with SvirtClient(address) as client:
        rows = await client.call("List")
    return next((row[2] for row in rows if row[0] == uuid), None)


def wait_level(address: str, uuid: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = asyncio.run(level(address, uuid))
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError("a guest was never isolated")


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def main() -> None:
    with private_stack(PREFIX) as stack:
        address = stack.bus.address
        a, b = stack.guests.new(), stack.guests.new()
        la, lb = wait_level(address, a.uuid), wait_level(address, b.uuid)
        flooded: list[float] = []
        idle: list[float] = []
        for round_ in range(ROUNDS):
            def with_flood() -> int:
                flood = subprocess.Popen([sys.executable, "-c", FLOOD, la, lb, str(RECORDS)])
                got = asyncio.run(queries(address, a.uuid, flood=flood))
                assert flood.wait() == 0
                flooded.extend(got)
                return len(got)

            if round_ % 2 == 0:
                n = with_flood()
                idle.extend(asyncio.run(queries(address, a.uuid, count=n)))
            else:
                idle.extend(asyncio.run(queries(address, a.uuid, count=max(20, len(flooded) // round_))))
                with_flood()
        med_f, med_i = statistics.median(flooded), statistics.median(idle)
        print(f"Query during a {RECORDS}-record flood: median {med_f * 1000:.2f} ms, p99 {p99(flooded) * 1000:.2f} ms "
              f"({len(flooded)} calls); without: median {med_i * 1000:.2f} ms, p99 {p99(idle) * 1000:.2f} ms "
              f"({len(idle)} calls)")
        print(json.dumps({
            "records_per_flood": RECORDS,
            "rounds": ROUNDS,
            "query_flood_median_ms": round(med_f * 1000, 3),
            "query_idle_median_ms": round(med_i * 1000, 3),
            "query_flood_p99_ms": round(p99(flooded) * 1000, 3),
            "query_idle_p99_ms": round(p99(idle) * 1000, 3),
            "flood_vs_idle_median": round(med_f / med_i, 2),
            "flood_vs_idle_p99": round(p99(flooded) / p99(idle), 2),
        }))


if __name__ == "__main__":
    main()
