"""svirtctl: the admin's command line for svirtd (a plain D-Bus client of org.svirt.Manager1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "org.svirt.Manager"
OBJECT_PATH = "/org/svirt/Manager"
INTERFACE = "org.svirt.Manager1"


def unwrap(value: Any) -> Any:
    """Variants -> plain Python values, recursively (for printing and --json)."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               interface: str = INTERFACE) -> list[Any]:
    reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface, member=member,
                                   signature=signature, body=body or []))
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed",
                        reply.body[0] if reply.body else "")
    return list(reply.body)


def print_report(report: dict[str, Any]) -> None:
    print(f"guest      {report['name']} ({report['uuid']})")
    print(f"level      {report['level']}  (categories {', '.join(f'c{c}' for c in report['categories'])})")
    print(f"label      {report['label']}")
    print(f"image      {report['image_label']}")
    print(f"profile    {report['profile']}   state {report['state']}   origin {report['origin']}")
    if report.get("note"):
        print(f"note       {report['note']}")
    print(f"isolation  {report.get('isolation', '')}")
    print("resources")
    for r in report["resources"]:
        print(f"  {r['status']:<14} {r['class']:<9} {r['device']:<22} {r['path']}")
        if r["expected"]:
            print(f"  {'':<14} expected {r['expected']}")
            print(f"  {'':<14} actual   {r['actual'] or '(none)'}")
        if r["note"]:
            print(f"  {'':<14} {r['note']}")


async def cmd_list(bus: MessageBus, args: argparse.Namespace) -> None:
    (rows,) = await call(bus, "List")
    if args.json:
        fields = ("uuid", "name", "level", "profile", "state")
        print(json.dumps([dict(zip(fields, r, strict=True)) for r in rows], indent=2))
        return
    print(f"{'UUID':<36}  {'NAME':<20} {'LEVEL':<14} {'PROFILE':<9} STATE")
    for uuid, name, level, profile, state in rows:
        print(f"{uuid:<36}  {name:<20} {level:<14} {profile:<9} {state}")


async def cmd_query(bus: MessageBus, args: argparse.Namespace) -> None:
    if args.command == "query":
        (report,) = await call(bus, "Query", "s", [args.guest])
    else:
        (report,) = await call(bus, "Isolate", "ss", [args.guest, args.profile])
    plain = unwrap(report)
    if args.json:
        print(json.dumps(plain, indent=2))
    else:
        print_report(plain)


async def cmd_release(bus: MessageBus, args: argparse.Namespace) -> None:
    await call(bus, "Release", "s", [args.guest])
    print(f"released {args.guest}")


async def cmd_status(bus: MessageBus, args: argparse.Namespace) -> None:
    (props,) = await call(bus, "GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties")
    plain = unwrap(props)
    if args.json:
        print(json.dumps(plain, indent=2))
        return
    for key in sorted(plain):
        print(f"{key:<18} {plain[key]}")


async def cmd_verify(bus: MessageBus, args: argparse.Namespace) -> None:
    (result,) = await call(bus, "Verify")
    plain = unwrap(result)
    if args.json:
        print(json.dumps(plain, indent=2))
    else:
        print(f"policy        {plain['policy']}")
        print(f"guests        {plain['guests']}   resources {plain['resources']}   "
              f"ordered pairs {plain['ordered_pairs']}   checks {plain['checks']}")
        print("isolation     " + ("OK: every guest is isolated from every other" if plain["ok"] else
                                  f"VIOLATED ({len(plain['violations'])} findings)"))
        for v in plain["violations"]:
            print(f"  {v['kind']:<18} {v['message']}")
    if not plain["ok"]:
        raise SystemExit(3)


COMMANDS: dict[str, Callable[[MessageBus, argparse.Namespace], Awaitable[None]]] = {
    "list": cmd_list,
    "query": cmd_query,
    "isolate": cmd_query,
    "release": cmd_release,
    "status": cmd_status,
    "verify": cmd_verify,
}


async def run(args: argparse.Namespace) -> int:
    address = args.bus_address or os.environ.get("SVIRT_BUS_ADDRESS")
    bus = await (MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)).connect()
    try:
        await COMMANDS[args.command](bus, args)
        return 0
    except DBusError as exc:
        short = exc.type.rsplit(".", 1)[-1]
        print(f"svirtctl: {short}: {exc.text}", file=sys.stderr)
        return 1
    finally:
        bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="svirtctl", description="Manage per-guest SELinux isolation (svirtd)")
    p.add_argument("--bus-address", help="D-Bus address of the bus svirtd serves on (default: system bus)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every isolated guest")
    sub.add_parser("status", help="svirtd's properties (version, enforcing, free pairs...)")
    sub.add_parser("verify", help="prove isolation against the compiled policy (exit 3 on a violation)")
    q = sub.add_parser("query", help="one guest's labels and resources")
    q.add_argument("guest", help="UUID or libvirt name")
    i = sub.add_parser("isolate", help="isolate a guest (root)")
    i.add_argument("guest", help="UUID or libvirt name")
    i.add_argument("--profile", default="", help="containment profile (default: default)")
    r = sub.add_parser("release", help="remove a guest's isolation and restore its files (root)")
    r.add_argument("guest", help="UUID or libvirt name")
    args = p.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (OSError, ConnectionError) as exc:
        print(f"svirtctl: cannot reach the bus ({exc}); is dbus running?", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
