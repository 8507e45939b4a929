"""Small helpers the integration tests share: labels on disk, and calls to svirtd over the bus."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from testbed.bus import PrivateBus
from testbed.client import SvirtClient


def xattr(path: Path | str) -> str | None:
    """The raw security.selinux label (never following a final symlink), None when the file has none.

    Only ENODATA means "no label": a file that is gone (ENOENT) or cannot be read raises, so an
    assertion that a label was restored to nothing cannot pass on a file that vanished."""
    try:
        return os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0").decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def call(bus: PrivateBus, member: str, signature: str = "", *args: Any) -> Any:
    """One org.svirt.Manager1 call on a fresh connection; CallFailed carries the D-Bus error."""
    async with SvirtClient(bus.address) as client:
        return await client.call(member, signature, *args)
