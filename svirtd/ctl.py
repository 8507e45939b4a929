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
from .ctl_jobs import Bar, run_job
from .ctl_output import dumps, list_json, list_lines, report_lines, status_lines, unwrap, verify_lines

__all__ = ["main", "unwrap"]

BUS_NAME = "org.svirt.Manager"
OBJECT_PATH = "/org/svirt/Manager"
INTERFACE = "org.svirt.Manager1"
# Calls polkit may be asked about (for callers other than root); only these get the agent.
AUTHORIZED = frozenset({"isolate", "release", "verify", "cluster"})
# Seconds svirtd has to answer one call, as busctl's default; a polkit password prompt may take minutes.
TIMEOUT = 25.0
INTERACTIVE_TIMEOUT = 300.0


class Client:
    def __init__(self, bus: MessageBus, interactive: bool, timeout: float | None = None) -> None:
        self.bus = bus
        self.flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE
        self.timeout = timeout if timeout is not None else INTERACTIVE_TIMEOUT if interactive else TIMEOUT

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None,
                   interface: str = INTERFACE, path: str = OBJECT_PATH, destination: str = BUS_NAME,
                   timeout: float | None = -1.0) -> list[Any]:
        """One method call; DBusError for an error reply, or (Timeout) no reply within the client's timeout
        (timeout=None: no limit)."""
        limit = self.timeout if timeout == -1.0 else timeout
        try:
            reply = await asyncio.wait_for(self.bus.call(Message(
                destination=destination, path=path, interface=interface, member=member, signature=signature,
                body=body or [], flags=self.flags)), limit)
        except TimeoutError:
            raise DBusError("org.freedesktop.DBus.Error.Timeout",
                            f"svirtd did not answer {member} within {limit:g} s (--timeout)") from None
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


def progress_bar(args: argparse.Namespace) -> Bar:
    """A bar on stderr when it is a terminal, unless --json or --no-progress."""
    on = sys.stderr.isatty() and not args.json and not args.no_progress
    label = f"{args.command} {args.guest}" if "guest" in args else args.command
    return Bar(label, sys.stderr, on)


async def cmd_query(client: Client, args: argparse.Namespace) -> ExitCode:
    if args.command == "isolate":
        # A job: a 100k-file share takes longer than any client waits for one answer.
        await run_job(client, "StartIsolate", "ss", [args.guest, args.profile], progress_bar(args))
    (report,) = await client.call("Query", "s", [args.guest])
    plain = unwrap(report)
    out([dumps(plain)] if args.json else report_lines(plain))
    return ExitCode.OK


async def cmd_release(client: Client, args: argparse.Namespace) -> ExitCode:
    await run_job(client, "StartRelease", "s", [args.guest], progress_bar(args))
    # Release returns nothing: the guest is named as the caller named it (a UUID or a name).
    out([dumps({"released": args.guest})] if args.json else [f"released {args.guest}"])
    return ExitCode.OK


async def cmd_status(client: Client, args: argparse.Namespace) -> ExitCode:
    (props,) = await client.call("GetAll", "s", [INTERFACE], interface="org.freedesktop.DBus.Properties")
    plain = unwrap(props)
    out([dumps(plain)] if args.json else status_lines(plain))
    return ExitCode.OK


async def cmd_verify(client: Client, args: argparse.Namespace) -> ExitCode:
    # A job: a big host's proof takes longer than any client waits for one answer; its result is then
    # the last proof (LastVerify: a short call, no new proof).
    await run_job(client, "StartVerify", "", [], progress_bar(args))
    (result,) = await client.call("LastVerify")
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
            return await COMMANDS[args.command](Client(bus, interactive, args.timeout), args)
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
    p.add_argument("--no-progress", action="store_true", default=default(False),
                   help="isolate, release, verify: no progress bar (there is none unless stderr is a terminal)")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS", default=default(None),
                   help=f"how long svirtd may take to answer one call (default {TIMEOUT:g}, {INTERACTIVE_TIMEOUT:g} "
                        "when polkit may ask for a password); an isolate's, release's or verify's job may take longer")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


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
