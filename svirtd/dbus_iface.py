"""org.svirt.Manager1 on the system bus: the edge that translates between D-Bus and the manager.

Every method is the same few lines: authorize -> parse arguments -> call the manager -> marshal the
result. Domain errors map to D-Bus error names in one table (dbus_errors.ERROR_NAMES), the way firewalld's
exception decorator does it. Method docs live next to each method and are served in the
introspection XML as org.freedesktop.DBus.Description annotations; docs/dbus-api.md documents the same.
"""

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import MessageFlag, NameFlag, PropertyAccess, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from . import __version__, errors, hook_spool
from .authz import Action, Authorizer, require_root
from .cluster_model import HOST_ID_RULE, is_host_id
from .dbus_annotate import EMITS
from .dbus_errors import dbus_errors, error_name
from .dbus_guests import GuestObjects
from .dbus_jobs import Jobs
from .denial_tracker import DenialEvent, DenialTracker
from .manager import GuestReport, Manager, VerifyResult
from .models import Assignment, ResourceState, looks_like_uuid
from .profiles import resolve_profile
from .verify_gate import RECENT, VerifyGate

log = logging.getLogger(__name__)

BUS_NAME = "org.svirt.Manager"
OBJECT_PATH = "/org/svirt/Manager"
INTERFACE = "org.svirt.Manager1"
DESCRIPTION = "org.freedesktop.DBus.Description"

DOCS: dict[str, str] = {
    "Isolate": "Isolate a guest (UUID or libvirt name) under a containment profile ('' = default): give it "
               "a unique MCS category pair, bound to its UUID, and label its resources. Idempotent: a guest "
               "keeps its pair. Returns the assignment (as Query). Runs as a job watchers see (StartIsolate: "
               "the same without waiting, for a big tree that takes longer than a client waits).",
    "Release": "Restore the guest's resources to their original labels and free its pair. Automatic "
               "confinement leaves the guest alone until the next Isolate or until it is redefined.",
    "Query": "The guest's assignment: label, level, categories, profile, state, every resource with its "
             "expected and actual on-disk label, and its last denials. Anyone may call it; the raw audit "
             "records of the denials only root and callers polkit authorizes (org.svirt.manager1.audit) see.",
    "List": "Every guest svirtd isolates: (uuid, name, level, profile, state).",
    "PrepareStart": "For svirtd's libvirt hook only (root): the definition of a guest about to start. Makes sure "
                    "it is isolated and labeled before qemu exists, without calling back into libvirt. Returns "
                    "the assignment and confined=true, or confined=false when it starts unconfined; fails with "
                    "NotConfined when require_confined forbids that.",
    "GuestStopped": "For svirtd's libvirt hook only (root): the guest's qemu is gone.",
    "HookEvent": "For svirtd's libvirt hook only (root): operation (prepare, start, migrate, restore) and the "
                 "definition libvirt handed the hook, spooled into svirtd's hook directory (no size limit of "
                 "a command line). prepare: isolate and label before qemu exists (as PrepareStart). start: the "
                 "label libvirt is about to run is checked, and adopted when the definition did not carry the "
                 "guest's yet. migrate/restore: svirtd writes the definition to use, with its label, next to the "
                 "spooled one (NAME.out). Returns (proceed, message): proceed=false refuses the start.",
    "Verify": "Prove isolation against the compiled policy (MCS constraints included): every guest's process "
              "label against every resource label on disk. Returns ok, counts and each violation with both "
              "guests named. Query shows the last verdict per guest. Root, or as polkit decides "
              "(org.svirt.manager1.verify). Concurrent calls share one proof; callers other than root get a "
              f"proof younger than {RECENT:g} s as it is.",
    "StartIsolate": "As Isolate, as a job: returns its object path (org.svirt.Job1) as soon as the caller is "
                    "authorized. Watch the job's Progress; JobRemoved tells how it ended (result done, failed or "
                    "canceled, with the error Isolate would have returned). Job1.Cancel rolls back what it labeled.",
    "StartRelease": "As Release, as a job (see StartIsolate). A release cannot be cancelled.",
    "StartVerify": "As Verify, as a job (see StartIsolate); the proof is then the guests' Isolation property "
                   "and what Verify returns (a proof younger than a few seconds is shared).",
    "LastVerify": "The last proof, as Verify returned it (after a StartVerify job: its result), without making "
                  "one; authorized as Verify. Failed while no proof was made since svirtd started.",
    "JobRemoved": "A job ended and its object is going: id, object path, guest, result (done, failed, "
                  "canceled), and the D-Bus error name and message of a failure ('' when done).",
    "Isolated": "A guest received (or changed) its isolation: uuid, name, process label.",
    "Released": "A guest's isolation was removed: uuid, name.",
    "Denied": "An SELinux denial involving a guest: source/target guest (uuid, name), permissions, class, path, "
              "contexts, a plain-words explanation computed from the policy and the command that would change "
              "it (if any). raw is empty: a signal reaches every listener (Query shows it to those allowed).",
    "AuditStats": "Audit records seen (received), attributed to guests, unattributed, malformed (skipped), lost.",
    "Version": "svirtd's version.",
    "Enforcing": "True when SELinux is enabled and enforcing on this host, i.e. the kernel applies the labels.",
    "CategoriesFree": "How many more guests can be isolated: free category pairs in the configured range.",
    "CategoriesTotal": "Category pairs in the configured range (minus reserved categories).",
    "LibvirtConnected": "Whether svirtd is connected to libvirtd right now.",
    "GetGuest": "The object path of an isolated guest (UUID or libvirt name): /org/svirt/Manager/guest/<escaped "
                "uuid>, with org.svirt.Guest1. GetManagedObjects on /org/svirt/Manager lists them all.",
    "ClusterState": "Where the allocation table lives and how it is: 'local', or etcd connected / unavailable "
                    "(why), the hosts alive, local changes waiting for etcd, conflicts.",
    "ForgetHost": "([cluster] backend = \"etcd\") A host is gone for good: take it out of every cluster binding and "
                  "free the pairs only it used. Refused while its lease is alive. Returns the pairs freed. Root, or "
                  "as polkit decides (org.svirt.manager1.cluster).",
}

# The message being handled, for methods that must know who is calling (dbus-fast does not pass it).
current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar("current_message", default=None)

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")
AssignmentDict = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
GuestRows = Annotated[list[list[str]], DBusSignature("a(sssss)")]


def capture_message(msg: Message) -> None:
    """Bus message handler: remember the message a method call is being dispatched for."""
    if msg.message_type is MessageType.METHOD_CALL:
        current_message.set(msg)


def _sender() -> str | None:
    msg = current_message.get()
    return msg.sender if msg is not None else None


def _interactive() -> bool:
    """The caller set ALLOW_INTERACTIVE_AUTHORIZATION: polkit may ask its agent for a password."""
    msg = current_message.get()
    return msg is not None and bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)


class ManagerInterface(ServiceInterface):
    def __init__(self, manager: Manager, authorizer: Authorizer, enforcing: Callable[[], bool],
                 connected: Callable[[], bool], denials: DenialTracker | None = None,
                 audit_stats: Callable[[], dict[str, int]] | None = None, spool: Path | None = None,
                 cluster_state: Callable[[], str] | None = None) -> None:
        super().__init__(INTERFACE)
        self._cluster_state = cluster_state
        self._spool = spool
        self._manager = manager
        self._denials = denials
        self._audit_stats = audit_stats
        self._authz = authorizer
        self._enforcing = enforcing
        self._connected = connected
        self._verify = VerifyGate(manager.verify, lambda: manager.last_verify)
        self.guests: GuestObjects | None = None  # the per-guest objects, once exported
        self.jobs: Jobs | None = None  # the job objects, once exported
        self._published: dict[str, Any] = {}  # last values of properties that change by themselves
        self._replies: dict[str, tuple[GuestReport, dict[str, Variant]]] = {}  # uuid -> (report, reply)

    # -- methods -------------------------------------------------------------------------------

    @method()
    @dbus_errors
    async def Isolate(self, guest: DBusStr, profile: DBusStr) -> AssignmentDict:
        # Authorized before anything else: polkit is told the guest from svirtd's own table, or as the
        # caller named it, never after asking libvirt (a refused caller costs no libvirt call). The
        # call then acts on exactly the guest polkit was told about.
        details, target = await self._authorized(guest, Action.ISOLATE)
        report = await self._in_job("isolate", await self._uuid_of(target), Action.ISOLATE, details,
                                    lambda: self._manager.isolate_report(target, profile))
        return self._report(report, raw=await self._may_read_audit(report))

    @method()
    @dbus_errors
    async def StartIsolate(self, guest: DBusStr, profile: DBusStr) -> Annotated[str, DBusSignature("o")]:
        resolve_profile(profile)  # a profile that can never be valid is this call's error, not the job's
        details, target = await self._authorized(guest, Action.ISOLATE)
        return self._start("isolate", await self._uuid_of(target), Action.ISOLATE, details,
                           lambda: self._manager.isolate(target, profile))

    async def _uuid_of(self, guest: str) -> str:
        """The UUID of a guest svirtd does not isolate yet, asked of libvirt (after authorization) for its
        job's Guest; as named when libvirt cannot tell (the job then fails with libvirt's answer)."""
        if looks_like_uuid(guest):
            return guest
        try:
            return (await self._manager.hv.lookup(guest)).uuid
        except errors.SvirtError:
            return guest

    async def _authorized(self, guest: str, action: Action) -> tuple[dict[str, str], str]:
        """(polkit's details, the guest acted on): the caller is checked for exactly the guest it names."""
        details = as_named(await self._manager.identify(guest))
        await self._authz.check(_sender(), action, details, _interactive())
        return details, details.get("guest_uuid", guest)

    async def _in_job(self, operation: str, guest: str, action: Action, details: dict[str, str],
                      work: Callable[[], Awaitable[R]], cancellable: bool = True, cancel_task: bool = False) -> R:
        """work() as a job that watchers see, awaited (a blocking call)."""
        if self.jobs is None:
            return await work()
        _path, task = self.jobs.start(operation, guest, action, details, work, cancellable, cancel_task)
        return await asyncio.shield(task)  # a call given up on does not cut the job short

    def _start(self, operation: str, guest: str, action: Action, details: dict[str, str],
               work: Callable[[], Awaitable[object]], cancellable: bool = True, cancel_task: bool = False) -> str:
        if self.jobs is None:
            raise errors.SvirtError("jobs are not served yet")
        path, _task = self.jobs.start(operation, guest, action, details, work, cancellable, cancel_task)
        return path

    @method()
    @dbus_errors
    async def Release(self, guest: DBusStr) -> None:
        await self.release_guest(guest)

    @method()
    @dbus_errors
    async def StartRelease(self, guest: DBusStr) -> Annotated[str, DBusSignature("o")]:
        details = await self._manager.identify(guest)
        await self._authz.check(_sender(), Action.RELEASE, details, _interactive())
        target = details.get("guest_uuid", guest)
        return self._start("release", target, Action.RELEASE, details, lambda: self._manager.release(target),
                           cancellable=False)

    async def release_guest(self, guest: str) -> None:
        """Release, authorized for the caller of the message being handled (Manager1 or Guest1)."""
        details = await self._manager.identify(guest)
        await self._authz.check(_sender(), Action.RELEASE, details, _interactive())
        # The guest polkit was asked about, not whatever the name means after the check (which may
        # wait minutes for a password).
        target = details.get("guest_uuid", guest)
        await self._in_job("release", target, Action.RELEASE, details, lambda: self._manager.release(target),
                           cancellable=False)

    @method()
    @dbus_errors
    async def GetGuest(self, guest: DBusStr) -> Annotated[str, DBusSignature("o")]:
        uuid = (await self._manager.identify(guest)).get("guest_uuid")
        path = self.guests.path_of(uuid) if uuid is not None and self.guests is not None else None
        if path is None:
            raise errors.NoSuchGuest(f"guest {guest!r} is not isolated by svirtd "
                                     "(`svirtctl list` shows those that are)")
        return path

    @method()
    @dbus_errors
    async def Query(self, guest: DBusStr) -> AssignmentDict:
        report = await self._manager.query(guest)
        return self._report(report, raw=await self._may_read_audit(report))

    def _report(self, report: GuestReport, raw: bool = False) -> dict[str, Variant]:
        """raw: include the denials' raw audit records (pids, inodes, commands of both guests' qemu)."""
        history = self._history(report)
        if not history:
            return self._without_denials(report)
        out = report_to_dbus(report)
        out["denials"] = Variant("aa{sv}", [denial_to_dbus(e, raw) for e in history])
        return out

    def _without_denials(self, report: GuestReport) -> dict[str, Variant]:
        """The reply of a guest with no denial, built once per report (the manager keeps a report object
        while it is true). Never changed by callers: they copy it to add keys."""
        kept = self._replies.get(report.assignment.uuid)
        if kept is not None and kept[0] is report:
            return kept[1]
        if len(self._replies) >= _VARIANTS_KEPT:
            self._replies.clear()
        out = {**report_to_dbus(report), "denials": _NO_DENIALS}
        self._replies[report.assignment.uuid] = (report, out)
        return out

    def answer_kept(self, msg: Message) -> Message | None:
        """Bus message handler: Query, and the hook's PrepareStart of a guest with everything in place,
        answered in the loop turn their call arrived in (no task, no thread) from what the manager keeps
        while it is still true, with the same reply as the methods'. Anything else (None) goes to the
        method: a report not kept, a denial to authorize, a caller whose uid the bus was not asked yet."""
        member = msg.member
        if member not in ("Query", "PrepareStart") or msg.message_type is not MessageType.METHOD_CALL \
                or msg.signature != "s" or msg.interface != INTERFACE or msg.path != OBJECT_PATH \
                or msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return None
        try:
            return self._kept_query(msg) if member == "Query" else self._kept_start(msg)
        except Exception:  # the method answers it, with its error handling
            log.exception("the kept answer to %s failed", member)
            return None

    def _kept_query(self, msg: Message) -> Message | None:
        try:
            report = self._manager.kept_report(msg.body[0])
        except errors.NoSuchGuest as exc:  # what the method would answer (a burst's guests not isolated yet)
            return Message.new_error(msg, *error_name(exc))
        if report is None or self._history(report):
            return None
        return Message.new_method_return(msg, "a{sv}", [self._without_denials(report)])

    def _kept_start(self, msg: Message) -> Message | None:
        if self._authz.known_uid(msg.sender) != 0:  # only root (the hook): see PrepareStart
            return None
        started = self._manager.kept_start(msg.body[0])
        try:
            report = self._manager.kept_report(started.uuid) if started is not None else None
        except errors.NoSuchGuest:  # its row went since: the method sees what to do
            return None
        if report is None:
            return None
        return Message.new_method_return(msg, "a{sv}", [{**self._report(report, raw=True), "confined": _TRUE}])

    def _history(self, report: GuestReport) -> list[DenialEvent]:
        return self._denials.history(report.assignment.uuid) if self._denials is not None else []

    async def _may_read_audit(self, report: GuestReport) -> bool:
        """Root, or polkit's org.svirt.manager1.audit for this guest (never asks for a password).
        Asked only when there is a record to show."""
        if not self._history(report):
            return False
        a = report.assignment
        return await self._authz.permits(_sender(), Action.AUDIT, {"guest_uuid": a.uuid, "guest_name": a.name})

    @method()
    @dbus_errors
    async def PrepareStart(self, domain_xml: DBusStr) -> AssignmentDict:
        # The bus policy lets only root send it; the uid is asked of the bus once per connection.
        if not await self._authz.is_root(_sender()):
            raise errors.AccessDenied("only root (the libvirt hook) may call PrepareStart")
        assignment = await self._manager.prepare_start(domain_xml)
        if assignment is None:
            return {"confined": Variant("b", False)}
        return {**self._report(await self._manager.query(assignment.uuid), raw=True), "confined": Variant("b", True)}

    @method()
    @dbus_errors
    async def HookEvent(self, operation: DBusStr, xml_file: DBusStr) -> Annotated[list[Any], DBusSignature("bs")]:
        await require_root(self._authz.bus, _sender(), "HookEvent")
        xml = hook_spool.read_spooled(self._spool, xml_file)
        if operation == "prepare":
            confined = await self._manager.prepare_start(xml)
            return [True, "confined" if confined is not None else "unconfined"]
        if operation == "start":
            try:
                await self._manager.start_check(xml)
            except errors.ResourceConflict as exc:  # a pair two guests would share: never started
                return [False, str(exc)]
            return [True, ""]
        if operation in ("migrate", "restore"):
            rewritten = await self._manager.rewrite_incoming(xml)
            if rewritten is not None:
                hook_spool.write_rewritten(xml_file, rewritten)
            return [True, "rewritten" if rewritten is not None else ""]
        raise errors.InvalidArgument(f"unknown hook operation {operation!r} (prepare, start, migrate, restore)")

    @method()
    @dbus_errors
    async def GuestStopped(self, guest: DBusStr) -> None:
        await require_root(self._authz.bus, _sender(), "GuestStopped")
        await self._manager.guest_stopped(guest)

    @method()
    @dbus_errors
    async def Verify(self) -> AssignmentDict:
        return verify_to_dbus(await self._verified())

    @method()
    @dbus_errors
    async def StartVerify(self) -> Annotated[str, DBusSignature("o")]:
        sender = _sender()
        await self._authz.check(sender, Action.VERIFY, {}, _interactive())
        new = await self._authz.is_root(sender)
        return self._start("verify", "", Action.VERIFY, {}, lambda: self._verify.result(new=new), cancel_task=True)

    @method()
    @dbus_errors
    async def LastVerify(self) -> AssignmentDict:
        await self._authz.check(_sender(), Action.VERIFY, {}, _interactive())
        last = self._manager.last_verify
        if last is None:
            raise errors.SvirtError("no proof was made since svirtd started (StartVerify makes one)")
        return verify_to_dbus(last)

    async def _verified(self) -> VerifyResult:
        sender = _sender()
        await self._authz.check(sender, Action.VERIFY, {}, _interactive())
        # Root (who may just have fixed a label) gets a new proof, or the one running; others may get
        # one up to a few seconds old: a loop of calls costs at most one proof every few seconds.
        new = await self._authz.is_root(sender)
        return await self._in_job("verify", "", Action.VERIFY, {}, lambda: self._verify.result(new=new),
                                  cancel_task=True)

    async def verify_guest(self, uuid: str) -> dict[str, Variant]:
        """Guest1.Verify: the proof, this guest's part of it."""
        whole = verify_to_dbus(await self._verified())
        mine = [v for v in whole["violations"].value
                if uuid in (v["subject_uuid"].value, v["owner_uuid"].value)]
        return {"ok": Variant("b", not mine), "policy": whole["policy"], "violations": Variant("aa{sv}", mine)}

    @method()
    @dbus_errors
    async def List(self) -> GuestRows:
        return [list(row) for row in self._manager.list_summary()]

    @method()
    @dbus_errors
    async def ForgetHost(self, host: DBusStr) -> DBusUInt32:
        if not is_host_id(host):  # checked first: a caller's megabytes are no polkit action detail
            raise errors.InvalidArgument(f"{host[:80]!r} is not a host id: {HOST_ID_RULE}")
        await self._authz.check(_sender(), Action.CLUSTER, {"host": host}, _interactive())
        return await self._manager.forget_host(host)

    # -- signals -------------------------------------------------------------------------------

    @signal()
    def Isolated(self, uuid: str, name: str, label: str) -> Annotated[list[str], DBusSignature("sss")]:
        return [uuid, name, label]

    @signal()
    def Denied(self, event: dict[str, Variant]) -> Annotated[dict[str, Variant], DBusSignature("a{sv}")]:
        return event

    @signal()
    def Released(self, uuid: str, name: str) -> Annotated[list[str], DBusSignature("ss")]:
        return [uuid, name]

    @signal()
    def JobRemoved(self, job_id: int, path: str, guest: str, result: str, error_name: str,
                   error_message: str) -> Annotated[list[Any], DBusSignature("uossss")]:
        return [job_id, path, guest, result, error_name, error_message]

    # -- properties ----------------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Enforcing(self) -> DBusBool:
        return self._enforcing()

    @dbus_property(access=PropertyAccess.READ)
    def CategoriesFree(self) -> DBusUInt32:
        return self._manager.allocator.free

    @dbus_property(access=PropertyAccess.READ)
    def CategoriesTotal(self) -> DBusUInt32:
        return self._manager.allocator.total

    @dbus_property(access=PropertyAccess.READ)
    def LibvirtConnected(self) -> DBusBool:
        return self._connected()

    @dbus_property(access=PropertyAccess.READ)
    def ClusterState(self) -> DBusStr:
        return self._cluster_state() if self._cluster_state is not None else "local"

    @dbus_property(access=PropertyAccess.READ)
    def AuditStats(self) -> Annotated[dict[str, int], DBusSignature("a{st}")]:
        return self._audit_stats() if self._audit_stats is not None else {}

    def publish_changes(self) -> None:
        """PropertiesChanged for the properties that change without a call (libvirt connection, the
        host's enforcing mode, audit counters): svirtd looks every second (sd_notify's loop)."""
        now = {"LibvirtConnected": self._connected(), "Enforcing": self._enforcing(),
               "AuditStats": self._audit_stats() if self._audit_stats is not None else {}}
        changed = {k: v for k, v in now.items() if self._published.get(k) != v}
        if changed and self._published:
            self.emit_properties_changed(changed)
        self._published = now

    def denied(self, event: DenialEvent) -> None:
        self.Denied(denial_to_dbus(event, raw=False))  # a signal reaches every listener on the bus

    # -- manager.Listener ----------------------------------------------------------------------

    def isolated(self, assignment: Assignment) -> None:
        label = str(self._manager.process_label(assignment, self._manager.is_tcg(assignment.uuid)))
        self.Isolated(assignment.uuid, assignment.name, label)
        self.emit_properties_changed({"CategoriesFree": self._manager.allocator.free})

    def released(self, uuid: str, name: str) -> None:
        self.Released(uuid, name)
        self.emit_properties_changed({"CategoriesFree": self._manager.allocator.free})

    # -- introspection with docs ---------------------------------------------------------------

    def introspect(self) -> intr.Interface:
        iface = super().introspect()
        members: list[Any] = [*iface.methods, *iface.signals, *iface.properties]
        for member in members:
            doc = DOCS.get(member.name)
            if doc:
                member.annotations[DESCRIPTION] = doc
        for prop in iface.properties:  # all others are sent by publish_changes() or the listener below
            prop.annotations[EMITS] = "const" if prop.name in ("Version", "CategoriesTotal") else "true"
        return iface


def report_to_dbus(report: GuestReport) -> dict[str, Variant]:
    a = report.assignment
    return {
        **_head(a, report.process_label, report.image_label),
        "resources": Variant("aa{sv}", [_resource(r) for r in report.resources]),
        "isolation": Variant("s", report.isolation),
    }


# Query's variants, built once per distinct value (the models are frozen: a value is its own key, so
# nothing is ever stale; a changed row, label or state is a new key). Bounded: cleared when full.
_VARIANTS_KEPT = 1024  # as many as report_cache.KEPT: a reply outlives its report only until cleared
_heads: dict[tuple[Assignment, str, str], dict[str, Variant]] = {}
_resources: dict[ResourceState, dict[str, Variant]] = {}
_NO_DENIALS = Variant("aa{sv}", [])
_TRUE = Variant("b", True)


def _kept(kept: dict[K, dict[str, Variant]], key: K, build: Callable[[], dict[str, Variant]]) -> dict[str, Variant]:
    out = kept.get(key)
    if out is None:
        if len(kept) >= _VARIANTS_KEPT:
            kept.clear()
        out = kept[key] = build()
    return out


def _head(a: Assignment, process_label: str, image_label: str) -> dict[str, Variant]:
    return _kept(_heads, (a, process_label, image_label), lambda: {
        "uuid": Variant("s", a.uuid),
        "name": Variant("s", a.name),
        "label": Variant("s", process_label),
        "image_label": Variant("s", image_label),
        "level": Variant("s", str(a.level)),
        "categories": Variant("au", list(a.level.pair)),
        "profile": Variant("s", a.profile),
        "state": Variant("s", a.state.value),
        "origin": Variant("s", a.origin.value),
        "note": Variant("s", a.note),
        "created": Variant("t", int(a.created)),
        "updated": Variant("t", int(a.updated)),
    })


def _resource(r: ResourceState) -> dict[str, Variant]:
    return _kept(_resources, r, lambda: {
        "path": Variant("s", r.path),
        "device": Variant("s", r.device),
        "kind": Variant("s", r.kind.value),
        "class": Variant("s", r.rclass.value),
        "expected": Variant("s", r.expected),
        "actual": Variant("s", r.actual),
        "status": Variant("s", r.status.value),
        "note": Variant("s", r.note),
        "applier": Variant("s", r.applier.value),
    })


def as_named(details: dict[str, str]) -> dict[str, str]:
    """Authorization details of a guest svirtd does not isolate: the reference as the caller gave it
    (identify() returns only {"guest": ref} then), as guest_uuid or guest_name, so that polkit rules
    can match it. Its other identifier would take a libvirt lookup."""
    ref = details.get("guest")
    if ref is None:
        return details
    return {**details, ("guest_uuid" if looks_like_uuid(ref) else "guest_name"): ref}


def denial_to_dbus(event: DenialEvent, raw: bool) -> dict[str, Variant]:
    """raw: the audit record as received; "" for callers that may not read it."""
    a = event.attribution
    rec = a.record
    return {
        "time": Variant("d", event.at),
        "source_uuid": Variant("s", a.source.uuid if a.source else ""),
        "source_name": Variant("s", a.source.name if a.source else ""),
        "target_uuid": Variant("s", a.target.uuid if a.target else ""),
        "target_name": Variant("s", a.target.name if a.target else ""),
        "permissions": Variant("as", list(rec.permissions)),
        "tclass": Variant("s", rec.tclass),
        "path": Variant("s", rec.path),
        "scontext": Variant("s", rec.scontext),
        "tcontext": Variant("s", rec.tcontext),
        "explanation": Variant("s", event.explanation.text),
        "command": Variant("s", event.explanation.command),
        "raw": Variant("s", rec.raw if raw else ""),
        "suppressed": Variant("u", event.suppressed),
    }


def verify_to_dbus(result: VerifyResult) -> dict[str, Variant]:
    proof = result.proof
    violations = [
        {
            "kind": Variant("s", v.kind),
            "subject": Variant("s", v.subject_name),
            "subject_uuid": Variant("s", v.subject_uuid),
            "owner": Variant("s", v.owner_name),
            "owner_uuid": Variant("s", v.owner_uuid),
            "path": Variant("s", v.path),
            "label": Variant("s", v.label),
            "permission": Variant("s", v.permission),
            "verdict": Variant("s", v.verdict),
            "message": Variant("s", v.message),
        }
        for v in proof.violations
    ]
    return {
        "ok": Variant("b", proof.ok),
        "policy": Variant("s", result.policy),
        "guests": Variant("u", proof.subjects),
        "resources": Variant("u", proof.objects),
        "ordered_pairs": Variant("u", proof.ordered_pairs),
        "checks": Variant("u", proof.checks),
        "violations": Variant("aa{sv}", violations),
    }


async def export(bus: MessageBus, iface: ManagerInterface) -> None:
    """Serve the interface and own the well-known name (fail if somebody else owns it)."""
    bus.add_message_handler(capture_message)
    bus.add_message_handler(iface.answer_kept)  # after capture_message, which never answers
    bus.export(OBJECT_PATH, iface)
    iface.jobs = Jobs(bus, iface._authz, iface.JobRemoved, _sender, _interactive)
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise RuntimeError(f"{BUS_NAME} is already owned by another process (is svirtd already running?)")
