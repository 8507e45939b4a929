"""The whole stack for a bench, in a temp dir: a private libvirtd and bus, svirtd confining guests whose
names start with a prefix; everything stopped and removed on exit -- also when the bench is stopped with
SIGTERM (timeout(1), kill): Python's default for it is to die without running any cleanup, which left a
private libvirtd, its virtlogd and the temp dir behind."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

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
    with _sigterm_exits():
        try:
            daemon.start()
            yield Stack(libvirtd, bus, guests, daemon)
        finally:
            daemon.stop()
            guests.cleanup()
            bus.stop()
            libvirtd.stop()
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile, so that the finally blocks above run (main thread only: Python
    delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
