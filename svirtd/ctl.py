"""svirtctl: the admin's command line for svirtd (a plain D-Bus client of org.svirt.Manager1).

Output is in svirtd/ctl_output.py, exit codes in svirtd/ctl_exit.py, the polkit agent in
svirtd/ctl_agent.py; the manual is man/svirtctl.1.scd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from . import __version__
from .ctl_agent import PolkitAgent, may_ask_password
from .ctl_cluster import add_cluster_parser, cmd_cluster
from .ctl_exit import ExitCode, exit_code
from .ctl_output import dumps, list_json, list_lines, report_lines, status_lines, unwrap, verify_lines

__all__ = ["main", "unwrap"]

BUS_NAME = "org.svirt.Manager"
OBJECT_PATH = "/org/svirt/Manager"
INTERFACE = "org.svirt.Manager1"
# Calls polkit may be asked about (for callers other than root); only these get the agent.
AUTHORIZED = frozenset({"isolate", "release", "verify", "cluster"})


class Client:
    def __init__(self, bus: MessageBus, interactive: bool) -> None:
        self.bus = bus
        self.flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None,
                   interface: str = INTERFACE) -> list[Any]:
        reply = await self.bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface,
                                            member=member, signature=signature, body=body or [],
                                            flags=self.flags))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed",
                            reply.body[0] if reply.body else "")
        return list(reply.body)


def out(lines: list[str]) -> None:
    if lines:
        print("\n".join(lines))


async def cmd_list(client: Client, args: argparse.Namespace) -> ExitCode:
    (rows,) = await client.call("List")
    out([dumps(list_json(rows))] if args.json else list_lines(rows, legend=not args.no_legend))
    return ExitCode.OK


async def cmd_query(client: Client, args: argparse.Namespace) -> ExitCode:
    if args.command == "query":
        (report,) = await client.call("Query", "s", [args.guest])
    else:
        (report,) = await client.call("Isolate", "ss", [args.guest, args.profile])
    plain = unwrap(report)
    out([dumps(plain)] if args.json else report_lines(plain))
    return ExitCode.OK


async def cmd_release(client: Client, args: argparse.Namespace) -> ExitCode:
    await client.call("Release", "s", [args.guest])
    # Release returns nothing: the guest is named as the caller named it (a UUID or a name).
    out([dumps({"released": args.guest})] if args.json else [f"released {args.guest}"])
    return ExitCode.OK


async def cmd_status(client: Client, args: argparse.Namespace) -> ExitCode:
    (props,) = await client.call("GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties")
    plain = unwrap(props)
    out([dumps(plain)] if args.json else status_lines(plain))
    return ExitCode.OK


async def cmd_verify(client: Client, args: argparse.Namespace) -> ExitCode:
    (result,) = await client.call("Verify")
    plain = unwrap(result)
    out([dumps(plain)] if args.json else verify_lines(plain))
    return ExitCode.OK if plain["ok"] else ExitCode.VIOLATED


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[ExitCode]]] = {
    "list": cmd_list,
    "query": cmd_query,
    "isolate": cmd_query,
    "release": cmd_release,
    "status": cmd_status,
    "verify": cmd_verify,
    "cluster": cmd_cluster,
}


def explain(exc: DBusError, code: ExitCode, interactive: bool) -> str:
    """The error line, plus what to do when the fix is on the caller's side."""
    short = exc.type.rsplit(".", 1)[-1]
    text = f"svirtctl: {short}: {exc.text}"
    if code is ExitCode.ACCESS_DENIED and not interactive and os.geteuid() != 0:
        text += ("\nsvirtctl: polkit could not ask for a password: run svirtctl from a terminal without "
                 "--no-ask-password to authenticate, or as root")
    elif code is ExitCode.NOT_RUNNING:
        text += "\nsvirtctl: is svirtd running? (systemctl status svirtd)"
    return text


async def run(args: argparse.Namespace, address: str | None) -> ExitCode:
    try:
        bus = await (MessageBus(bus_address=address) if address else MessageBus(bus_type=BusType.SYSTEM)).connect()
    except (OSError, ConnectionError, DBusError) as exc:
        print(f"svirtctl: cannot reach the bus {address or '(system bus)'}: {exc}", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    interactive = may_ask_password(args.no_ask_password)
    try:
        with PolkitAgent(address, enabled=interactive and args.command in AUTHORIZED):
            return await COMMANDS[args.command](Client(bus, interactive), args)
    except DBusError as exc:
        code = exit_code(exc.type)
        print(explain(exc, code, interactive), file=sys.stderr)
        return code
    finally:
        bus.disconnect()


def add_common(p: argparse.ArgumentParser, defaults: bool) -> None:
    """Options accepted before and after the command. A subcommand's copy has no defaults, so it
    leaves alone what was given before the command."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p.add_argument("--bus-address", metavar="ADDRESS", default=default(None),
                   help="D-Bus address of the bus svirtd serves on (default: $SVIRT_BUS_ADDRESS, else the system bus)")
    p.add_argument("--json", action="store_true", default=default(False), help="machine-readable output (JSON)")
    p.add_argument("--no-legend", action="store_true", default=default(False),
                   help="list: no column headers and no footer")
    p.add_argument("--no-ask-password", action="store_true", default=default(False),
                   help="never let polkit ask for a password (fail with exit 5 instead)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="svirtctl", description="Manage per-guest SELinux isolation (svirtd)",
                                epilog="See svirtctl(1) for output columns and exit codes.")
    p.add_argument("--version", action="version", version=f"svirtctl {__version__}")
    add_common(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=summary, description=summary)
        add_common(c, defaults=False)
        return c

    command("list", "every isolated guest")
    command("status", "svirtd's properties (version, enforcing, free pairs...)")
    command("verify", "prove isolation against the compiled policy (exit 3 on a violation)")
    command("query", "one guest's labels and resources").add_argument("guest", help="UUID or libvirt name")
    i = command("isolate", "isolate a guest")
    i.add_argument("guest", help="UUID or libvirt name")
    i.add_argument("--profile", default="", help="containment profile (default: default)")
    command("release", "remove a guest's isolation and restore its files").add_argument(
        "guest", help="UUID or libvirt name")
    add_cluster_parser(command, lambda c: add_common(c, defaults=False))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    address = args.bus_address or os.environ.get("SVIRT_BUS_ADDRESS")
    try:
        return int(asyncio.run(run(args, address)))
    except KeyboardInterrupt:  # e.g. at polkit's password prompt; the agent was ended on the way out
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
