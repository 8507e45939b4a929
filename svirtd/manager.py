"""The use-cases: isolate, release, query, list, reconcile, recover.

Knows no D-Bus and no libvirt API: it talks to the hypervisor through the small Hypervisor protocol
(libvirt_watch implements it) and announces changes through the Listener protocol (dbus_iface
implements it). Blocking file I/O runs in worker threads; the store and the allocator are only
touched from the event loop, so they need no locks of their own.

Ordering rules that make crashes recoverable: a new assignment is committed before any file is
touched; a resource's original label is committed (claim phase 'applying') before its label is
changed; a release is marked 'releasing' before anything is restored. recover() finishes whatever a
crash interrupted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import labels, relabel
from .allocator import PairAllocator
from .config import Config
from .denials import GuestRef
from .errors import (
    InvalidArgument,
    NoSuchGuest,
    NotConfined,
    RelabelFailed,
    ResourceConflict,
    SvirtError,
    Unlabelable,
    UnsafePath,
)
from .identity import chain_filter_xml, chained_filters, rewrite_definition
from .isolation import Object, Proof, Subject, prove_isolation
from .level_claims import LevelSource, level_claims
from .logsetup import guest_fields
from .models import (
    Assignment,
    GuestState,
    Level,
    Origin,
    Resource,
    ResourceClass,
    ResourceKind,
    ResourceState,
    ResourceStatus,
    canonical_uuid,
    looks_like_uuid,
)
from .path_locks import KeyLocks, inode_key, path_key
from .path_policy import Nesting, check_resource_path
from .policy import LabelSpec
from .policy_judge import PolicyJudge, Verdict
from .profiles import NWFILTERS, Profile, resolve_profile
from .resources import DomainSpec, parse_domain
from .store import Claim, Store

log = logging.getLogger(__name__)

MAX_GUEST_REF = 256
# A relabel transaction re-locks when a file is swapped between its lock guess and its probe; a
# file swapped on every attempt is an attack or a runaway script: give up, having changed nothing.
LOCK_ATTEMPTS = 5


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
    async def lookup(self, guest: str) -> DomainInfoLike: ...
    async def list_domains(self) -> Sequence[DomainInfoLike]: ...
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
        self.defaults = defaults
        self.judge = judge
        self.selinux_enabled = selinux_enabled
        self.listener: Listener = listener or _NoListener()
        # Held while a guest's table row and files change; NEVER across a libvirt call (deadlock with
        # the hook, see isolate()).
        self._guest_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._generation: defaultdict[str, int] = defaultdict(int)  # events seen per guest
        # Relabel transactions lock the paths and inodes they touch (sorted: no deadlock), so guests
        # that share nothing relabel in parallel. Always taken inside a guest lock, never around one.
        self._resource_locks = KeyLocks()
        self._domains: dict[str, DomainSpec] = {}  # last definitions seen, for Query while libvirt is away
        self._tasks: set[asyncio.Task[None]] = set()
        # Levels in use by guests svirtd does not isolate (excluded, released, static labels of their
        # own): reserved so that no isolated guest is ever handed the same pair.
        self._foreign: dict[str, tuple[str, Level]] = {}
        self.last_verify: VerifyResult | None = None
        self._verify_lock = asyncio.Lock()

    @property
    def denied(self) -> tuple[str, ...]:
        return (*self.config.denied_paths, str(self.config.state_dir))

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
            if a is not None:
                log.warning("finishing the release of %s interrupted by a restart or still incomplete", a.name,
                            extra=guest_fields(a.uuid, a.name))
                await self._finish_release(a, optout=False)

    # -- use-cases ------------------------------------------------------------------------------

    async def isolate(self, guest: str, profile: str = "", origin: Origin = Origin.API) -> Assignment:
        """Give the guest a pair (or keep its own) and label its resources. Idempotent."""
        ref = check_guest_ref(guest)
        profile_name = resolve_profile(profile).name if profile else ""
        # Never wait on libvirt while holding a guest lock: the libvirt hook (PrepareStart, GuestStopped)
        # takes that lock while libvirtd waits for it with the domain locked. A definition that changes
        # after this lookup comes with its own event, which converges again.
        info = await self.hv.lookup(ref)  # NoSuchGuest / LibvirtUnavailable
        async with self._guest_locks[info.uuid]:
            assignment = await self._isolate_locked(info, profile_name, origin)
        await self._write_identity(assignment, info)
        return assignment

    async def _isolate_locked(self, info: DomainInfoLike, profile: str, origin: Origin,
                              domain: DomainSpec | None = None) -> Assignment:
        """Allocate (or keep) the pair and converge the resources. No libvirt calls: see isolate()."""
        domain = domain or self._parse(info)
        existing = self.store.get(domain.uuid)
        self._check_profile(domain, resolve_profile(profile or (existing.profile if existing else "")))
        now = time.time()
        if existing is None:
            level, note = await self._choose_level(domain, info)  # LabelSpaceExhausted
            assignment = Assignment(uuid=domain.uuid, name=domain.name, level=level,
                                    profile=profile or "default", origin=origin, state=info.state,
                                    created=now, updated=now, note=note)
            if note:
                log.warning("%s: %s", domain.name, note, extra=guest_fields(domain.uuid, domain.name))
            try:
                self.store.insert_assignment(assignment)
            except Exception:
                self.allocator.release(level)
                raise
        else:
            assignment = existing
        try:
            await self._converge(domain, assignment)
        except Exception:
            if existing is None:  # a refused first isolation leaves no trace
                self.store.delete_assignment(domain.uuid)
                self.allocator.release(assignment.level)
            raise
        changes: dict[str, str] = {}
        if assignment.name != domain.name:
            changes["name"] = domain.name
        if assignment.state != info.state:
            changes["state"] = info.state.value
        if profile and assignment.profile != profile:
            changes["profile"] = profile
        if changes:
            self.store.update_assignment(domain.uuid, **changes)
        self.store.remove_optout(domain.uuid)
        final = self.store.get(domain.uuid)
        assert final is not None
        if existing is None or changes.keys() & {"name", "profile"}:
            log.info("isolated %s at %s (profile %s, %s)", final.name, final.level, final.profile,
                     final.origin.value, extra=guest_fields(final.uuid, final.name))
            self.listener.isolated(final)
        return final

    async def identify(self, guest: str, isolated_only: bool = False) -> dict[str, str]:
        """Authorization details for a guest reference: guest_uuid and guest_name when the guest can be
        found, else just what the caller gave (so a denial does not reveal whether the guest exists)."""
        ref = check_guest_ref(guest)
        try:
            if isolated_only:
                a = self.store.get(self._resolve_assigned(ref))
                if a is not None:
                    return {"guest_uuid": a.uuid, "guest_name": a.name}
            else:
                info = await self.hv.lookup(ref)
                return {"guest_uuid": info.uuid, "guest_name": info.name}
        except SvirtError:
            pass
        return {"guest": ref}

    # -- the libvirt hook ------------------------------------------------------------------------

    async def prepare_start(self, xml: str) -> Assignment | None:
        """The hook's `prepare begin`: make sure the guest is isolated and labeled before qemu exists.

        Everything comes from the XML libvirt handed the hook: libvirt is blocked on the hook, so it
        is not called. None when the guest is to run unconfined (released by an admin, or not covered
        by automatic confinement) and require_confined allows that.
        """
        domain = parse_domain(xml, self.config.swtpm_dir)
        self._domains[domain.uuid] = domain  # as _parse() would: parsed once, here
        info = XmlDomain(uuid=domain.uuid, name=domain.name, state=GuestState.RUNNING, xmls=(xml,))
        async with self._guest_locks[domain.uuid]:
            if self.store.get(domain.uuid) is None and (self.store.is_opted_out(domain.uuid)
                                                         or not self._wants_auto(domain.name)):
                why = ("it was released by an admin" if self.store.is_opted_out(domain.uuid)
                       else "automatic confinement does not cover it (default_confined / auto_confine_names)")
                if self.config.require_confined:
                    raise NotConfined(f"{domain.name} is not isolated ({why}) and require_confined = true; "
                                      f"`svirtctl isolate {domain.name}` confines it")
                log.warning("guest %s starts UNCONFINED: %s", domain.name, why,
                            extra=guest_fields(domain.uuid, domain.name))
                return None
            # The identity (metadata, seclabel) is written at the next event, outside the hook.
            return await self._isolate_locked(info, "", Origin.AUTO, domain)

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
        log.error("guest %s is %s", info.name, note, extra=guest_fields(info.uuid, info.name))
        if self.store.get(info.uuid) is not None:
            self.store.update_assignment(info.uuid, note=note)

    def _check_profile(self, domain: DomainSpec, profile: Profile) -> None:
        if profile.forbid_interfaces and domain.interfaces:
            raise InvalidArgument(f"profile {profile.name}: {domain.name} has {len(domain.interfaces)} network "
                                  "interface(s); remove them from its definition or choose another profile")

    async def _write_identity(self, a: Assignment | None, info: DomainInfoLike) -> None:
        """Metadata, static seclabel and profile filters into the persistent definition (only if they
        differ: the redefinition's own event then changes nothing). Called without any guest lock."""
        if a is None or not self.hv.connected:
            return
        xml = info.xmls[0]
        cached = self._domains.get(a.uuid)  # parsed by _isolate_locked moments ago
        tcg = cached.is_tcg if cached is not None else self._parse(info).is_tcg
        profile = resolve_profile(a.profile)
        if self.config.write_seclabels == "always" or (self.config.write_seclabels == "auto" and self.selinux_enabled):
            seclabel: str | None = str(self.spec.process_label(a.level, tcg))
        else:
            seclabel = None

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
        """Restore the guest's resources and free its pair.

        optout: the guest stays defined, so automatic confinement must leave it alone until the
        next Isolate (an explicit Release is a decision, not something to undo on the next event).
        """
        ref = check_guest_ref(guest)
        uuid = self._resolve_assigned(ref)
        async with self._guest_locks[uuid]:
            a = self.store.get(uuid)
            if a is None:
                raise NoSuchGuest(f"guest {guest!r} is not isolated by svirtd")
            pending = await self._finish_release(a, optout=optout)
        if pending:
            raise RelabelFailed(pending)

    async def _finish_release(self, a: Assignment, optout: bool) -> str:
        """Restore the guest's resources and free its pair; '' when done. Else the note saying what could
        not be restored: the guest stays (phase 'releasing', Query shows the note) with the claims of
        those resources, and its pair stays reserved, until a later Release or svirtd's start (recover)
        restores them: a freed pair still on a file would hand it to the pair's next owner."""
        self.store.begin_release(a.uuid, optout)
        claims = self.store.claims_for(a.uuid)
        keys = {path_key(c.path) for c in claims} | {inode_key(c.dev, c.ino) for c in claims}
        async with self._resource_locks.hold(keys):
            outcomes = await self._restore(a.uuid, claims)
        for out in outcomes:
            level = logging.INFO if out.restored or out.intended else logging.WARNING
            log.log(level, "%s: %s", out.path, out.message, extra=guest_fields(a.uuid, a.name))
        pending = [out for out in outcomes if out.retry]
        if pending:
            retried = {out.path for out in pending}
            self.store.delete_claims(a.uuid, [c.path for c in claims if c.path not in retried])
            note = relabel.release_pending_note(a.name, pending)
            self.store.update_assignment(a.uuid, note=note)
            log.error("%s: %s", a.name, note, extra=guest_fields(a.uuid, a.name))
            return note
        self.store.delete_assignment(a.uuid)
        self.allocator.release(a.level)
        self._domains.pop(a.uuid, None)
        log.info("released %s (%s freed)", a.name, a.level, extra=guest_fields(a.uuid, a.name))
        self.listener.released(a.uuid, a.name)
        return ""

    def list_summary(self) -> list[tuple[str, str, str, str, str]]:
        """(uuid, name, level, profile, state) of every isolated guest."""
        return self.store.summary_rows()

    async def query(self, guest: str) -> GuestReport:
        ref = check_guest_ref(guest)
        uuid = self._resolve_assigned(ref)
        a = self.store.get(uuid)
        if a is None:
            raise NoSuchGuest(f"guest {guest!r} is not isolated by svirtd")
        domain = self._domains.get(uuid)
        if domain is None and self.hv.connected:
            try:
                domain = self._parse(await self.hv.lookup(uuid))
            except SvirtError:
                domain = None
        claims = self.store.claims_for(uuid)
        states = await asyncio.to_thread(self._observe, a, domain, claims)
        tcg = domain.is_tcg if domain is not None else False
        return GuestReport(assignment=a, process_label=str(self.spec.process_label(a.level, tcg)),
                           image_label=str(self.spec.image_label(a.level)), resources=tuple(states),
                           isolation=self._isolation_status(uuid))

    def _isolation_status(self, uuid: str) -> str:
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
        async with self._verify_lock:
            subjects = await self._proof_subjects()
            owned = [(a, self.store.claims_for(a.uuid)) for a in self.store.assignments()]
            objects = await asyncio.to_thread(self._proof_objects, owned)
            proof = await asyncio.to_thread(prove_isolation, subjects, objects, self._decide)
            self.last_verify = VerifyResult(policy=str(self.judge.policy_file), at=time.time(), proof=proof)
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
            subjects.append(Subject(a.uuid, a.name, str(self.spec.process_label(a.level, tcg))))
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

    def _process_types(self) -> set[str]:
        return {self.spec.process.type} | ({self.spec.process_tcg.type} if self.spec.process_tcg else set())

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
                    objects.append(Object(a.uuid, a.name, claim.path, label, claim.rclass))
        return objects

    # -- reacting to libvirt ----------------------------------------------------------------------

    def on_event(self, event: DomainEventLike) -> None:
        """Called on the loop for each libvirt lifecycle event; handled in its own task."""
        task = asyncio.create_task(self._handle_event(event), name=f"event-{event.kind}-{event.uuid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_event(self, event: DomainEventLike) -> None:
        uuid = event.uuid
        self._generation[uuid] += 1
        generation = self._generation[uuid]
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
            async with self._guest_locks[uuid]:
                if self._generation[uuid] != generation:
                    return
                if info is None:
                    await self._forget(uuid)
                    return
                assignment = await self._auto_isolate(info)
                if assignment is None:
                    self._reserve_foreign(info)
                self._note_unconfined_starts(info)
            await self._write_identity(assignment, info)
        except SvirtError as exc:
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

    async def _forget(self, uuid: str) -> None:
        """The guest no longer exists in libvirt: release it, and drop any opt-out."""
        self.store.remove_optout(uuid)
        self._release_foreign(uuid)
        a = self.store.get(uuid)
        if a is not None:
            await self._finish_release(a, optout=False)

    async def reconcile(self) -> None:
        """Converge with libvirt after every (re)connect: changes made meanwhile sent no event."""
        domains = await self.hv.list_domains()
        present = {d.uuid for d in domains}
        # Every level in use is reserved before any new pair is drawn.
        for uuid in list(self._foreign):
            self._release_foreign(uuid)
        for info in domains:
            if self.store.get(info.uuid) is None:
                self._reserve_foreign(info)
        for a in self.store.assignments():
            if a.uuid not in present:
                async with self._guest_locks[a.uuid]:
                    if self.store.get(a.uuid) is not None:
                        log.info("%s was undefined while svirtd was not watching", a.name,
                                 extra=guest_fields(a.uuid, a.name))
                        await self._finish_release(a, optout=False)
        # Guests svirtd already isolates first (they hold their pairs), then newcomers.
        ordered = sorted(domains, key=lambda d: (self.store.get(d.uuid) is None, d.name))
        for info in ordered:
            try:
                async with self._guest_locks[info.uuid]:
                    assignment = await self._auto_isolate(info)
                    self._note_unconfined_starts(info)
                await self._write_identity(assignment, info)
            except SvirtError as exc:
                log.error("guest %s left unconfined: %s", info.name, exc, extra=guest_fields(info.uuid, info.name))
        log.info("reconciled with libvirt: %d domains, %d isolated", len(domains), self.store.count())

    async def drain(self) -> None:
        """Wait for in-flight event handlers (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- levels ---------------------------------------------------------------------------------

    async def _choose_level(self, domain: DomainSpec, info: DomainInfoLike) -> tuple[Level, str]:
        """The first level the guest already claims that nobody else holds, else a fresh pair.

        A claim held by another guest (a copied definition or image) is a conflict: the newcomer
        gets a new pair and the note says which guest held the old one.
        """
        private = [r for r in domain.resources
                   if r.rclass is ResourceClass.PRIVATE and r.kind in (ResourceKind.FILE, ResourceKind.BLOCK)]
        on_disk = await asyncio.to_thread(relabel.current_labels, private)
        conflicts: list[str] = []
        for claim in level_claims(domain, self.spec, info.running_labels, on_disk):
            holder = self._holder_of(claim.level, domain.uuid)
            if holder is None:
                self._take(claim.level, domain.uuid)
                return claim.level, self._remap_note(conflicts, claim.level)
            conflicts.append(f"{claim.source.value} {claim.level} is held by guest {holder}")
        level = self.allocator.allocate()
        return level, self._remap_note(conflicts, level)

    @staticmethod
    def _remap_note(conflicts: list[str], level: Level) -> str:
        return f"re-mapped to {level}: {'; '.join(conflicts)}" if conflicts else ""

    def guest_at(self, level: Level) -> GuestRef | None:
        """The guest (isolated, or running with a foreign label) that holds a level."""
        found = self.store.guest_at_level(level)
        if found is not None:
            return GuestRef(*found)
        for uuid, (name, held) in self._foreign.items():
            if held == level:
                return GuestRef(uuid, f"{name} (not isolated by svirtd)")
        return None

    def _holder_of(self, level: Level, uuid: str) -> str | None:
        """Name of the guest (other than uuid) holding level, or None when it is free for uuid."""
        owner = self.store.by_level(level)
        if owner is not None and owner.uuid != uuid:
            return f"{owner.name} ({owner.uuid})"
        for other, (name, held) in self._foreign.items():
            if held == level and other != uuid:
                return f"{name} ({other}, not isolated by svirtd)"
        mine = self._foreign.get(uuid)
        if owner is None and (mine is None or mine[1] != level) and self.allocator.in_space(level) \
                and not self.allocator.is_free(level):
            return "an unknown holder (the pair is marked in use)"  # only if the table were inconsistent
        return None

    def _take(self, level: Level, uuid: str) -> None:
        """Reserve level for uuid; a foreign reservation of its own simply changes hands."""
        mine = self._foreign.pop(uuid, None)
        if mine is not None and mine[1] == level:
            return
        if mine is not None:
            self.allocator.release(mine[1])
        self.allocator.reserve(level)

    def _reserve_foreign(self, info: DomainInfoLike) -> None:
        """Reserve the level a guest svirtd does not isolate runs with (static label, running qemu)."""
        domain = self._parse(info)
        for claim in level_claims(domain, self.spec, info.running_labels):
            if claim.source not in (LevelSource.STATIC, LevelSource.RUNNING):
                continue
            current = self._foreign.get(info.uuid)
            if current is not None and current[1] == claim.level:
                return
            if self._holder_of(claim.level, info.uuid) is None:
                self._release_foreign(info.uuid)
                self.allocator.reserve(claim.level)
                self._foreign[info.uuid] = (info.name, claim.level)
            else:
                log.warning("%s runs with %s (%s), which another guest holds: the two are not isolated from "
                            "each other", info.name, claim.level, claim.source.value,
                            extra=guest_fields(info.uuid, info.name))
            return

    def _release_foreign(self, uuid: str) -> None:
        held = self._foreign.pop(uuid, None)
        if held is not None:
            self.allocator.release(held[1])

    # -- internals ------------------------------------------------------------------------------

    def _parse(self, info: DomainInfoLike) -> DomainSpec:
        """One DomainSpec from the persistent and live definitions (union of their resources)."""
        specs = [parse_domain(xml, self.config.swtpm_dir) for xml in info.xmls]
        first = specs[0]
        if len(specs) > 1:
            seen = {r.path for r in first.resources}
            extra = [r for s in specs[1:] for r in s.resources if r.path not in seen]
            first = first.model_copy(update={"resources": first.resources + tuple(extra)})
        self._domains[first.uuid] = first
        return first

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

    def _unlabelable_note(self, a: Assignment, exc: labels.LabelUnsupported) -> str:
        """What the admin needs to know: isolation is lost, and which boolean (asked of the policy)
        would let guests use such storage at all."""
        booleans: tuple[str, ...] | None = None
        if self.judge is not None:
            booleans = self.judge.booleans_for_storage(str(self.spec.process_label(a.level)), exc.fstype)
        if booleans is None:
            booleans = (exc.boolean,) if exc.boolean else ()
        if booleans:
            how = " or ".join(f"`setsebool -P {b} 1`" for b in booleans)
            hint = f"guests reach it only after {how}, and then EVERY guest can reach it"
        else:
            hint = "no SELinux boolean lets guests use it: move it to a filesystem with xattr support"
        return f"{exc.path} is unlabelable ({exc.fstype}): isolation lost; {hint}"

    def _not_isolated(self, ref: str) -> None:
        if self.store.optout_named(ref):
            raise NoSuchGuest(f"guest {ref!r} is not isolated: it was released by an admin; "
                              f"`svirtctl isolate {ref}` confines it again")
        raise NoSuchGuest(f"guest {ref!r} is not isolated by svirtd (`svirtctl list` shows those that are)")

    async def _converge(self, domain: DomainSpec, a: Assignment) -> None:
        """Make the guest's resources carry the labels its level asks for; undo removed ones."""
        plan = relabel.plan_relabel(domain, a.level, self.spec, self.denied)  # UnsafePath: nothing touched
        held = self.store.claims_for(a.uuid)  # stable: only this guest's transactions (guest lock held) change them
        for _attempt in range(LOCK_ATTEMPTS):
            keys = await asyncio.to_thread(relabel.lock_keys, plan, held)
            async with self._resource_locks.hold(keys):
                probed = await asyncio.to_thread(relabel.probe, plan, self.denied)
                try:
                    if not relabel.probed_keys(probed) <= keys:
                        continue  # a file was replaced between the guess and the probe: lock what is there now
                    await self._apply(domain, a, probed)
                    return
                finally:
                    probed.close()
        raise RelabelFailed(f"{domain.name}: its files kept being replaced while svirtd labeled them "
                            f"({LOCK_ATTEMPTS} attempts); nothing was changed. Try again when they are stable")

    def _check_nesting(self, a: Assignment, present: Sequence[relabel.Probed]) -> None:
        """ResourceConflict if a resource and another guest's directory tree overlap. Synchronous, and
        followed by this guest's claims without an await: no claim can appear in between."""
        if not present:
            return
        # Every other claim if this guest has a tree (it may hold any of them), else only their trees.
        has_tree = any(p.planned.resource.kind is ResourceKind.TREE for p in present)
        clash = relabel.find_nesting(present, self.store.claims_of_others(a.uuid, trees_only=not has_tree))
        if clash is None:
            return
        item, other, how = clash
        owner = self.store.get(other.uuid)
        whose = f"guest {owner.name if owner else other.uuid} ({other.uuid})"
        what = f"{item.path} ({item.planned.resource.device})"
        if how is Nesting.INSIDE:
            raise ResourceConflict(
                f"{what} lies inside {other.path}, a directory tree of {whose}: one file cannot carry two guests' "
                "labels; move it out of that tree, or give that guest a directory holding no other guest's files")
        raise ResourceConflict(
            f"the directory tree {what} contains {other.path}, a resource of {whose}: labeling the tree would hand "
            "that file to this guest; share a directory that holds no other guest's files")

    async def _apply(self, domain: DomainSpec, a: Assignment, probed: relabel.ProbeResult) -> None:
        if probed.unlabelable:
            # In a worker thread: the first question reads the policy with setools (~0.2 s).
            described = await asyncio.to_thread(lambda: "; ".join(
                self._unlabelable_note(a, p.unlabelable) for p in probed.unlabelable if p.unlabelable is not None))
            if self.config.refuse_unlabelable:
                raise Unlabelable(f"{domain.name}: {described}. refuse_unlabelable = true in svirtd.conf: move "
                                  "these to labelable storage, or set it to false to isolate the rest")
            log.warning("%s: %s", domain.name, described, extra=guest_fields(a.uuid, a.name))
        self._check_nesting(a, probed.present)
        existing = {c.path: c for c in self.store.claims_for(a.uuid)}
        claims: list[Claim] = []
        for item in probed.present:
            assert item.opened is not None
            st = item.opened.st
            self._check_conflicts(a, item, st.st_dev, st.st_ino)
            mine = existing.get(item.path)
            if mine is not None and (mine.dev, mine.ino) == (st.st_dev, st.st_ino):
                original = mine.original
            else:
                original = self._original_of(st.st_dev, st.st_ino, item.current)
            claims.append(Claim(uuid=a.uuid, path=item.path, device=item.planned.resource.device,
                                kind=item.planned.resource.kind, rclass=item.planned.resource.rclass,
                                dev=st.st_dev, ino=st.st_ino, expected=item.planned.target,
                                original=original, phase="applying", real=item.opened.path))

        def done_already(item: relabel.Probed) -> bool:
            assert item.opened is not None
            mine = existing.get(item.path)
            return (mine is not None and mine.phase == "applied" and item.current == item.planned.target
                    and (mine.dev, mine.ino) == (item.opened.st.st_dev, item.opened.st.st_ino))

        def journal_for(item: relabel.Probed) -> Path:
            assert item.opened is not None
            return relabel.journal_prefix(self.config.journal_dir, a.uuid, item.planned.resource.rclass,
                                          item.opened.st.st_dev, item.opened.st.st_ino)

        # Claims already on record and on disk need no write: a guest start (the hook) that finds
        # everything in place costs no fsync.
        changing = [c for c, item in zip(claims, probed.present, strict=True)
                    if not (done_already(item) and existing[c.path] == c.model_copy(update={"phase": "applied"}))]
        if changing:
            # Originals are durable before the first label changes (trees: the helper journals each entry).
            self.store.put_claims(changing)
            # Rolls back itself on failure.
            await asyncio.to_thread(relabel.apply_probed, probed.present, journal_for, done_already)
            self.store.set_claims_phase(a.uuid, [c.path for c in changing], "applied")
        wanted = {c.path for c in claims}
        gone = [c for path, c in existing.items() if path not in wanted]
        if gone:
            await self._restore(a.uuid, gone)
            self.store.delete_claims(a.uuid, [c.path for c in gone])

    def _check_conflicts(self, a: Assignment, item: relabel.Probed, dev: int, ino: int) -> None:
        for other in self.store.claims_on_inode(dev, ino):
            if other.uuid == a.uuid:
                continue
            # Private is never shared; shared and read-only want different labels on the same file.
            if ResourceClass.PRIVATE in (other.rclass, item.planned.resource.rclass) \
                    or other.rclass is not item.planned.resource.rclass:
                owner = self.store.get(other.uuid)
                owner_name = owner.name if owner else other.uuid
                raise ResourceConflict(
                    f"{item.path} ({item.planned.resource.device}) is already a resource of guest {owner_name} "
                    f"({other.uuid}) as {other.path} [{other.rclass.value}]; mark it <shareable/> or "
                    "<readonly/> in both guests, or give this guest its own copy"
                )

    def _original_of(self, dev: int, ino: int, current: str | None) -> str:
        """What the file carried before svirtd: another guest's record of it if it is shared."""
        for other in self.store.claims_on_inode(dev, ino):
            if other.original is not None:
                return other.original
        return current if current is not None else ""

    async def _restore(self, uuid: str, claims: Iterable[Claim]) -> list[relabel.RestoreOutcome]:
        """Restore the claims no other guest still holds. Shared and read-only ones stay as long as anyone
        uses them; with restore_shared = false for good (libvirt's way: a guest on another host sharing
        the storage may use them without this host knowing)."""
        to_restore: list[Claim] = []
        kept: list[relabel.RestoreOutcome] = []
        for c in claims:
            others = [o for o in self.store.claims_on_inode(c.dev, c.ino) if o.uuid != uuid]
            if others:
                kept.append(relabel.RestoreOutcome(c.path, False, f"kept: still used by {len(others)} other guest(s)",
                                                   intended=True))
            elif c.rclass is not ResourceClass.PRIVATE and not self.config.restore_shared:
                if c.kind is ResourceKind.TREE:
                    relabel.discard_journal(relabel.claim_journal(c, self.config.journal_dir))
                kept.append(relabel.RestoreOutcome(
                    c.path, False, f"left as {c.expected}: {c.rclass.value} files are not restored (restore_shared = "
                    f"false: other hosts' guests may use them); `restorecon {c.path}` puts back the policy default",
                    intended=True))
            else:
                to_restore.append(c)
        if to_restore:
            self.store.set_claims_phase(uuid, [c.path for c in to_restore], "restoring")
        outcomes = await asyncio.to_thread(relabel.restore_claims, to_restore, self.config.journal_dir,
                                           self.defaults)
        return kept + outcomes

    def _observe(self, a: Assignment, domain: DomainSpec | None, claims: list[Claim]) -> list[ResourceState]:
        """Expected vs. on-disk label of every resource (runs in a worker thread: file I/O)."""
        by_path = {c.path: c for c in claims}
        resources: list[Resource] = list(domain.resources) if domain is not None else []
        known = {r.path for r in resources}
        resources += [Resource(path=c.path, device=c.device, kind=c.kind, rclass=c.rclass)
                      for c in claims if c.path not in known]
        return [self._observe_one(a, r, by_path.get(r.path)) for r in resources]

    def _observe_one(self, a: Assignment, res: Resource, claim: Claim | None) -> ResourceState:
        def state(expected: str, actual: str, status: ResourceStatus, note: str = "") -> ResourceState:
            return ResourceState(path=res.path, device=res.device, kind=res.kind, rclass=res.rclass,
                                 expected=expected, actual=actual, status=status, note=note or res.note)

        if res.rclass is ResourceClass.UNHANDLED:
            return state("", "", ResourceStatus.NOT_RELABELED, f"not relabeled: {res.note}")
        target = self.spec.label_for(res.rclass, a.level)
        expected = str(target) if target is not None else ""
        try:
            check_resource_path(res, self.denied)
            with labels.open_resource(res.path, res.kind) as opened:
                try:
                    labels.check_labelable(opened)
                    actual = labels.get_label(opened) or ""
                except labels.LabelUnsupported as exc:
                    return state(expected, "", ResourceStatus.UNLABELABLE, self._unlabelable_note(a, exc))
        except FileNotFoundError:
            return state(expected, "", ResourceStatus.ABSENT, "not present yet" if res.optional else "missing")
        except (UnsafePath, OSError) as exc:
            return state(expected, "", ResourceStatus.NOT_RELABELED, f"refused: {exc}")
        if claim is not None and claim.phase != "applied":
            return state(expected, actual, ResourceStatus.PENDING)
        if res.kind is ResourceKind.TREE and actual == expected:
            return state(expected, actual, ResourceStatus.LABELED, "directory tree (label of its root shown)")
        if actual == expected:
            return state(expected, actual, ResourceStatus.LABELED)
        return state(expected, actual, ResourceStatus.DRIFTED, "on-disk label differs from svirtd's")


class DomainEventLike(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
