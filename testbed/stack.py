"""The whole stack for a bench, in a temp dir: a private libvirtd and bus, svirtd confining guests whose
names start with a prefix; everything stopped and removed on exit."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .bus import PrivateBus
from .daemon import SvirtdProcess
from .guests import GuestFactory
from .libvirtd import Libvirtd


@dataclass
class Stack:
    libvirtd: Libvirtd
    bus: PrivateBus
    guests: GuestFactory
    daemon: SvirtdProcess


@contextlib.contextmanager
def private_stack(prefix: str, **config: object) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix=f"svirtd-bench-{prefix}-"))
    libvirtd = Libvirtd(work / "libvirtd").start()
    bus = PrivateBus(work / "bus").start()
    guests = GuestFactory(prefix=prefix, uri=libvirtd.uri)
    daemon = SvirtdProcess(work / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                           auto_confine_names=[f"{prefix}*"], **{"log_level": "warning", **config})
    try:
        daemon.start()
        yield Stack(libvirtd, bus, guests, daemon)
    finally:
        daemon.stop()
        guests.cleanup()
        bus.stop()
        libvirtd.stop()
        shutil.rmtree(work, ignore_errors=True)
