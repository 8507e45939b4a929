"""What svirtd's D-Bus methods cost, against the bus's own GetId on the same bus, side by side.

Real dbus-daemon (our policy file), real libvirtd, svirtd as a process, one guest with 4 disks:
- in-process (one dbus-fast connection, raw messages timed from send to raw reply, nothing unwrapped
  for any of them): Query and PrepareStart (a guest start whose resources are all in place, as the
  libvirt hook sends it) against GetId; the difference is the daemon's own cost (*_daemon_ms); and
  Peer.Ping to svirtd, the floor of any call a Python process answers;
- over busctl (a new process and connection per call, as the hook and admins do): the same.
Calls alternate with GetId, medians of ROUNDS; the ratios are the numbers to watch.

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


async def in_process(address: str, uuid: str, xml: str) -> dict[str, float]:
    """Each call timed the same way: one raw message out, its raw reply in, nothing unwrapped (GetId
    has nothing to unwrap; Query's a{sv} would cost the client, not the daemon)."""
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
            "query": lambda: svirt("Query", "s", uuid),
            "prepare_start": lambda: svirt("PrepareStart", "s", xml),
        }
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
        bus, guests, libvirtd = stack.bus, stack.guests, stack.libvirtd
        guest = guests.new(disks=4)
        deadline = time.monotonic() + 30
        while asyncio.run(_isolated(bus.address, guest.uuid)) is False:
            if time.monotonic() > deadline:
                raise TimeoutError("the guest was never isolated")
            time.sleep(0.05)
        xml = subprocess.run(["virsh", "-c", libvirtd.uri, "dumpxml", guest.name], check=True,
                             capture_output=True, text=True).stdout
        inproc = asyncio.run(in_process(bus.address, guest.uuid, xml))
        busctl = over_busctl(bus.address, guest.uuid, xml)
        print(f"in-process medians of {ROUNDS} (ms): {', '.join(f'{k} {v:.3f}' for k, v in inproc.items())}")
        print(f"busctl medians of {BUSCTL_ROUNDS} (ms): {', '.join(f'{k} {v:.2f}' for k, v in busctl.items())}")
        print(json.dumps({
            "getid_ms": round(inproc["getid"], 3),
            "query_ms": round(inproc["query"], 3),
            "prepare_start_ms": round(inproc["prepare_start"], 3),
            "ping_ms": round(inproc["ping"], 3),
            "ping_vs_getid": round(inproc["ping"] / inproc["getid"], 2),
            "query_vs_getid": round(inproc["query"] / inproc["getid"], 2),
            "query_vs_ping": round(inproc["query"] / inproc["ping"], 2),
            "query_daemon_ms": round(inproc["query"] - inproc["getid"], 3),
            "prepare_start_daemon_ms": round(inproc["prepare_start"] - inproc["getid"], 3),
            "prepare_start_vs_getid": round(inproc["prepare_start"] / inproc["getid"], 2),
            "busctl_getid_ms": round(busctl["getid"], 2),
            "busctl_query_ms": round(busctl["query"], 2),
            "busctl_prepare_start_ms": round(busctl["prepare_start"], 2),
            "busctl_prepare_start_vs_getid": round(busctl["prepare_start"] / busctl["getid"], 2),
        }))


async def _isolated(address: str, uuid: str) -> bool:
    async with SvirtClient(address) as client:
        rows = await client.call("List")
    return any(row[0] == uuid for row in rows)


if __name__ == "__main__":
    main()
