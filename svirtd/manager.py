"""The use-cases: isolate, release, query, list, verify, the libvirt hook, reacting to libvirt, recover.

Knows no D-Bus and no libvirt API: it talks to the hypervisor through the small Hypervisor protocol
(libvirt_watch implements it) and announces changes through the Listener protocol (dbus_iface
implements it). Which label each resource gets and who applies it is label_plan's; the relabel
transaction is converge's; who holds which level is level_book's. Blocking file I/O runs in worker
threads; the store and the allocator are only touched from the event loop, so they need no locks.

Ordering rules that make crashes recoverable: a new assignment is committed before any file is
touched; a resource's original label is committed (claim phase 'applying') before its label is
changed; a release is marked 'releasing' before anything is restored. recover() finishes whatever a
crash interrupted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Protocol, runtime_checkable

from . import label_drift, labels, message_ids, relabel
from .allocator import PairAllocator
from .config import Config
from .converge import Converger
from .denials import GuestRef
from .errors import (
    InvalidArgument,
    LabelSpaceExhausted,
    NoSuchGuest,
    NotConfined,
    RelabelFailed,
    ResourceConflict,
    StorageNotResponding,
    SvirtError,
    UnsafePath,
)
from .identity import chain_filter_xml, chained_filters, rewrite_definition, strip_identity, without_selinux_labels
from .isolation import Object, Proof, Subject, control_planes, prove_isolation
from .level_book import LevelBook
from .level_claims import LevelSource, level_claims, pair_of
from .local_proof import provably_local
from .logsetup import guest_fields
from .models import (
    Applier,
    Assignment,
    Context,
    GuestState,
    Level,
    Origin,
    ResourceClass,
    ResourceKind,
    ResourceState,
    canonical_uuid,
    looks_like_uuid,
)
from .observe import observe
from .path_locks import KeyLocks
from .policy import LabelSpec
from .policy_judge import PolicyJudge, Verdict
from .profiles import NWFILTERS, Profile, resolve_profile
from .report_cache import Observed, ReportBasis, ReportCache, Started, start_key
from .resources import DomainSpec, parse_domain
from .storage_gate import StorageGate
from .store import Claim, Store

if TYPE_CHECKING:
    from .cluster_book import ClusterBook

log = logging.getLogger(__name__)

MAX_GUEST_REF = 256
PARSED_KEPT = 64  # hook definitions kept parsed (a few per guest starting at once)
# libvirt events handled at once. A burst (1,000 guests defined in a row, and the event of each one's
# identity written back) queues one entry per guest, not a task per event: the bus is answered between
# a few dozen handlers' steps instead of a thousand's, and the one libvirt thread is not handed a
# thousand lookups at once. Enough of them that the lookups, commits and bus answers overlap (each
# handler waits on a thread most of its time), and that guests on slow storage do not hold up the rest.
EVENT_HANDLERS = 32
# Failures that have a journal MESSAGE_ID (and catalog entry) of their own.
FAILURE_MESSAGE_IDS: dict[type[SvirtError], str] = {
    LabelSpaceExhausted: message_ids.LABEL_SPACE_EXHAUSTED,
    StorageNotResponding: message_ids.STORAGE_NOT_RESPONDING,
}


class DomainInfoLike(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> GuestState: ...
    @property
    def xmls(self) -> tuple[str, ...]: ...
    @property
    def running_labels(self) -> tuple[str, ...]: ...


class Hypervisor(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def selinux_driver(self) -> bool | None: ...  # libvirt's SELinux security driver is active (None: not known)
    async def lookup(self, guest: str) -> DomainInfoLike: ...
    async def domain_uuids(self) -> Collection[str]: ...  # every domain's, no definition read
    async def list_domains(self, uuids: Collection[str] | None = None) -> Sequence[DomainInfoLike]: ...
    async def rewrite_definition(self, uuid: str, transform: Callable[[str], str | None]) -> bool: ...
    async def define_nwfilter(self, name: str, xml: str) -> None: ...


@dataclass(frozen=True)
class XmlDomain:
    """A domain known only from XML handed over (the libvirt hook): libvirt must not be called."""

    uuid: str
    name: str
    state: GuestState
    xmls: tuple[str, ...]
    running_labels: tuple[str, ...] = ()


class Listener(Protocol):
    def isolated(self, assignment: Assignment) -> None: ...
    def released(self, uuid: str, name: str) -> None: ...


@runtime_checkable
class FailureListener(Protocol):
    """A listener that also hears of refused or failed isolations (the audit trail). Apart from
    Listener: the others have nothing to announce for a guest that did not change."""

    def isolation_failed(self, uuid: str, name: str, reason: str) -> None: ...


class Listeners:
    """Several listeners as one (D-Bus signals, the MCS translation file...)."""

    def __init__(self, *listeners: Listener) -> None:
        self._listeners = listeners

    def isolated(self, assignment: Assignment) -> None:
        for listener in self._listeners:
            listener.isolated(assignment)

    def released(self, uuid: str, name: str) -> None:
        for listener in self._listeners:
            listener.released(uuid, name)

    def isolation_failed(self, uuid: str, name: str, reason: str) -> None:
        for listener in self._listeners:
            if isinstance(listener, FailureListener):
                listener.isolation_failed(uuid, name, reason)


class _NoListener:
    def isolated(self, assignment: Assignment) -> None:
        pass

    def released(self, uuid: str, name: str) -> None:
        pass


@dataclass(frozen=True)
class GuestReport:
    """What Query returns: the assignment, its labels, and every resource's state."""

    assignment: Assignment
    process_label: str
    image_label: str
    resources: tuple[ResourceState, ...]
    isolation: str  # the last proof's verdict about this guest


@dataclass(frozen=True)
class VerifyResult:
    policy: str
    at: float
    proof: Proof


class DomainEventLike(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class RescanEvent:
    """A running guest whose definition changed without an event (an external snapshot, new media)."""

    uuid: str
    name: str
    kind: str = "changed"


def _running_labels(info: DomainInfoLike, domain: DomainSpec) -> tuple[str, ...]:
    """The labels the guest's qemu runs with: libvirt's answer, and the live definition's."""
    return (*info.running_labels, *([domain.running_label] if domain.running_label else []))


def check_guest_ref(guest: str) -> str:
    """Validate a guest reference (UUID or libvirt name); canonical UUID form when it is one."""
    if not guest:
        raise InvalidArgument("guest is empty: pass a guest UUID or its libvirt domain name")
    if len(guest) > MAX_GUEST_REF or any(ord(c) < 32 for c in guest):
        raise InvalidArgument("guest must be a UUID or a libvirt domain name (printable, at most "
                              f"{MAX_GUEST_REF} characters)")
    if looks_like_uuid(guest):
        try:
            return canonical_uuid(guest)
        except ValueError:
            raise InvalidArgument(f"{guest!r} is not a valid UUID (expected 8-4-4-4-12 hex digits)") from None
    if "/" in guest:
        raise InvalidArgument(f"{guest!r}: libvirt domain names cannot contain '/'")
    return guest


_checked_refs = functools.lru_cache(maxsize=4096)(check_guest_ref)


def checked_guest_ref(guest: str) -> str:
    """check_guest_ref, kept per text (a pure function; invalid ones raise and are not kept). A text too
    long to be a reference is refused without being hashed (a caller's megabytes)."""
    return _checked_refs(guest) if len(guest) <= MAX_GUEST_REF else check_guest_ref(guest)


class Manager:
    def __init__(
        self,
        config: Config,
        store: Store,
        allocator: PairAllocator,
        spec: LabelSpec,
        hypervisor: Hypervisor,
        defaults: relabel.DefaultLabelLookup | None = None,
        listener: Listener | None = None,
        judge: PolicyJudge | None = None,
        selinux_enabled: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.allocator = allocator
        self.spec = spec
        self.hv = hypervisor
        self.judge = judge
        self.selinux_enabled = selinux_enabled
        self.listener: Listener = listener or _NoListener()
        self.levels = LevelBook(store, allocator)
        self.cluster: ClusterBook | None = None  # issue 16: [cluster] backend = "etcd" (set by service.py)
        self.storage = StorageGate(config.io_timeout_seconds)
        self.converger = Converger(config, store, spec, judge, defaults, self.storage)
        self._defaults = defaults
        # Held while a guest's table row and files change; NEVER across a libvirt call (deadlock with
        # the hook, see isolate()).
        self._guest_locks = KeyLocks()  # one key per guest UUID, kept only while held or waited for
        self._generation: defaultdict[str, int] = defaultdict(int)  # events seen per guest
        self._domains: dict[str, DomainSpec] = {}  # last definitions seen, for Query while libvirt is away
        self._reports = ReportCache(store)  # what Query compares the files with, while the table holds
        # The hook hands the same definition at every start: parsed once (DomainSpec is immutable).
        self._parsed: dict[tuple[str, str], DomainSpec] = {}
        self._unconfined: dict[str, str] = {}  # uuid -> name: libvirt's guests svirtd does not isolate
        self._drift_reported: set[tuple[str, str | None]] = set()  # (path, label) warned about once
        self._reconcile_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: dict[str, DomainEventLike] = {}  # uuid -> its newest event not handled yet, oldest first
        self._event_handlers = 0
        self.last_verify: VerifyResult | None = None
        self.on_verified: Callable[[], None] | None = None  # each guest's isolation verdict may have changed
        self._verify_lock = asyncio.Lock()

    @property
    def denied(self) -> tuple[str, ...]:
        return self.converger.denied

    @property
    def libvirt_driver(self) -> bool:
        """Does libvirt's SELinux driver label guests here? What libvirt said at the last connection;
        before the first one, whether SELinux is enabled (libvirt's driver follows it)."""
        known = self.hv.selinux_driver
        return self.selinux_enabled if known is None else known

    def _libvirt_relabels(self, domain: DomainSpec) -> bool:
        return domain.libvirt_relabels(self.libvirt_driver)

    def guest_at(self, level: Level) -> GuestRef | None:
        return self.levels.guest_at(level)

    # -- start-up -------------------------------------------------------------------------------

    @classmethod
    def load_table(cls, store: Store, allocator: PairAllocator) -> int:
        """Replay the persisted table into the allocator. Returns the number of assignments."""
        count = 0
        for uuid, level in store.levels():
            try:
                allocator.reserve(level)
            except ValueError:  # impossible with the UNIQUE constraint; say so loudly if it happens
                log.error("state database holds %s twice (guest %s)", level, uuid)
            count += 1
        return count

    async def recover(self) -> None:
        """Finish releases a crash interrupted, or that could not restore everything (their originals
        are in the store); one that still cannot keeps its pair and says why (see _finish_release)."""
        for uuid in self.store.releasing():
            a = self.store.get(uuid)
            if a is None:
                continue
            log.warning("finishing the release of %s interrupted by a restart or still incomplete", a.name,
                        extra=guest_fields(a.uuid, a.name))
            try:  # one release that cannot finish (hung storage, EIO) must not keep svirtd from starting
                await self._finish_release(a, optout=self.store.is_opted_out(uuid))
            except SvirtError as exc:
                log.error("the release of %s is still pending: %s", a.name, exc, extra=guest_fields(a.uuid, a.name))

    # -- use-cases ------------------------------------------------------------------------------

    async def isolate(self, guest: str, profile: str = "", origin: Origin = Origin.API) -> Assignment:
        """Give the guest a pair (or keep its own) and label its resources. Idempotent."""
        assignment, _report = await self._isolate(guest, profile, origin, report=False)
        return assignment

    async def isolate_report(self, guest: str, profile: str = "", origin: Origin = Origin.API) -> GuestReport:
        """isolate(), answered with the guest's report as it stood when the isolation was done: a Release
        right after it does not turn a successful Isolate into "not isolated"."""
        _assignment, report = await self._isolate(guest, profile, origin, report=True)
        assert report is not None
        return report

    async def _isolate(self, guest: str, profile: str, origin: Origin,
                       report: bool) -> tuple[Assignment, GuestReport | None]:
        ref = check_guest_ref(guest)
        profile_name = resolve_profile(profile).name if profile else ""
        # Never wait on libvirt while holding a guest lock: the libvirt hook (PrepareStart, GuestStopped)
        # takes that lock while libvirtd waits for it with the domain locked. A definition that changes
        # after this lookup comes with its own event, which converges again.
        info = await self.hv.lookup(ref)  # NoSuchGuest / LibvirtUnavailable
        async with self._guest_locks.hold([info.uuid]):
            assignment = await self._isolate_locked(info, profile_name, origin)
            answer = await self._report(assignment, self._domains.get(assignment.uuid)) if report else None
        await self._write_identity(assignment, info)
        return assignment, answer

    async def _isolate_locked(self, info: DomainInfoLike, profile: str, origin: Origin,
                              domain: DomainSpec | None = None) -> Assignment:
        """_isolate_converge, whose failure is logged and audited here: every way in (Isolate, the hook,
        libvirt events, reconcile) passes through this one place."""
        existed = self.store.get(info.uuid) is not None
        try:
            return await self._isolate_converge(info, profile, origin, domain)
        except SvirtError as exc:
            if not existed:
                self._refused(info.uuid, info.name, origin, exc)
            elif not exc.reported:
                # Still isolated, with its pair: a changed definition (or storage that stopped answering)
                # could not be brought in line. Not a refused isolation (no VIRT_CONTROL res=failed).
                log.error("%s keeps its pair, but its resources could not be brought in line with its "
                          "definition: %s", info.name, exc, extra=guest_fields(info.uuid, info.name))
                exc.reported = True
            raise

    def _refused(self, uuid: str, name: str, origin: Origin, exc: SvirtError) -> SvirtError:
        """Log (MESSAGE_ID) and audit (VIRT_CONTROL op=isolate res=failed) a refused isolation; returns
        exc, marked reported so that the callers that catch it do not log it again."""
        reason = type(exc).__name__
        log.error("could not isolate %s: %s", name, exc, extra=guest_fields(
            uuid, name, FAILURE_MESSAGE_IDS.get(type(exc), message_ids.ISOLATION_FAILED),
            SVIRT_REASON=reason, SVIRT_ORIGIN=origin.value))
        if isinstance(self.listener, FailureListener):
            self.listener.isolation_failed(uuid, name, reason)
        exc.reported = True
        return exc

    async def _isolate_converge(self, info: DomainInfoLike, profile: str, origin: Origin,
                                domain: DomainSpec | None = None) -> Assignment:
        """Allocate (or keep) the pair and converge the resources. No libvirt calls: see isolate()."""
        domain = domain or self._parse(info)
        existing = self.store.get(domain.uuid)
        self._check_profile(domain, resolve_profile(profile or (existing.profile if existing else "")))
        now = time.time()
        if existing is None:
            # Before a thread reads its labels: storage that hangs refuses the guest at once, and nothing
            # is recorded (converge asks again, for every guest, before it touches a file).
            await self.storage.ensure((r.path for r in domain.labeled()), domain.name)
            level, note = await self._choose_level(domain, info)  # LabelSpaceExhausted
            assignment = Assignment(uuid=domain.uuid, name=domain.name, level=level,
                                    profile=profile or "default", origin=origin, state=info.state,
                                    created=now, updated=now, note=note)
            if note:
                log.warning("%s: %s", domain.name, note, extra=guest_fields(domain.uuid, domain.name))
            try:
                await self.store.write(self.store.insert_assignment, assignment)
            except Exception:
                self.levels.give_back(level)
                raise
        elif info.state is GuestState.RUNNING:
            assignment = self._follow_running_label(domain, existing)
        else:
            assignment = existing
        try:
            await self.converger.converge(domain, assignment, self._libvirt_relabels(domain))
        except Exception:
            if existing is None:  # a refused first isolation leaves no trace
                await self._undo_first_isolation(info, assignment)
            raise
        changes: dict[str, str] = {}
        if assignment.name != domain.name:
            changes["name"] = domain.name
        if assignment.state != info.state:
            changes["state"] = info.state.value
        if profile and assignment.profile != profile:
            changes["profile"] = profile
        if changes:
            # A start or stop alone is not worth an fsync: reconcile reads every guest's state from libvirt.
            await self.store.write(self.store.update_assignment, domain.uuid, durable=changes.keys() != {"state"},
                                   **changes)
        await self._remove_optout(domain.uuid)
        self._unconfined.pop(domain.uuid, None)
        final = self.store.get(domain.uuid)
        assert final is not None
        if existing is None or changes.keys() & {"name", "profile"}:
            log.info("isolated %s at %s (profile %s, %s)", final.name, final.level, final.profile,
                     final.origin.value, extra=guest_fields(
                         final.uuid, final.name, message_ids.GUEST_ISOLATED, SVIRT_LEVEL=str(final.level),
                         SVIRT_LABEL=str(self.process_label(final, domain.is_tcg)),
                         SVIRT_IMAGE_LABEL=str(self.spec.image_label(final.level)), SVIRT_PROFILE=final.profile,
                         SVIRT_ORIGIN=final.origin.value))
            self.listener.isolated(final)
        return final

    async def _undo_first_isolation(self, info: DomainInfoLike, a: Assignment) -> None:
        """A first isolation failed part-way: put back whatever it labeled already (its claims hold the
        originals), forget it, free its pair -- unless the guest's qemu or definition carries that pair
        (it was the guest's foreign reservation): then it stays reserved as before."""
        try:
            outcomes = await self.converger.restore_all(a)
        except Exception:  # its claims stay with the assignment below for the next start's recover()
            log.exception("could not undo the failed isolation of %s", a.name, extra=guest_fields(a.uuid, a.name))
            await self.store.write(self.store.begin_release, a.uuid, optout=False)
            return
        pending = [out for out in outcomes if out.retry]
        if pending:
            # A file that could not be put back may carry the pair (storage that made the write and answered
            # EIO): a pending release like Release's own, pair reserved until a Release or recover() ends it.
            await self.store.write(self.store.begin_release, a.uuid, optout=False)
            retried = {out.path for out in pending}
            await self.store.write(self.store.delete_claims, a.uuid,
                                   [c.path for c in self.store.claims_for(a.uuid) if c.path not in retried])
            note = relabel.release_pending_note(a.name, pending)
            await self.store.write(self.store.update_assignment, a.uuid, note=note)
            log.error("%s: %s", a.name, note, extra=guest_fields(a.uuid, a.name))
            return
        await self.store.write(self.store.delete_assignment, a.uuid)
        self.levels.give_back(a.level)
        if self.cluster is not None:  # issue 16: nothing here uses the binding any more
            await self.cluster.release(a.uuid)
        self._reserve_foreign(info)

    async def identify(self, guest: str) -> dict[str, str]:
        """Authorization details for a guest reference, from svirtd's own table only (never libvirt: a
        caller is authorized before anything is asked of libvirt): guest_uuid and guest_name of an
        isolated guest, else just what the caller gave (a denial does not reveal whether it exists)."""
        ref = check_guest_ref(guest)
        try:
            a = self.store.get(self._resolve_assigned(ref))
        except SvirtError:
            a = None
        if a is not None:
            return {"guest_uuid": a.uuid, "guest_name": a.name}
        return {"guest": ref}

    # -- the libvirt hook ------------------------------------------------------------------------
    # libvirtd waits for the hook with the domain locked: nothing here may call libvirt.

    async def prepare_start(self, xml: str) -> Assignment | None:
        """The hook's `prepare begin`: make sure the guest is isolated and labeled before qemu exists.

        Everything comes from the XML libvirt handed the hook. None when the guest is to run
        unconfined (released by an admin, or not covered by automatic confinement) and
        require_confined allows that.
        """
        domain = self._parse_hooked(xml)
        info = XmlDomain(uuid=domain.uuid, name=domain.name, state=GuestState.RUNNING, xmls=(xml,))
        async with self._guest_locks.hold([domain.uuid]):
            depends_on, kept = self._start_kept(domain)
            if kept is not None:
                return kept
            if self.store.is_releasing(domain.uuid):
                why = ("its release is pending (files svirtd could not restore yet; `svirtctl release "
                       f"{domain.name}` retries)")
                if self.config.require_confined:
                    raise self._refused(domain.uuid, domain.name, Origin.AUTO,
                                        NotConfined(f"{domain.name} is not started: {why}"))
                log.warning("guest %s starts UNCONFINED: %s", domain.name, why, extra=guest_fields(
                    domain.uuid, domain.name, message_ids.GUEST_UNCONFINED, SVIRT_REASON="release pending"))
                return None
            if self.store.get(domain.uuid) is None and not self._confines(domain):
                return None  # not kept: a transient guest's UUID passes once (test_definition_cache)
            self._domains[domain.uuid] = domain  # as _parse() would: parsed once, here
            token, epoch = await self._watch_start(domain), self._storage_epoch()  # watched before converge reads
            # The identity (metadata, seclabel) is written at the next event, outside the hook.
            a = await self._isolate_locked(info, "", Origin.AUTO, domain)
            if token is not None and self._storage_epoch() == epoch:
                self._reports.keep_started(domain.uuid, Started(depends_on, self.store.generation, epoch, token, a))
            return a

    def kept_start(self, xml: str) -> Assignment | None:
        """prepare_start's answer without waiting for anything: a definition parsed before, whose guest
        no one holds the lock of, with everything in place since its last start; None: ask prepare_start."""
        domain = self._parsed.get((xml, str(self.config.swtpm_dir)))
        if domain is None or self._guest_locks.held(domain.uuid):
            return None
        return self._start_kept(domain)[1]

    def _start_kept(self, domain: DomainSpec) -> tuple[tuple[object, ...], Assignment | None]:
        """(what a start depends on, the assignment when everything is in place since the last start of
        this very definition): converging again would read the same files and write nothing
        (report_cache.Started says why). Under the guest's lock, or with no one holding it."""
        depends_on = (domain, self.config, self.spec, self._libvirt_relabels(domain))
        kept = self._reports.started(domain.uuid, depends_on, self._storage_epoch())
        if kept is not None:
            self._domains[domain.uuid] = domain
        return depends_on, kept

    async def _watch_start(self, domain: DomainSpec) -> int | None:
        """Watch what a converge of the guest reads, for the next start: its files and claims, all proven
        local (else None). Not a guest whose qcow2 images are probed for backing files: a header
        rewritten (qemu-img rebase) raises no event that a label change would."""
        if any(r.probe_format == "qcow2" for r in domain.resources):
            return None
        files = list(dict.fromkeys(p for p in (*(r.path for r in domain.resources),
                                               *(c.path for c in self.store.claims_for(domain.uuid)))
                                   if p.startswith("/")))
        key = start_key(domain.uuid)

        def watch_proven() -> int | None:
            token = self._reports.watch.watch(key, files)
            return token if token is not None and all(provably_local(p, self.storage.table) for p in files) else None

        local, token = await self.storage.read_local(files, domain.name, watch_proven)
        return token if local else None

    def _parse_hooked(self, xml: str) -> DomainSpec:
        """The definition the hook handed over, parsed once per text (the same one at every start)."""
        key = (xml, str(self.config.swtpm_dir))
        domain = self._parsed.get(key)
        if domain is None:
            domain = parse_domain(xml, self.config.swtpm_dir)
            if len(self._parsed) >= PARSED_KEPT:
                self._parsed.clear()
            self._parsed[key] = domain
        return domain

    def _confines(self, domain: DomainSpec) -> bool:
        """Is a guest svirtd does not isolate yet to be confined now? NotConfined when it is not and
        require_confined forbids that."""
        if not self.store.is_opted_out(domain.uuid) and self._wants_auto(domain.name):
            return True
        why = ("it was released by an admin" if self.store.is_opted_out(domain.uuid)
               else "automatic confinement does not cover it (default_confined / auto_confine_names)")
        if self.config.require_confined:
            raise self._refused(domain.uuid, domain.name, Origin.AUTO, NotConfined(
                f"{domain.name} is not isolated ({why}) and require_confined = true; "
                f"`svirtctl isolate {domain.name}` confines it"))
        log.warning("guest %s starts UNCONFINED: %s", domain.name, why,
                    extra=guest_fields(domain.uuid, domain.name, message_ids.GUEST_UNCONFINED, SVIRT_REASON=why))
        return False

    async def start_check(self, xml: str) -> Assignment | None:
        """The hook's `start begin`: the definition now carries the label libvirt will exec qemu in
        (and label the files with). When it is not the guest's pair -- a guest started before svirtd
        wrote its label into the definition (virt-install defines and starts within milliseconds), a
        transient `virsh create` -- svirtd adopts the label that is about to run, if no other guest
        holds it, so that process, files and table agree. Otherwise the start is refused: two guests
        must never share a pair."""
        domain = self._parse_hooked(xml)
        label = domain.running_label
        if label is None and not any(s.type == "none" for s in domain.seclabels):
            return None  # no SELinux label: nothing runs confined by libvirt's driver here
        running = pair_of(label) if label is not None else None
        async with self._guest_locks.hold([domain.uuid]):
            a = self.store.get(domain.uuid)
            if a is None:
                if running is not None:
                    self._refuse_shared_level(domain, running)
                    self.levels.hold_foreign(domain.uuid, domain.name, running)
                return None
            if running == a.level:
                self._check_process_type(a, label)
                return a
            if running is None:
                what = label or "no SELinux label (<seclabel type='none'>)"
                msg = f"{domain.name} would run with {what}, not its own pair {a.level}: it would not be isolated"
                if self.config.require_confined:
                    raise self._refused(a.uuid, a.name, Origin.AUTO, NotConfined(
                        f"{msg}; require_confined = true refuses that. Remove the seclabel from its definition"))
                log.error("%s", msg, extra=guest_fields(a.uuid, a.name, message_ids.GUEST_UNCONFINED,
                                                        SVIRT_REASON=f"it would run with {what}"))
                return a
            return await self._adopt_level(domain, a)

    def _check_process_type(self, a: Assignment, label: str | None) -> None:
        """A profile with a process type of its own (nonet) is the kernel's containment: a start in
        another type (a definition svirtd could not rewrite) would run without it, so it is refused."""
        want = resolve_profile(a.profile).process_type
        got = Context.parse(label).type if label else None
        if want is not None and got != want:
            raise self._refused(a.uuid, a.name, Origin.AUTO, NotConfined(
                f"{a.name} would run as {got}, not as {want} (profile {a.profile}): it would not be contained. "
                f"`svirtctl isolate {a.name} --profile {a.profile}` writes its label again"))

    def _follow_running_label(self, domain: DomainSpec, a: Assignment) -> Assignment:
        """A running guest whose qemu runs with another pair than the table's (it started while svirtd
        was away, before its definition carried svirtd's label): the table follows the label that runs,
        so that svirtd never relabels files away from under its qemu. ResourceConflict when another
        guest holds that pair: svirtd then labels nothing of it."""
        running = pair_of(domain.running_label) if domain.running_label else None
        if running is None or running == a.level:
            return a
        self._refuse_shared_level(domain, running)
        self.levels.take(running, a.uuid)
        self.store.update_assignment(a.uuid, level=str(running), note=f"adopted {running}, the label it runs with "
                                     f"(svirtd had given it {a.level})")
        self.levels.give_back(a.level)
        if self.cluster is not None:  # issue 16: the binding in etcd follows too
            self.cluster.note_moved(a.uuid, a.name, a.level, running)
        log.warning("%s runs with %s, not %s: svirtd follows the label that runs", a.name, running, a.level,
                    extra=guest_fields(a.uuid, a.name))
        moved = self.store.get(a.uuid)
        assert moved is not None
        self.listener.isolated(moved)
        return moved

    def _refuse_shared_level(self, domain: DomainSpec, level: Level) -> None:
        holder = self.levels.holder_of(level, domain.uuid)
        if holder is not None:
            raise ResourceConflict(
                f"{domain.name} would run with {level}, which svirtd holds for guest {holder}: two guests would "
                "share a pair. Start it again (libvirt draws a new dynamic label), or let svirtd write the guest's "
                "own label into its definition first (`svirtctl isolate`)")

    async def _adopt_level(self, domain: DomainSpec, a: Assignment) -> Assignment:
        """The guest is about to run with another pair than svirtd gave it: take that one, free the old
        one and move what svirtd labeled over to it."""
        moved = self._follow_running_label(domain, a)
        await self.converger.converge(domain, moved, self._libvirt_relabels(domain))
        return moved

    async def rewrite_incoming(self, xml: str) -> str | None:
        """The hook's `migrate begin` and `restore begin`: the definition of a guest arriving from
        another host or from a save image, which the hook may rewrite. svirtd puts its own label in:
        the guest's pair here if it is known, else the pair it arrives with if no guest here holds it
        (migration keeps the pair), else a new one. None: use the XML unchanged."""
        domain = parse_domain(xml, self.config.swtpm_dir)
        if not self.libvirt_driver:
            return None  # no SELinux label can run here: nothing to rewrite
        if self.store.get(domain.uuid) is not None:
            # Known here: its pair here wins over the label it arrives with (which is rewritten below).
            xml = without_selinux_labels(xml)
        a = await self.prepare_start(xml)
        if a is None:
            return None
        tcg = domain.is_tcg
        label = str(self.process_label(a, tcg))
        return rewrite_definition(xml, a.uuid, a.level, a.profile, label, None)

    async def guest_stopped(self, guest: str) -> None:
        """The hook's `release end`: the guest's qemu is gone."""
        ref = check_guest_ref(guest)
        self._clear_unconfined_marker(ref)
        try:
            uuid = self._resolve_assigned(ref)
        except NoSuchGuest:
            return
        # No guest lock: its holder may be waiting on libvirtd, which is waiting for this hook.
        a = self.store.get(uuid)
        if a is not None:
            note = "" if a.note.startswith("running UNCONFINED") else a.note
            self.store.update_assignment(uuid, state=GuestState.SHUTOFF.value, note=note)

    @property
    def _unconfined_dir(self) -> Path:
        """Where the hook leaves a marker when a guest started while svirtd was unreachable."""
        return Path(self.config.hook_env_file).parent / "unconfined"

    def _clear_unconfined_marker(self, name: str) -> None:
        (self._unconfined_dir / name).unlink(missing_ok=True)

    def _note_unconfined_starts(self, info: DomainInfoLike) -> None:
        marker = self._unconfined_dir / info.name
        if not marker.exists() or info.state is not GuestState.RUNNING:
            return
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.stat().st_mtime))
        note = (f"running UNCONFINED since {when}: svirtd could not confine it when it started (unreachable, "
                "or it refused; see the log); restart the guest to confine it")
        log.error("guest %s is %s", info.name, note, extra=guest_fields(
            info.uuid, info.name, message_ids.GUEST_UNCONFINED,
            SVIRT_REASON="svirtd was unreachable or refused when it started"))
        if self.store.get(info.uuid) is not None:
            self.store.update_assignment(info.uuid, note=note)

    def _check_profile(self, domain: DomainSpec, profile: Profile) -> None:
        if profile.forbid_interfaces and domain.interfaces:
            raise InvalidArgument(f"profile {profile.name}: {domain.name} has {len(domain.interfaces)} network "
                                  "interface(s); remove them from its definition or choose another profile")

    def _writes_seclabel(self) -> bool:
        """Write the static seclabel? Where libvirt's SELinux driver runs (libvirt refuses to start a
        guest with a model='selinux' seclabel where it does not), or when configured always."""
        mode = self.config.write_seclabels
        return mode == "always" or (mode == "auto" and self.libvirt_driver)

    async def _write_identity(self, a: Assignment | None, info: DomainInfoLike) -> None:
        """Metadata, static seclabel and profile filters into the persistent definition (only if they
        differ: the redefinition's own event then changes nothing). Called without any guest lock."""
        if a is None or not self.hv.connected:
            return
        fresh = self.store.get(a.uuid)  # the hook may have moved it to the label libvirt started it with
        if fresh is None or self.store.is_releasing(a.uuid):
            return
        a = fresh
        xml = info.xmls[0]
        cached = self._domains.get(a.uuid)  # parsed by _isolate_locked moments ago
        tcg = cached.is_tcg if cached is not None else self._parse(info).is_tcg
        profile = resolve_profile(a.profile)
        seclabel = str(self.process_label(a, tcg)) if self._writes_seclabel() else None

        def transform(definition: str) -> str | None:
            return rewrite_definition(definition, a.uuid, a.level, a.profile, seclabel, profile.nwfilter)

        try:
            if profile.nwfilter is not None:
                # The profile's filter, and any chain of it with a filter an interface already had.
                await self.hv.define_nwfilter(profile.nwfilter, NWFILTERS[profile.nwfilter])
                for chain in chained_filters(transform(xml) or xml, profile.nwfilter):
                    await self.hv.define_nwfilter(chain, chain_filter_xml(chain))

            if await self.hv.rewrite_definition(a.uuid, transform):
                log.info("wrote %s's identity%s into its definition", a.name,
                         " and static seclabel" if seclabel else "", extra=guest_fields(a.uuid, a.name))
        except SvirtError as exc:
            log.warning("could not write %s's identity into its definition: %s", a.name, exc,
                        extra=guest_fields(a.uuid, a.name))

    async def release(self, guest: str, optout: bool = True) -> None:
        """Restore the guest's resources, take svirtd's label out of its definition and free its pair.

        optout: the guest stays defined, so automatic confinement must leave it alone until the
        next Isolate (an explicit Release is a decision, not something to undo on the next event).
        """
        ref = check_guest_ref(guest)
        uuid = self._resolve_assigned(ref)
        async with self._guest_locks.hold([uuid]):
            a = self.store.get(uuid)
            if a is None:
                raise NoSuchGuest(f"guest {guest!r} is not isolated by svirtd")
            pending = await self._finish_release(a, optout=optout)
            if optout and not pending:  # pending: still in the table (releasing), not yet unconfined
                self._unconfined[a.uuid] = a.name  # still defined (an undefine event drops it)
        if pending:
            raise RelabelFailed(pending)
        if optout:
            await self._forget_identity(a)

    async def _finish_release(self, a: Assignment, optout: bool) -> str:
        """Restore the guest's resources and free its pair; '' when done. Else the note saying what could
        not be restored: the guest stays (phase 'releasing', Query shows the note) with the claims of
        those resources, and its pair stays reserved, until a later Release or svirtd's start (recover)
        restores them: a freed pair still on a file would hand it to the pair's next owner."""
        claims = self.store.claims_for(a.uuid)
        await self.storage.ensure((c.path for c in claims), a.name)
        await self.store.write(self.store.begin_release, a.uuid, optout)
        outcomes = await self.converger.restore_all(a)
        for out in outcomes:
            level = logging.INFO if out.restored or out.intended else logging.WARNING
            log.log(level, "%s: %s", out.path, out.message, extra=guest_fields(a.uuid, a.name))
        pending = [out for out in outcomes if out.retry]
        if pending:
            retried = {out.path for out in pending}
            await self.store.write(self.store.delete_claims, a.uuid, [c.path for c in claims if c.path not in retried])
            note = relabel.release_pending_note(a.name, pending)
            await self.store.write(self.store.update_assignment, a.uuid, note=note)
            log.error("%s: %s", a.name, note, extra=guest_fields(a.uuid, a.name))
            return note
        await self.store.write(self.store.delete_assignment, a.uuid)
        if optout:
            # Still defined: its definition (static seclabel, metadata) and maybe its running qemu carry
            # the pair until svirtd has taken the label out and the guest has stopped. Until then no other
            # guest may get it.
            self.levels.hand_over(a.uuid, a.name, a.level)
        else:
            self.levels.give_back(a.level)
            if self.cluster is not None:  # issue 16: undefined here; the last host out frees the pair
                await self.cluster.release(a.uuid)
        self._domains.pop(a.uuid, None)
        pair_state = "kept reserved while its definition or qemu carries it" if optout else "freed"
        log.info("released %s (%s %s)", a.name, a.level, pair_state, extra=guest_fields(
            a.uuid, a.name, message_ids.GUEST_RELEASED, SVIRT_LEVEL=str(a.level), SVIRT_PAIR_STATE=pair_state))
        self.listener.released(a.uuid, a.name)
        return ""

    async def _forget_identity(self, a: Assignment) -> None:
        """After a Release: svirtd's label and binding out of the definition; the pair is free once
        neither the definition nor a running qemu carries it."""
        if not self.hv.connected:
            return  # the next reconcile decides (its definition still reserves the pair)
        try:
            await self.hv.rewrite_definition(a.uuid, lambda xml: strip_identity(xml, a.level))
            info = await self.hv.lookup(a.uuid)
        except SvirtError as exc:
            log.warning("could not take svirtd's label out of %s's definition (%s): its pair stays reserved",
                        a.name, exc, extra=guest_fields(a.uuid, a.name))
            return
        async with self._guest_locks.hold([a.uuid]):
            if self.store.get(a.uuid) is None:
                self._reserve_foreign(info)

    async def _strip_released(self, info: DomainInfoLike) -> None:
        """A released guest whose definition still carries svirtd's binding (the strip after its Release
        was interrupted): take it out now, so that its pair can be freed."""
        level_text = self._parse(info).svirt_metadata.get("level", "")
        try:
            level = Level.parse(level_text)
        except ValueError:
            return
        try:
            if await self.hv.rewrite_definition(info.uuid, lambda xml: strip_identity(xml, level)):
                log.info("took svirtd's label out of released %s's definition", info.name,
                         extra=guest_fields(info.uuid, info.name))
        except SvirtError as exc:
            log.warning("could not take svirtd's label out of %s's definition: %s", info.name, exc,
                        extra=guest_fields(info.uuid, info.name))

    def list_summary(self) -> list[tuple[str, str, str, str, str]]:
        """(uuid, name, level, profile, state) of every isolated guest."""
        return self.store.summary_rows()

    async def query(self, guest: str) -> GuestReport:
        ref = checked_guest_ref(guest)
        uuid = ref if looks_like_uuid(ref) else self._resolve_assigned(ref)
        a = self._reports.assignment(uuid)
        if a is None and uuid == ref:
            self._not_isolated(ref)
        if a is None:
            raise NoSuchGuest(f"guest {guest!r} is not isolated by svirtd")
        domain = self._domains.get(uuid)
        if domain is None and self.hv.connected:
            try:
                domain = self._parse(await self.hv.lookup(uuid))
            except SvirtError:
                domain = None
        return await self._report(a, domain)

    def kept_report(self, guest: str) -> GuestReport | None:
        """Query's answer without waiting for anything, when the one kept is still true; None: ask
        query() (which also says what is wrong with the reference). Raises query()'s NoSuchGuest for a
        UUID svirtd has no row of (asked again and again while a burst of defines is isolated)."""
        try:
            ref = checked_guest_ref(guest)
        except SvirtError:
            return None
        if not looks_like_uuid(ref):
            return None
        a = self._reports.assignment(ref)
        if a is None:
            self._not_isolated(ref)
        domain = self._domains.get(ref)
        if domain is None:
            return None
        return self._kept(a, domain)[3]

    def _kept(self, a: Assignment, domain: DomainSpec | None) -> tuple[ReportBasis, tuple[int, int],
                                                                       VerifyResult | None, GuestReport | None]:
        """(basis, epoch, last proof, the kept report if it is still true): a report whose files were
        proven local and watched since they were read (report_cache.Observed says why)."""
        relabels = self._libvirt_relabels(domain) if domain is not None else False
        basis = self._reports.basis(a.uuid, (a, domain, self.config, self.spec, relabels),
                                    lambda: self._report_basis(a, domain, relabels))
        epoch, verify = self._storage_epoch(), self.last_verify
        kept = self._reports.observed(a.uuid, basis, epoch, verify)
        return basis, epoch, verify, kept if isinstance(kept, GuestReport) else None

    async def _report(self, a: Assignment, domain: DomainSpec | None) -> GuestReport:
        basis, epoch, verify, kept = self._kept(a, domain)
        if kept is not None:
            return kept  # no thread hop, no read
        claims, decisions = basis.claims, basis.decisions
        running = a.state is GuestState.RUNNING
        paths = [*(d.path for d in decisions), *(c.path for c in claims)]
        files = list(dict.fromkeys(p for p in paths if p.startswith("/")))

        def note(exc: labels.LabelUnsupported) -> str:
            return self.converger.unlabelable_note(a, exc)

        def watched_observe() -> tuple[int | None, list[ResourceState]]:
            # Watched BEFORE the labels are read, then proven again: a path swapped for a link between
            # read_local's proof and the watch is not kept (file_watch.py).
            token = self._reports.watch.watch(a.uuid, files)
            if token is not None and not all(provably_local(p, self.storage.table) for p in files):
                token = None
            return token, observe(decisions, claims, running, self.denied, note)

        # Files proven local are read in one thread hop; any other is asked first (storage_gate.py).
        local, got = await self.storage.read_local(paths, a.name, watched_observe)
        token: int | None = None
        if local and got is not None:
            token, states = got
        else:
            hung = await self.storage.unresponsive(paths)
            states = await self.storage.read(paths, a.name, observe,
                                             decisions, claims, running, self.denied, note, hung)
        report = GuestReport(assignment=a, process_label=basis.process_label, image_label=basis.image_label,
                             resources=tuple(states), isolation=self.isolation_status(a.uuid))
        if token is not None and self._storage_epoch() == epoch:
            self._reports.keep_observed(a.uuid, Observed(basis, epoch, verify, token, report))
        return report

    def _storage_epoch(self) -> tuple[int, int]:
        """What no file event tells: mounts that came or went, storage marked hung."""
        return self.storage.table.generation(), self.storage.hangs

    def _report_basis(self, a: Assignment, domain: DomainSpec | None, relabels: bool) -> ReportBasis:
        """What a report compares the files with: from the table and the definition only."""
        decisions = self.converger.decisions(domain, a, relabels) if domain is not None else ()
        tcg = domain.is_tcg if domain is not None else False
        return ReportBasis(depends_on=(a, domain, self.config, self.spec, relabels),
                           claims=tuple(self.store.claims_for(a.uuid)), decisions=decisions,
                           process_label=str(self.process_label(a, tcg)),
                           image_label=str(self.spec.image_label(a.level)))

    def process_label(self, a: Assignment, tcg: bool = False) -> Context:
        """The label the guest's qemu runs with: its level, and its profile's process type."""
        return self.spec.process_label(a.level, tcg, resolve_profile(a.profile).process_type)

    def is_tcg(self, uuid: str) -> bool:
        """Does the guest run under TCG (its qemu then gets the TCG process type), as last seen?"""
        domain = self._domains.get(uuid)
        return domain.is_tcg if domain is not None else False

    def isolation_status(self, uuid: str) -> str:
        last = self.last_verify
        if last is None:
            return "not verified yet (run `svirtctl verify`)"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.at))
        mine = last.proof.involving(uuid)
        if mine:
            more = f" (+{len(mine) - 1} more)" if len(mine) > 1 else ""
            return f"VIOLATED at {stamp}: {mine[0].message}{more}"
        return f"verified against {last.policy} at {stamp}"

    # -- the proof of isolation -----------------------------------------------------------------

    async def verify(self) -> VerifyResult:
        """Judge every guest's process label against every resource label with the compiled policy."""
        if self.judge is None or self.judge.policy_file is None:
            raise SvirtError("no compiled SELinux policy to verify against; set policy_file in svirtd.conf")
        try:
            await asyncio.to_thread(self.judge.load)
        except (OSError, ValueError) as exc:
            raise SvirtError(f"cannot verify: {exc}; point policy_file in svirtd.conf at the binary policy "
                             "(e.g. /etc/selinux/default/policy/policy.33)") from None
        async with self._verify_lock:
            subjects = await self._proof_subjects()
            owned = [(a, self.store.claims_for(a.uuid)) for a in self.store.assignments()]
            hung = await self.storage.unresponsive(c.path for _a, claims in owned for c in claims)
            owned = [(a, [c for c in claims if c.path not in hung]) for a, claims in owned]
            objects = await self.storage.read((c.path for _a, claims in owned for c in claims), "Verify",
                                              self._proof_objects, owned)
            objects = [self._as_group_object(o) for o in objects] + self._group_objects()
            planes = await asyncio.to_thread(control_planes, self._default_label, str(self.config.state_dir))
            proof = await asyncio.to_thread(prove_isolation, subjects, objects, self._decide, planes)
            self.last_verify = VerifyResult(policy=str(self.judge.policy_file), at=time.time(), proof=proof)
        if self.on_verified is not None:
            self.on_verified()
        for v in proof.violations:
            log.error("isolation violated: %s", v.message, extra=guest_fields(v.subject_uuid, v.subject_name))
        log.info("verified isolation of %d guests: %d checks, %d violations", proof.subjects, proof.checks,
                 len(proof.violations))
        return self.last_verify

    def _decide(self, scontext: str, tcontext: str, tclass: str, perms: list[str]) -> tuple[bool, str]:
        assert self.judge is not None
        decision = self.judge.decide(scontext, tcontext, tclass, perms)
        return decision.verdict is Verdict.ALLOW, decision.verdict.name

    async def _proof_subjects(self) -> list[Subject]:
        """Every isolated guest's process label, and every label a guest svirtd does not isolate runs
        with (static seclabels, running qemu): a foreign label that dominates ours breaks isolation too."""
        subjects: list[Subject] = []
        for a in self.store.assignments():
            domain = self._domains.get(a.uuid)
            tcg = domain.is_tcg if domain is not None else False
            subjects.append(Subject(a.uuid, a.name, str(self.process_label(a, tcg)),
                                    network=resolve_profile(a.profile).network,
                                    image_label=str(self.spec.image_label(a.level))))
        if self.hv.connected:
            for info in await self.hv.list_domains():
                if self.store.get(info.uuid) is not None:
                    continue
                domain = self._parse(info)
                labels_seen = {s.label for s in domain.seclabels if s.type == "static" and s.label}
                labels_seen.update(info.running_labels)
                for label in sorted(labels_seen):
                    if ":" in label and label.split(":")[2] in self._process_types():
                        subjects.append(Subject(info.uuid, f"{info.name} (not isolated by svirtd)", label))
        return subjects

    def _default_label(self, path: str, mode: int) -> str | None:
        return self._defaults.lookup(path, mode) if self._defaults is not None else None

    def _group_objects(self) -> list[Object]:
        """Each group's level (s0:cG) as a shared object: exactly its members' levels hold cG."""
        return [Object(f"group:{g.name}", f"group {g.name}", f"group {g.name}'s shared resources",
                       str(self.spec.image.with_level(f"s0:c{g.category}")), ResourceClass.SHARED, members_only=True)
                for g in self.config.guest_groups]

    def _as_group_object(self, o: Object) -> Object:
        """A shared resource labeled at a group's level is the group's, not everyone's."""
        try:
            categories = Context.parse(o.label).mcs.categories
        except ValueError:
            return o
        if o.rclass is ResourceClass.SHARED and len(categories) == 1 and categories <= self.config.group_categories:
            return replace(o, members_only=True)
        return o

    def _process_types(self) -> frozenset[str]:
        return self.spec.process_types

    @staticmethod
    def _proof_objects(owned: list[tuple[Assignment, list[Claim]]]) -> list[Object]:
        """The labels guest resources really carry on disk (worker thread: file I/O only)."""
        objects: list[Object] = []
        for a, claims in owned:
            for claim in claims:
                try:
                    with labels.open_resource(claim.path, claim.kind) as opened:
                        label = labels.get_label(opened)
                except (OSError, UnsafePath, labels.LabelUnsupported):
                    continue
                if label:
                    at_rest = claim.applier is Applier.LIBVIRT and a.state is not GuestState.RUNNING
                    objects.append(Object(a.uuid, a.name, claim.path, label, claim.rclass,
                                          own_access_expected=not at_rest))
        return objects

    # -- reacting to libvirt ----------------------------------------------------------------------

    def on_event(self, event: DomainEventLike) -> None:
        """Called on the loop for each libvirt event (lifecycle, device added/removed, block job). Queued:
        a guest's newer event replaces its older one still waiting (the handler looks the guest up and
        acts on what it is now, so only the last one counts) at the end of the queue; EVENT_HANDLERS
        tasks take them in order."""
        self._generation[event.uuid] += 1  # a handler of an older event under way leaves the guest to this one
        self._events.pop(event.uuid, None)
        self._events[event.uuid] = event
        if self._event_handlers < EVENT_HANDLERS:
            self._event_handlers += 1
            task = asyncio.create_task(self._handle_events(), name="libvirt-events")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle_events(self) -> None:
        try:
            while self._events:
                uuid = next(iter(self._events))
                await self._handle_event(self._events.pop(uuid), self._generation[uuid])
        finally:
            self._event_handlers -= 1

    async def _handle_event(self, event: DomainEventLike, generation: int) -> None:
        uuid = event.uuid
        try:
            info: DomainInfoLike | None = None
            if event.kind != "undefined":
                # Looked up outside the guest lock (see isolate()); the generation keeps events in
                # order: a handler overtaken by a newer event for the same guest leaves it to that one.
                try:
                    info = await self.hv.lookup(uuid)
                except NoSuchGuest:  # a transient guest that stopped, or undefined meanwhile
                    info = None
            assignment = None
            async with self._guest_locks.hold([uuid]):
                if self._generation[uuid] != generation:
                    return
                if info is None:
                    await self._forget(uuid)
                    return
                assignment = await self._auto_isolate(info)
                if assignment is None:
                    self._reserve_foreign(info)
                self._note_unconfined_starts(info)
                self._count_unconfined(info)
            await self._write_identity(assignment, info)
        except SvirtError as exc:
            if event.kind != "undefined" and self.store.get(uuid) is None:
                self._unconfined[uuid] = event.name
            if not exc.reported:
                log.error("guest %s (%s) left unconfined after %s: %s", event.name, uuid, event.kind, exc,
                          extra=guest_fields(uuid, event.name))
        except Exception:
            log.exception("handling %s of %s failed", event.kind, event.name, extra=guest_fields(uuid, event.name))

    async def _auto_isolate(self, info: DomainInfoLike) -> Assignment | None:
        """Converge an isolated guest (its definition may have changed), or isolate one that automatic
        confinement covers. None when the guest stays unconfined."""
        if self.store.is_releasing(info.uuid):  # waits for files it could not restore: never relabeled meanwhile
            return self.store.get(info.uuid)
        if self.store.get(info.uuid) is not None or (self._wants_auto(info.name)
                                                      and not self.store.is_opted_out(info.uuid)):
            return await self._isolate_locked(info, "", Origin.AUTO)
        return None

    def _wants_auto(self, name: str) -> bool:
        return self.config.default_confined and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.config.auto_confine_names
        )

    def _count_unconfined(self, info: DomainInfoLike) -> None:
        if self.store.get(info.uuid) is None:
            self._unconfined[info.uuid] = info.name
        else:
            self._unconfined.pop(info.uuid, None)

    @property
    def unconfined_count(self) -> int:
        """libvirt's guests svirtd does not isolate (released, not covered, or refused), as last seen."""
        return len(self._unconfined)

    async def _forget(self, uuid: str) -> None:
        """The guest no longer exists in libvirt: release it, and drop any opt-out."""
        self._unconfined.pop(uuid, None)
        self._domains.pop(uuid, None)
        await self._remove_optout(uuid)
        self.levels.release_foreign(uuid)
        a = self.store.get(uuid)
        if a is not None:
            await self._finish_release(a, optout=False)
        elif self.cluster is not None:  # issue 16: a released guest kept its binding until undefined
            await self.cluster.release(uuid)

    async def _remove_optout(self, uuid: str) -> None:
        """Asked first: a write transaction, even one that changes nothing, waits for the writer's commit."""
        if self.store.is_opted_out(uuid):
            await self.store.write(self.store.remove_optout, uuid)

    async def reconcile(self) -> None:
        """Converge with libvirt after every (re)connect: changes made meanwhile sent no event. One at a
        time (a reload's and a reconnect's): the foreign levels are rebuilt across awaits."""
        async with self._reconcile_lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        # The definitions of guests svirtd does not isolate yet (defined while it was not watching) are read
        # first, and those guests reconciled first: with 1,000 guests it already isolates, a newcomer does
        # not wait for 1,000 definitions to be read and looked at again (issue 19: within 2 s of starting).
        # The known ones hold their pairs in the table whatever the order.
        present = set(await self.hv.domain_uuids())
        known = self.store.uuids() & present
        newcomers = await self.hv.list_domains(present - known)
        self._unconfined = {uuid: name for uuid, name in self._unconfined.items() if uuid in present}
        # Every level in use is reserved before any new pair is drawn: the foreign ones are newcomers'.
        self.levels.release_all_foreign()
        for info in newcomers:
            if self.store.get(info.uuid) is None:
                self._reserve_foreign(info)
                if self.store.is_opted_out(info.uuid):
                    await self._strip_released(info)
        for uuid in self.store.uuids() - present:  # not a model built for each of 1,000 known guests
            a = self.store.get(uuid)
            if a is None:
                continue
            try:
                async with self._guest_locks.hold([a.uuid]):
                    if self.store.get(a.uuid) is not None:
                        log.info("%s was undefined while svirtd was not watching", a.name,
                                 extra=guest_fields(a.uuid, a.name))
                        await self._finish_release(a, optout=False)
            except SvirtError as exc:
                log.error("the release of %s is still pending: %s", a.name, exc, extra=guest_fields(a.uuid, a.name))
        await self._reconcile_each(sorted(newcomers, key=lambda d: d.name))
        known_ones = await self.hv.list_domains(known)
        await self._reconcile_each(sorted(known_ones, key=lambda d: d.name))
        if self.cluster is not None:  # issue 16: bindings of guests gone while svirtd was not watching
            self.cluster.forget_absent(present)
        log.info("reconciled with libvirt: %d domains, %d isolated", len(newcomers) + len(known_ones),
                 self.store.count())

    async def _reconcile_each(self, domains: Sequence[DomainInfoLike]) -> None:
        for info in domains:
            try:
                async with self._guest_locks.hold([info.uuid]):
                    assignment = await self._auto_isolate(info)
                    self._note_unconfined_starts(info)
                await self._write_identity(assignment, info)
            except SvirtError as exc:
                if not exc.reported:
                    log.error("guest %s left unconfined: %s", info.name, exc, extra=guest_fields(info.uuid, info.name))
            self._count_unconfined(info)

    async def rescan_running(self) -> int:
        """Running isolated guests whose definition changed without an event (an external snapshot,
        media changed in a drive) converge now. Returns how many changed."""
        changed = 0
        for row in self.store.summary_rows():
            uuid, name, _level, _profile, state = row
            if state != GuestState.RUNNING.value:
                continue
            try:
                info = await self.hv.lookup(uuid)
            except SvirtError:
                continue
            fresh = self._spec_of(info)
            if self._domains.get(uuid) != fresh:
                changed += 1
                self.on_event(RescanEvent(uuid, name))
            elif await self._repair_drift(uuid, name):
                changed += 1
        return changed

    async def _repair_drift(self, uuid: str, name: str) -> bool:
        """Put back labels that drifted on a running guest's files (label_drift.py: an admin's
        restorecon -R, a chcon). svirtd's own labels re-converge (the recorded original is kept);
        libvirt's get the label rewritten in place. True when something was repaired."""
        claims = [c for c in self.store.claims_for(uuid)
                  if c.kind is not ResourceKind.TREE and c.phase == "applied" and c.expected]
        hung = await self.storage.unresponsive(c.path for c in claims)
        claims = [c for c in claims if c.path not in hung]
        if not claims:
            return False
        found = await self.storage.read((c.path for c in claims), "checking labels", _labels_now, claims)
        repair: list[Claim] = []
        for claim, current in found:
            drift = label_drift.classify(claim.expected, current, claim.applier)
            if drift is label_drift.Drift.NONE:
                continue
            key = (claim.path, current)
            if drift is label_drift.Drift.REPORT:
                if key not in self._drift_reported:
                    self._drift_reported.add(key)
                    log.warning("%s of running guest %s carries %s, not %s; left as it is (libvirt labels it and "
                                "may be changing it); if the guest cannot use it, restart the guest", claim.path,
                                name, current or "no label", claim.expected, extra=guest_fields(uuid, name))
                continue
            log.warning("%s of running guest %s carries %s, not %s (a restorecon or chcon?): putting its label "
                        "back", claim.path, name, current or "no label", claim.expected,
                        extra=guest_fields(uuid, name, message_ids.LABEL_DRIFT_REPAIRED, SVIRT_PATH=claim.path))
            repair.append(claim)
        if not repair:
            return False
        if any(c.applier is Applier.SVIRTD for c in repair):
            self.on_event(RescanEvent(uuid, name))
        mine = [c for c in repair if c.applier is Applier.LIBVIRT]
        if mine:
            async with self._guest_locks.hold([uuid]):
                # The labels were read outside the lock: a release or re-isolation may have run since.
                # Only claims still recorded as read, of a guest still running, are written back (a
                # released pair goes to the next guest, which would reach the file).
                a = self.store.get(uuid)
                held = set(self.store.claims_for(uuid)) if a is not None and a.state is GuestState.RUNNING else set()
                mine = [c for c in mine if c in held]
                if mine:
                    await self.storage.read((c.path for c in mine), "repairing labels", _rewrite_drifted, mine)
        return True

    async def run_rescans(self, interval: float) -> None:
        """rescan_running every interval seconds, for as long as svirtd runs."""
        while True:
            await asyncio.sleep(interval)
            if self.hv.connected:
                try:
                    await self.rescan_running()
                except Exception:
                    log.exception("rescanning running guests failed")

    async def drain(self) -> None:
        """Wait for in-flight event handlers (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- levels ---------------------------------------------------------------------------------

    async def _choose_level(self, domain: DomainSpec, info: DomainInfoLike) -> tuple[Level, str]:
        """The first level the guest already claims that nobody else holds, else a fresh pair."""
        private = [r for r in domain.resources
                   if r.rclass is ResourceClass.PRIVATE and r.kind in (ResourceKind.FILE, ResourceKind.BLOCK)]
        on_disk = (await self.storage.read((r.path for r in private), domain.name, relabel.current_labels, private)
                   if private else [])  # no thread hop for a guest without private files
        claims = level_claims(domain, self.spec, _running_labels(info, domain), on_disk)
        if self.cluster is not None:  # issue 16: etcd binds the pair cluster-wide (ClusterUnavailable while away)
            return await self.cluster.choose(domain.uuid, domain.name, claims)
        group = self.config.group_of(domain.uuid, domain.name)
        return self.levels.choose(domain.uuid, claims, group.category if group is not None else None)

    async def forget_host(self, host: str) -> int:
        """Issue 16: an admin says a host is gone for good; its pairs are freed (see ClusterBook.forget_host)."""
        if self.cluster is None:
            raise InvalidArgument('this svirtd keeps its table locally ([cluster] backend = "local"): '
                                  "there are no hosts to forget")
        return await self.cluster.forget_host(host)

    def _reserve_foreign(self, info: DomainInfoLike) -> None:
        """Reserve the level a guest svirtd does not isolate runs with or carries as a static label;
        drop the reservation once it carries none (a released guest whose label is gone)."""
        domain = self._parse(info)
        for claim in level_claims(domain, self.spec, _running_labels(info, domain)):
            if claim.source in (LevelSource.STATIC, LevelSource.RUNNING):
                self.levels.hold_foreign(info.uuid, info.name, claim.level)
                return
        self.levels.release_foreign(info.uuid)

    # -- internals ------------------------------------------------------------------------------

    def _spec_of(self, info: DomainInfoLike) -> DomainSpec:
        """One DomainSpec from the live and persistent definitions. While the guest runs, the live
        one comes first: a path both name is labeled for what qemu uses now (an old top image that a
        snapshot turned into a read-only backing layer); the persistent one adds what the next start
        will use."""
        xmls = list(info.xmls)
        if info.state is GuestState.RUNNING and len(xmls) > 1:
            xmls.reverse()
        specs = [parse_domain(xml, self.config.swtpm_dir) for xml in xmls]
        first = specs[0]
        if len(specs) > 1:
            seen = {r.path for r in first.resources}
            extra = [r for s in specs[1:] for r in s.resources if r.path not in seen]
            first = first.model_copy(update={"resources": first.resources + tuple(extra)})
        return first

    def _parse(self, info: DomainInfoLike) -> DomainSpec:
        spec = self._spec_of(info)
        self._domains[spec.uuid] = spec
        return spec

    def _resolve_assigned(self, ref: str) -> str:
        if looks_like_uuid(ref):
            if self.store.get(ref) is None:
                self._not_isolated(ref)
            return ref
        matches = self.store.find_by_name(ref)
        if not matches:
            self._not_isolated(ref)
        if len(matches) > 1:
            raise InvalidArgument(f"several isolated guests were named {ref!r}; use the UUID")
        return matches[0].uuid

    def _not_isolated(self, ref: str) -> NoReturn:
        if self.store.optout_named(ref):
            raise NoSuchGuest(f"guest {ref!r} is not isolated: it was released by an admin; "
                              f"`svirtctl isolate {ref}` confines it again")
        raise NoSuchGuest(f"guest {ref!r} is not isolated by svirtd (`svirtctl list` shows those that are)")


def _labels_now(claims: Sequence[Claim]) -> list[tuple[Claim, str | None]]:
    """Each claimed file's label now, for the files that are still the ones claimed (worker thread)."""
    found: list[tuple[Claim, str | None]] = []
    for claim in claims:
        try:
            with labels.open_resource(claim.path, claim.kind) as opened:
                if (opened.st.st_dev, opened.st.st_ino) == (claim.dev, claim.ino):
                    found.append((claim, labels.get_label(opened)))
        except (OSError, UnsafePath, labels.LabelUnsupported):
            continue  # gone or replaced: the next converge deals with it
    return found


def _rewrite_drifted(claims: Sequence[Claim]) -> None:
    """Write each claim's label back where it still drifted the way label_drift repairs (worker thread)."""
    for claim in claims:
        try:
            with labels.open_resource(claim.path, claim.kind) as opened:
                if (opened.st.st_dev, opened.st.st_ino) != (claim.dev, claim.ino):
                    continue
                drift = label_drift.classify(claim.expected, labels.get_label(opened), claim.applier)
                if drift is label_drift.Drift.REPAIR:
                    labels.set_label(opened, claim.expected)
        except (OSError, UnsafePath, labels.LabelUnsupported) as exc:
            log.warning("could not put the label of %s back: %s", claim.path, exc)
