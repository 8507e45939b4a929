"""`svirtctl cluster ...`: the cluster (etcd backend) part of svirtctl.

    svirtctl cluster state               where the allocation table lives, hosts alive, pending changes
    svirtctl cluster forget-host HOST    (root/polkit) a dead host's pairs are freed cluster-wide
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from .ctl_exit import ExitCode
from .ctl_output import dumps, unwrap

if TYPE_CHECKING:
    from .ctl import Client

INTERFACE = "org.svirt.Manager1"


def add_cluster_parser(command: Callable[[str, str], argparse.ArgumentParser],
                       common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`cluster` and its subcommands; command(name, summary) makes a svirtctl subcommand, common(p)
    adds the options accepted after a command (--json...)."""
    c = command("cluster", "the cluster's allocation table (etcd backend)")
    csub = c.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    state = csub.add_parser("state", help="where the table lives and how it is (ClusterState)")
    common(state)
    forget = csub.add_parser("forget-host", help="free the pairs of a host that is gone for good (refused "
                                                 "while its lease is alive)")
    forget.add_argument("host", help="the host's id in the cluster ([cluster] host_id there)")
    common(forget)


async def cmd_cluster(client: Client, args: argparse.Namespace) -> ExitCode:
    if args.cluster_command == "state":
        (state,) = await client.call("Get", "ss", [INTERFACE, "ClusterState"],
                                     interface="org.freedesktop.DBus.Properties")
        text = unwrap(state)
        print(dumps({"cluster_state": text}) if args.json else text)
        return ExitCode.OK
    (freed,) = await client.call("ForgetHost", "s", [args.host])
    print(dumps({"host": args.host, "pairs_freed": freed}) if args.json
          else f"forgot host {args.host}: {freed} pairs freed")
    return ExitCode.OK
