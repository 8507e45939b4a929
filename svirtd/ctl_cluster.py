"""`svirtctl cluster ...`: the cluster (etcd backend) part of svirtctl, kept apart from ctl.py.

    svirtctl cluster state               where the allocation table lives, hosts alive, pending changes
    svirtctl cluster forget-host HOST    (root/polkit) a dead host's pairs are freed cluster-wide

ctl.py registers it with add_cluster_parser(sub) and dispatches "cluster" to cmd_cluster(bus, args).
"""

from __future__ import annotations

import argparse
from typing import Any

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "org.svirt.Manager"
OBJECT_PATH = "/org/svirt/Manager"
INTERFACE = "org.svirt.Manager1"


def add_cluster_parser(sub: Any) -> None:
    """Add `cluster` and its subcommands to svirtctl's subparsers (argparse's _SubParsersAction)."""
    c = sub.add_parser("cluster", help="the cluster's allocation table (etcd backend)")
    csub = c.add_subparsers(dest="cluster_command", required=True)
    csub.add_parser("state", help="where the table lives and how it is (ClusterState)")
    f = csub.add_parser("forget-host", help="free the pairs of a host that is gone for good (root; refused while "
                                            "its lease is alive)")
    f.add_argument("host", help="the host's id in the cluster ([cluster] host_id there)")


async def cmd_cluster(bus: MessageBus, args: argparse.Namespace) -> None:
    if args.cluster_command == "state":
        state = await _call(bus, "Get", "ss", [INTERFACE, "ClusterState"], "org.freedesktop.DBus.Properties")
        print(state.value if isinstance(state, Variant) else state)
        return
    freed = await _call(bus, "ForgetHost", "s", [args.host])
    print(f"forgot host {args.host}: {freed} pairs freed")


async def _call(bus: MessageBus, member: str, signature: str, body: list[Any], interface: str = INTERFACE) -> Any:
    reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface, member=member,
                                   signature=signature, body=body))
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        raise DBusError(reply.error_name or "org.freedesktop.DBus.Error.Failed", reply.body[0] if reply.body else "")
    return reply.body[0]
