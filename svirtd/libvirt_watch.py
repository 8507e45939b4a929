"""The libvirt edge: lifecycle events in, domain definitions out. No decisions here.

libvirtaio delivers events on the asyncio loop; every blocking libvirt call runs in one worker
thread so a hung libvirtd can never freeze the D-Bus side. When the connection drops (libvirtd
restarted or killed) we reconnect with backoff and tell the manager, which re-lists every domain:
changes made while we were disconnected produce no events.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import libvirtaio

from .errors import LibvirtUnavailable, NoSuchGuest
from .models import GuestState, canonical_uuid, looks_like_uuid

log = logging.getLogger(__name__)
T = TypeVar("T")

_EVENT_IMPL_REGISTERED = False


class EventKind(enum.StrEnum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    STOPPED = "stopped"
    CHANGED = "changed"  # a running guest's devices changed: hotplug, unplug, a block job's pivot
    OTHER = "other"


_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: EventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: EventKind.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: EventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: EventKind.STOPPED,
}

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: GuestState.SHUTOFF,
}


@dataclass(frozen=True)
class DomainEvent:
    uuid: str
    name: str
    kind: EventKind


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: GuestState
    persistent: bool
    xmls: tuple[str, ...]  # persistent definition first, then the live one when running
    running_labels: tuple[str, ...] = ()  # security labels of the running qemu (every driver's)


class LibvirtWatcher:
    def __init__(
        self,
        uri: str,
        on_event: Callable[[DomainEvent], None],
        on_connected: Callable[[], Awaitable[None]],
        reconnect_max: float = 30.0,
    ) -> None:
        self.uri = uri
        self._on_event = on_event
        self._on_connected = on_connected
        self.reconnect_max = reconnect_max  # seconds; a reload may change it
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the first connect (and reconcile) is over
        self._stopping = False
        self._selinux_driver: bool | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def selinux_driver(self) -> bool | None:
        """Is libvirt's SELinux security driver active (its host capabilities list the selinux model)?
        As libvirt said at the last connection; None before the first one."""
        return self._selinux_driver

    async def start(self) -> None:
        global _EVENT_IMPL_REGISTERED  # noqa: PLW0603 - libvirt allows one event impl per process
        self._loop = asyncio.get_running_loop()
        if not _EVENT_IMPL_REGISTERED:
            libvirtaio.virEventRegisterAsyncIOImpl(loop=self._loop)
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we log errors ourselves
            _EVENT_IMPL_REGISTERED = True
        self._task = asyncio.create_task(self._connection_loop(), name="libvirt-connection")

    async def wait_first_attempt(self, timeout: float) -> None:
        """Until the first connection attempt is over: connected and reconciled, or failed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), timeout)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._call(self._teardown, conn)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- connection management --------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        delay = 0.25
        while not self._stopping:
            try:
                conn = await self._call(self._open)
            except libvirt.libvirtError as exc:
                log.warning("libvirt %s unreachable (%s); retrying in %.1fs", self.uri, _msg(exc), delay)
                self._first_attempt.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = 0.25
            self._conn = conn
            self._lost.clear()
            log.info("connected to libvirt %s", self.uri)
            try:
                await self._on_connected()
            except Exception:
                log.exception("reconciliation after connecting to libvirt failed")
            self._first_attempt.set()
            await self._lost.wait()
            old, self._conn = self._conn, None
            if old is not None:
                await self._call(self._teardown, old)
            if not self._stopping:
                log.warning("lost the connection to libvirt %s; reconnecting", self.uri)

    def _open(self) -> Any:
        conn = libvirt.open(self.uri)
        with contextlib.suppress(libvirt.libvirtError):  # test:///default has no keepalive
            conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(self._closed, None)
        self._selinux_driver = _has_selinux_model(conn.getCapabilities())
        self._callback_ids = [
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            # Runtime changes of a running guest's resources: hotplug, unplug, block jobs (commit, copy,
            # pull). An external snapshot sends none: the manager rescans running guests for those.
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._changed, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._changed, None),
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._changed, None),
        ]
        return conn

    def _teardown(self, conn: Any) -> None:
        # Best effort: the connection may already be dead (that is often why we are here).
        for cb in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cb)
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        # Runs on the loop (libvirtaio): hand over to the connection loop.
        log.debug("libvirt connection closed, reason %d", reason)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost.set)

    def _lifecycle(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        self._emit(dom, _LIFECYCLE.get(event, EventKind.OTHER))

    def _changed(self, _conn: Any, dom: Any, *_args: Any) -> None:
        self._emit(dom, EventKind.CHANGED)

    def _emit(self, dom: Any, kind: EventKind) -> None:
        ev = DomainEvent(uuid=dom.UUIDString(), name=dom.name(), kind=kind)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_event, ev)

    # -- queries ----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _require(self) -> Any:
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable(f"libvirtd ({self.uri}) is not reachable right now; svirtd keeps retrying. "
                                     "Check that libvirtd is running.")
        return conn

    async def rewrite_definition(self, uuid: str, transform: Callable[[str], str | None]) -> bool:
        """Redefine a persistent domain with transform(its inactive XML), unless that returns None."""
        conn = self._require()
        return await self._call(self._rewrite_blocking, conn, uuid, transform)

    def _rewrite_blocking(self, conn: Any, uuid: str, transform: Callable[[str], str | None]) -> bool:
        try:
            dom = conn.lookupByUUIDString(uuid)
            if not dom.isPersistent():
                return False
            new = transform(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
            if new is None:
                return False
            conn.defineXML(new)
            return True
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"rewriting the definition of {uuid} failed: {_msg(exc)}") from exc

    async def define_nwfilter(self, name: str, xml: str) -> None:
        """Define (or update) an nwfilter svirtd owns."""
        conn = self._require()
        await self._call(self._nwfilter_blocking, conn, name, xml)

    def _nwfilter_blocking(self, conn: Any, name: str, xml: str) -> None:
        try:
            try:
                existing = conn.nwfilterLookupByName(name)
            except libvirt.libvirtError:
                existing = None
            if existing is not None:
                # Updating a filter means redefining it under its UUID (else: "already exists").
                root = ET.fromstring(xml)  # noqa: S314 - svirtd's own filter definitions
                if root.find("uuid") is None:
                    uuid_el = ET.Element("uuid")
                    uuid_el.text = existing.UUIDString()
                    root.insert(0, uuid_el)
                xml = ET.tostring(root, encoding="unicode")
            conn.nwfilterDefineXML(xml)
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"defining nwfilter {name} failed: {_msg(exc)}") from exc

    async def domain_uuids(self) -> set[str]:
        """Every domain's UUID: one call, no definition read."""
        conn = self._require()
        return await self._call(self._uuids_blocking, conn)

    def _uuids_blocking(self, conn: Any) -> set[str]:
        try:
            return {d.UUIDString() for d in conn.listAllDomains(0)}
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"listing domains failed: {_msg(exc)}") from exc

    async def list_domains(self, uuids: Collection[str] | None = None) -> list[DomainInfo]:
        """Every domain, or only those of uuids (the others' definitions are not read)."""
        conn = self._require()
        return await self._call(self._list_blocking, conn, None if uuids is None else frozenset(uuids))

    async def lookup(self, guest: str) -> DomainInfo:
        """Domain by UUID or name. NoSuchGuest / LibvirtUnavailable."""
        conn = self._require()
        return await self._call(self._lookup_blocking, conn, guest)

    def _list_blocking(self, conn: Any, wanted: frozenset[str] | None = None) -> list[DomainInfo]:
        """Every domain (or the wanted ones), with what is known of all of them asked once (state, active,
        persistent: three calls in all instead of three per domain; 1,000 guests at a restart), then their
        XML. A domain that changes between those calls sends an event, which looks it up again."""
        out: list[DomainInfo] = []
        try:
            domains = [d for d in conn.listAllDomains(0) if wanted is None or d.UUIDString() in wanted]
            if not domains:
                return out
            active = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
            persistent = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(f"listing domains failed: {_msg(exc)}") from exc
        states: dict[str, int] = {}
        try:
            states = {d.UUIDString(): int(stats["state.state"])
                      for d, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE) if "state.state" in stats}
        except libvirt.libvirtError as exc:  # a driver without bulk stats: each domain is asked
            log.debug("bulk domain states unavailable (%s); asking each domain", _msg(exc))
        for dom in domains:
            uuid = dom.UUIDString()
            try:
                known = (states[uuid], uuid in persistent, uuid in active) if uuid in states else None
                out.append(self._info(dom, known))
            except libvirt.libvirtError as exc:  # undefined while we listed
                log.debug("domain vanished while listing: %s", _msg(exc))
        return out

    def _lookup_blocking(self, conn: Any, guest: str) -> DomainInfo:
        try:
            if looks_like_uuid(guest):
                return self._info(conn.lookupByUUIDString(canonical_uuid(guest)))
            return self._info(conn.lookupByName(guest))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NoSuchGuest(f"libvirt has no guest {guest!r} (by UUID or name); `virsh list --all` shows "
                                  "the defined ones") from exc
            raise LibvirtUnavailable(f"libvirt lookup of {guest!r} failed: {_msg(exc)}") from exc

    def _info(self, dom: Any, known: tuple[int, bool, bool] | None = None) -> DomainInfo:
        """known: (state, persistent, active) when the caller asked them for every domain at once."""
        if known is not None:
            state, persistent, active = known
        else:
            state, _reason = dom.state()
            persistent = bool(dom.isPersistent())
            active = bool(dom.isActive())
        xmls: list[str] = []
        if persistent:
            xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        running: list[str] = []
        if active or not persistent:
            xmls.append(dom.XMLDesc(0))
        if active:
            with contextlib.suppress(libvirt.libvirtError):
                running = [label for label, _enforcing in dom.securityLabelList() if label]
        return DomainInfo(uuid=dom.UUIDString(), name=dom.name(), state=_STATES.get(state, GuestState.OTHER),
                          persistent=persistent, xmls=tuple(xmls), running_labels=tuple(running))


def _has_selinux_model(capabilities: str) -> bool:
    try:
        root = ET.fromstring(capabilities)  # noqa: S314 - libvirtd's own capabilities document
    except ET.ParseError:
        return False
    return any((m.text or "").strip() == "selinux" for m in root.findall("host/secmodel/model"))


def _msg(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc)
