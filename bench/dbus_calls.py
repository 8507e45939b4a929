"""What svirtd's D-Bus methods cost, against the bus's own GetId on the same bus, side by side.

Real dbus-daemon (our policy file), real libvirtd, svirtd as a process, three guests with 1, 4 and 16
disks (one resource each):
- in-process (one dbus-fast connection in this bench's process, raw messages timed from send to raw
  reply, nothing unwrapped for any of them): Query and PrepareStart (a guest start whose resources are
  all in place, as the libvirt hook sends it) of each guest against GetId; the difference is the
  daemon's own cost (*_daemon_ms); and Peer.Ping to svirtd, the floor of any call a Python process
  answers (query_vs_ping says how far above that floor Query is). Every call still crosses the bus:
  "in-process" is about the client, not the daemon;
- over busctl (a new process and connection per call, as the hook and admins do): the 4-disk guest.
Calls alternate with GetId, medians of ROUNDS; the ratios are the numbers to watch. Unsuffixed keys
are the 1-disk guest's; *4_* and *16_* the others'.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType

from testbed.client import SvirtClient
from testbed.stack import private_stack

ROUNDS = 300
BUSCTL_ROUNDS = 60
PREFIX = "svb-dbus"
DISKS = (1, 4, 16)  # resources per guest


async def in_process(address: str, guests: dict[int, tuple[str, str]]) -> dict[str, float]:
    """Each call timed the same way: one raw message out, its raw reply in, nothing unwrapped (GetId
    has nothing to unwrap; Query's a{sv} would cost the client, not the daemon). guests: disks ->
    (uuid, definition)."""
    async with SvirtClient(address) as client:
        assert client.bus is not None
        bus = client.bus

        def svirt(member: str, signature: str, *args: str) -> Message:
            return Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                           interface="org.svirt.Manager1", member=member, signature=signature, body=list(args))

        messages: dict[str, Callable[[], Message]] = {
            "getid": lambda: Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                     interface="org.freedesktop.DBus", member="GetId"),
            # The floor of any call svirtd answers: Peer.Ping, answered by dbus-fast itself in svirtd's
            # process (GetId is answered by dbus-daemon in C).
            "ping": lambda: Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                                    interface="org.freedesktop.DBus.Peer", member="Ping"),
        }
        for disks, (uuid, xml) in guests.items():
            suffix = "" if disks == 1 else str(disks)
            messages[f"query{suffix}"] = lambda uuid=uuid: svirt("Query", "s", uuid)  # type: ignore[misc]
            messages[f"prepare_start{suffix}"] = lambda xml=xml: svirt("PrepareStart", "s", xml)  # type: ignore[misc]
        times: dict[str, list[float]] = {name: [] for name in messages}
        for _ in range(ROUNDS):
            for name, make in messages.items():
                msg = make()
                t0 = time.perf_counter()
                reply = await bus.call(msg)
                times[name].append(time.perf_counter() - t0)
                if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                    raise RuntimeError(f"{name} failed: {reply.error_name if reply else None} "
                                       f"{reply.body if reply else ''}")
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def over_busctl(address: str, uuid: str, xml: str) -> dict[str, float]:
    base = ["busctl", f"--address={address}", "call"]
    svirt = [*base, "org.svirt.Manager", "/org/svirt/Manager", "org.svirt.Manager1"]
    commands = {
        "getid": [*base, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId"],
        "query": [*svirt, "Query", "s", uuid],
        "prepare_start": [*svirt, "PrepareStart", "s", xml],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(BUSCTL_ROUNDS):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main() -> None:
    with private_stack(PREFIX) as stack:
        bus, libvirtd = stack.bus, stack.libvirtd
        made = {disks: stack.guests.new(disks=disks) for disks in DISKS}
        guests: dict[int, tuple[str, str]] = {}
        for disks, guest in made.items():
            deadline = time.monotonic() + 30
            while asyncio.run(_isolated(bus.address, guest.uuid)) is False:
                if time.monotonic() > deadline:
                    raise TimeoutError("the guest was never isolated")
                time.sleep(0.05)
            xml = subprocess.run(["virsh", "-c", libvirtd.uri, "dumpxml", guest.name], check=True,
                                 capture_output=True, text=True).stdout
            guests[disks] = (guest.uuid, xml)
        inproc = asyncio.run(in_process(bus.address, guests))
        busctl = over_busctl(bus.address, *guests[4])
        print(f"in-process medians of {ROUNDS} (ms): {', '.join(f'{k} {v:.3f}' for k, v in inproc.items())}")
        print(f"busctl medians of {BUSCTL_ROUNDS} (ms), 4 disks: "
              f"{', '.join(f'{k} {v:.2f}' for k, v in busctl.items())}")
        getid = inproc["getid"]
        out: dict[str, float] = {"getid_ms": round(getid, 3), "ping_ms": round(inproc["ping"], 3),
                                 "ping_vs_getid": round(inproc["ping"] / getid, 2)}
        for disks in DISKS:
            suffix = "" if disks == 1 else str(disks)
            for call in ("query", "prepare_start"):
                ms = inproc[f"{call}{suffix}"]
                out[f"{call}{suffix}_ms"] = round(ms, 3)
                out[f"{call}{suffix}_vs_getid"] = round(ms / getid, 2)
                out[f"{call}{suffix}_daemon_ms"] = round(ms - getid, 3)
            out[f"query{suffix}_vs_ping"] = round(inproc[f"query{suffix}"] / inproc["ping"], 2)
        out.update({
            "busctl_getid_ms": round(busctl["getid"], 2),
            "busctl_query4_ms": round(busctl["query"], 2),
            "busctl_prepare_start4_ms": round(busctl["prepare_start"], 2),
            "busctl_prepare_start4_vs_getid": round(busctl["prepare_start"] / busctl["getid"], 2),
        })
        print(json.dumps(out))


async def _isolated(address: str, uuid: str) -> bool:
    async with SvirtClient(address) as client:
        rows = await client.call("List")
    return any(row[0] == uuid for row in rows)


if __name__ == "__main__":
    main()
