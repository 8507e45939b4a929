"""Small helpers the integration tests share: labels on disk, calls to svirtd over the bus, its signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from svirtd import selinux_host
from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.config import Config
from svirtd.ctl import unwrap as plain
from svirtd.errors import NoSuchGuest
from svirtd.manager import Manager, XmlDomain
from svirtd.store import Store
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


def tree_labels(root: Path) -> dict[str, str | None]:
    """Every label in a tree, by path (symlinks themselves, never followed)."""
    found = {str(root): xattr(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found[os.path.join(dirpath, name)] = xattr(os.path.join(dirpath, name))
    return found


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


@dataclass(frozen=True)
class Signal:
    interface: str
    member: str
    path: str
    body: list[Any]  # variants unwrapped
    received: float  # time.monotonic() when it arrived


class SignalRecorder:
    """A real subscriber on the bus, in its own thread: every signal matching `rules` from the moment
    the `with` block is entered (the match rules are in place before it returns) until it is left."""

    def __init__(self, bus: PrivateBus, *rules: str) -> None:
        self.address = bus.address
        self.rules = rules
        self._signals: list[Signal] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> SignalRecorder:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the signal subscriber did not connect within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(30)

    def signals(self, member: str | None = None) -> list[Signal]:
        with self._lock:
            return [s for s in self._signals if member is None or s.member == member]

    async def _main(self) -> None:
        try:
            bus = await MessageBus(bus_address=self.address).connect()
            bus.add_message_handler(self._handle)
            for rule in self.rules:
                reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                               interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                               body=[rule]))
                if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                    raise RuntimeError(f"AddMatch {rule!r} failed: {reply.body if reply else None}")
            self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        bus.disconnect()

    def _handle(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.sender != "org.freedesktop.DBus":
            signal = Signal(msg.interface or "", msg.member or "", msg.path or "", plain(msg.body), time.monotonic())
            with self._lock:
                self._signals.append(signal)


class StandInLibvirt:
    """What the manager asks of libvirt, answered from a dict of domains: listing, lookups (counted, with
    how many were under way at once), and the rewrite of their definitions (recorded in order)."""

    connected = True
    selinux_driver = False

    def __init__(self, domains: Sequence[XmlDomain]) -> None:
        self.domains = {d.uuid: d for d in domains}
        self.rewritten: list[str] = []
        self.listed: list[int] = []  # how many domains each listing asked for
        self.lookups = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def domain_uuids(self) -> set[str]:
        return set(self.domains)

    async def list_domains(self, uuids: Collection[str] | None = None) -> Sequence[XmlDomain]:
        self.listed.append(len(self.domains) if uuids is None else len(uuids))
        return [d for d in self.domains.values() if uuids is None or d.uuid in uuids]

    async def lookup(self, guest: str) -> XmlDomain:
        self.lookups += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # an answer comes from another thread: other tasks run meanwhile
            for d in self.domains.values():
                if guest in (d.uuid, d.name):
                    return d
            raise NoSuchGuest(guest)
        finally:
            self.in_flight -= 1

    async def rewrite_definition(self, uuid: str, transform: Callable[[str], str | None]) -> bool:
        self.rewritten.append(uuid)
        new = transform(self.domains[uuid].xmls[0])
        if new is not None:
            d = self.domains[uuid]
            self.domains[uuid] = XmlDomain(d.uuid, d.name, d.state, (new,))
        return new is not None

    async def define_nwfilter(self, name: str, xml: str) -> None:
        pass


@contextlib.contextmanager
def in_process_manager(tmp_path: Path, hypervisor: object, **config: Any) -> Iterator[Manager]:
    """A Manager on a real store and real files in tmp_path, talking to the given stand-in hypervisor
    (the hook path must not call libvirt at all: its stand-ins fail the test on any call)."""
    cfg = Config(state_dir=tmp_path / "state", hook_env_file="", setrans_file="", audit_source="none", **config)
    store = Store(cfg.database_path)
    manager: Manager | None = None
    try:
        manager = Manager(cfg, store, PairAllocator(CategorySpace(cfg.category_set, cfg.excluded_from_pairs)),
                          selinux_host.load_label_spec(), hypervisor)  # type: ignore[arg-type]
        yield manager
    finally:
        if manager is not None:
            manager._reports.watch.close()  # its inotify instance (root has 128 on the whole machine)
        store.close()
