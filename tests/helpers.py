"""Small helpers the integration tests share: labels on disk, and calls to svirtd over the bus."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from testbed.bus import PrivateBus
from testbed.client import SvirtClient


def xattr(path: Path | str) -> str | None:
    """The raw security.selinux label (never following a final symlink), None when there is none."""
    try:
        return os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0").decode()
    except OSError:
        return None


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def call(bus: PrivateBus, member: str, signature: str = "", *args: Any) -> Any:
    """One org.svirt.Manager1 call on a fresh connection; CallFailed carries the D-Bus error."""
    async with SvirtClient(bus.address) as client:
        return await client.call(member, signature, *args)


def labeled_by_svirtd(report: dict[str, Any], also: tuple[str, ...] = ()) -> bool:
    """Every resource svirtd labels itself carries its label (status labeled, or one of `also`).
    Query also lists what libvirt labels and what nobody labels (emulated devices...), with reasons."""
    return all(r["status"] in ("labeled", *also) for r in report["resources"] if r.get("applier", "svirtd") == "svirtd")
