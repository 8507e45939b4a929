"""One D-Bus object per isolated guest, as systemd-machined does: /org/svirt/Manager/guest/<escaped uuid>
with org.svirt.Guest1, under the org.freedesktop.DBus.ObjectManager of /org/svirt/Manager.

A client (virt-manager, cockpit) watches one guest's object instead of polling Query; every property
emits PropertiesChanged when the table changes (the store tells us, see Store.observer), and guests
coming and going are InterfacesAdded / InterfacesRemoved on the manager's path. Properties are served
from a snapshot taken when the guest changed, so GetManagedObjects over 1,000 guests reads no file and
no table: what a resource carries on disk right now stays Query's (and Verify's) job.

The objects are not dbus-fast ServiceInterfaces: one message handler answers for the whole subtree
(Properties, Introspect, Release, Verify, the child nodes) from one small snapshot per guest, and builds
each reply when asked. An exported ServiceInterface with its prebuilt variants cost ~6 KB a guest, 60 MB
at 10,000 guests (issue 19). What a caller sees, errors included, is what dbus-fast answered for them.
"""

import asyncio
import logging
import string
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.constants import ArgDirection, ErrorType, PropertyAccess
from dbus_fast.service import ServiceInterface

from .dbus_annotate import annotate
from .dbus_errors import dbus_errors
from .dbus_jobs import JOB_PREFIX, JobObject
from .dbus_socket import make_patient
from .models import Assignment

if TYPE_CHECKING:
    from .dbus_iface import ManagerInterface
    from .manager import Manager

log = logging.getLogger(__name__)

GUEST_INTERFACE = "org.svirt.Guest1"
MANAGER_PATH = "/org/svirt/Manager"
GUEST_ROOT = f"{MANAGER_PATH}/guest"
GUEST_PREFIX = f"{GUEST_ROOT}/"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
# The standard interfaces dbus-fast serves on every object: they have no properties.
STANDARD = (PROPERTIES, INTROSPECTABLE, "org.freedesktop.DBus.Peer", OBJECT_MANAGER)
PROPERTY_METHODS = {"Get": "ss", "Set": "ssv", "GetAll": "s"}
MANAGED = "a{oa{sa{sv}}}"

EXPORT_CHUNK = 100  # guests exported per turn of the event loop at start

GUEST_DOCS: dict[str, str] = {
    "Name": "The guest's libvirt name.",
    "UUID": "The guest's UUID: what its pair is bound to.",
    "Level": "The guest's MCS level (s0:cA,cB), unique among the guests on this host.",
    "Label": "The process label its qemu runs with.",
    "ImageLabel": "The label its private files carry.",
    "Profile": "The containment profile (default, nosmtp, nonet).",
    "State": "running, paused or shutoff, as libvirt last said.",
    "Origin": "How the guest came to be isolated: auto (libvirt event), api (Isolate), hook, adopted.",
    "Isolation": "The last proof's verdict about this guest (Verify), or why there is none yet.",
    "Note": "Anything svirtd wants an admin to know about this guest (a remapped pair, a pending release).",
    "Resources": "What the guest holds: (path, device, class, expected label, applier: svirtd or libvirt). The "
                 "labels these carry on disk right now: Query.",
    "Release": "As org.svirt.Manager1.Release for this guest.",
    "Verify": "Prove isolation (as org.svirt.Manager1.Verify) and return this guest's part: ok and its "
              "violations.",
}
# Guest1's methods: in-signature (none take arguments), out-signature.
METHODS: dict[str, str] = {"Release": "", "Verify": "a{sv}"}


def escape_label(text: str) -> str:
    """systemd's bus_label_escape: [A-Za-z0-9] stay (a leading digit does not), the rest is _xx."""
    if not text:
        return "_"
    return "".join(c if c.isascii() and (c.isalpha() or (c.isdigit() and i > 0)) else f"_{ord(c):02x}"
                   for i, c in enumerate(text))


def unescape_label(label: str) -> str | None:
    """escape_label's inverse; None for a label it cannot have made (the caller checks it round-trips)."""
    out: list[str] = []
    i = 0
    while i < len(label):
        if label[i] != "_":
            out.append(label[i])
            i += 1
            continue
        code = label[i + 1:i + 3]
        if len(code) != 2 or not all(c in string.hexdigits for c in code):
            return None
        out.append(chr(int(code, 16)))
        i += 3
    return "".join(out)


def guest_path(uuid: str) -> str:
    return GUEST_PREFIX + escape_label(uuid)


@dataclass(frozen=True, slots=True)
class GuestView:
    """Every property of a guest's object, as of its last change (slots: 10,000 of these are kept)."""

    Name: str
    UUID: str
    Level: str
    Label: str
    ImageLabel: str
    Profile: str
    State: str
    Origin: str
    Isolation: str
    Note: str
    Resources: tuple[tuple[str, str, str, str, str], ...]

    def value(self, name: str) -> Any:
        """A property's value as D-Bus carries it."""
        if name == "Resources":
            return [list(r) for r in self.Resources]
        return getattr(self, name)

    def variant(self, name: str) -> Variant:
        return Variant(SIGNATURES[name], self.value(name))

    def variants(self) -> dict[str, Variant]:
        return {name: self.variant(name) for name in SIGNATURES}

    def changed(self, old: "GuestView") -> list[str]:
        return [name for name in SIGNATURES if getattr(old, name) != getattr(self, name)]


SIGNATURES: dict[str, str] = {f.name: "a(sssss)" if f.name == "Resources" else "s" for f in fields(GuestView)}


def guest_interface() -> intr.Interface:
    """org.svirt.Guest1's introspection, with its docs (what every guest's Introspect shows)."""
    methods = [intr.Method(name, out_args=[intr.Arg(out, ArgDirection.OUT)] if out else [])
               for name, out in sorted(METHODS.items())]
    properties = [intr.Property(name, sig, PropertyAccess.READ) for name, sig in sorted(SIGNATURES.items())]
    return annotate(intr.Interface(GUEST_INTERFACE, methods=methods, properties=properties), GUEST_DOCS,
                    const=("UUID",))


def _error(msg: Message, kind: ErrorType, text: str) -> Message:
    return Message.new_error(msg, kind, text)


def _unknown_method(msg: Message) -> Message:
    return _error(msg, ErrorType.UNKNOWN_METHOD,
                  f'{msg.interface}.{msg.member} with signature "{msg.signature}" could not be found')


def _expects_reply(msg: Message) -> bool:
    return not msg.flags & MessageFlag.NO_REPLY_EXPECTED


class GuestObjects:
    """The guests' objects, in step with svirtd's table: one snapshot per isolated guest, and the bus message
    handler that serves them."""

    def __init__(self, bus: MessageBus, manager: "Manager", manager_iface: "ManagerInterface") -> None:
        self._bus = bus
        self._manager = manager
        self._iface = manager_iface
        self._views: dict[str, GuestView] = {}  # by UUID
        self._built: dict[str, tuple[GuestView, dict[str, dict[str, Variant]]]] = {}  # see _guests
        self._interface = guest_interface()
        self._pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._exporting: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Follow the table's changes, and export every guest in it: the first EXPORT_CHUNK now, the others
        a chunk per turn of the loop (the bus answers and the reconcile with libvirt go on meanwhile; a
        guest that changes first is exported by its change)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._bus.add_message_handler(self.handle)
        self._manager.store.observer = self.changed
        self._manager.on_verified = self.all_changed
        uuids = [row[0] for row in self._manager.store.summary_rows()]
        self._export(uuids[:EXPORT_CHUNK])
        if len(uuids) > EXPORT_CHUNK:
            self._exporting = asyncio.create_task(self._export_rest(uuids[EXPORT_CHUNK:]), name="export-guests")

    async def _export_rest(self, uuids: list[str]) -> None:
        for i in range(0, len(uuids), EXPORT_CHUNK):
            await asyncio.sleep(0)
            self._export(uuids[i:i + EXPORT_CHUNK])

    def _export(self, uuids: list[str]) -> None:
        for uuid in uuids:
            if uuid in self._views:  # exported meanwhile by a change
                continue
            try:
                self._sync(uuid)
            except Exception:  # one guest's object must not stop the others'
                log.exception("cannot export the bus object of guest %s", uuid)

    def path_of(self, uuid: str) -> str | None:
        return guest_path(uuid) if uuid in self._views else None

    # -- the table's changes --------------------------------------------------------------------

    def changed(self, uuid: str) -> None:
        """A guest's row or claims changed (from any thread): its object is brought up to date on the
        loop, once per burst of changes (an isolation writes its row and claims several times)."""
        if threading.get_ident() != self._thread:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.changed, uuid)
            return
        if not self._pending and self._loop is not None:
            self._loop.call_soon(self._flush)
        self._pending.add(uuid)

    def all_changed(self) -> None:
        for uuid in list(self._views):
            self.changed(uuid)

    def _flush(self) -> None:
        pending, self._pending = self._pending, set()
        for uuid in pending:
            try:
                self._sync(uuid)
            except Exception:  # one guest's object must not stop the others'
                log.exception("cannot update the bus object of guest %s", uuid)

    def _sync(self, uuid: str) -> None:
        a = self._manager.store.get(uuid)
        old = self._views.get(uuid)
        path = guest_path(uuid)
        if a is None:
            if old is not None:
                del self._views[uuid]
                self._signal(MANAGER_PATH, OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, [GUEST_INTERFACE]])
            return
        view = self._views[uuid] = self._view(a)
        if old is None:
            self._signal(MANAGER_PATH, OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                         [path, {GUEST_INTERFACE: view.variants()}])
            return
        if changes := view.changed(old):
            self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                         [GUEST_INTERFACE, {name: view.variant(name) for name in changes}, []])

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self._bus.connected:
            self._bus.send(Message.new_signal(path=path, interface=interface, member=member, signature=signature,
                                              body=body))

    def _view(self, a: Assignment) -> GuestView:
        spec = self._manager.spec
        resources = tuple((c.path, c.device, c.rclass.value, c.expected, c.applier.value)
                          for c in self._manager.store.claims_for(a.uuid))
        # Interned: the same few profiles and verdicts, once for all guests rather than once each.
        return GuestView(Name=a.name, UUID=a.uuid, Level=str(a.level),
                         Label=str(self._manager.process_label(a, self._manager.is_tcg(a.uuid))),
                         ImageLabel=str(spec.image_label(a.level)), Profile=sys.intern(a.profile),
                         State=a.state.value, Origin=a.origin.value,
                         Isolation=sys.intern(self._manager.isolation_status(a.uuid)), Note=sys.intern(a.note),
                         Resources=resources)

    # -- the bus ----------------------------------------------------------------------------------

    def handle(self, msg: Message) -> Message | bool | None:
        """Bus message handler for the subtree: a reply, True (answered later, or not at all: no reply
        expected), or None (not ours: dbus-fast answers, as for any path with no object)."""
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        reply = self._answer(msg)
        if reply is None or isinstance(reply, bool):
            return reply
        return reply if _expects_reply(msg) else True

    def _answer(self, msg: Message) -> Message | bool | None:
        path = msg.path or ""
        if msg.member == "GetManagedObjects" and msg.interface in (OBJECT_MANAGER, None):
            return self._managed_objects(msg)
        if msg.interface == INTROSPECTABLE and msg.member == "Introspect" and not msg.signature:
            if path in (MANAGER_PATH, GUEST_ROOT) or self._view_at(path) is not None:
                return Message.new_method_return(msg, "s", [self._introspect(path).tostring()])
            return None
        view = self._view_at(path)
        if view is None:
            return None
        if msg.interface == PROPERTIES:
            return self._properties(msg, view)
        if msg.interface in (GUEST_INTERFACE, None) and msg.member in METHODS and not msg.signature:
            self._call(msg, view.UUID)
            return True
        return _unknown_method(msg) if msg.interface == GUEST_INTERFACE else None

    def _view_at(self, path: str) -> GuestView | None:
        if not path.startswith(GUEST_PREFIX):
            return None
        uuid = unescape_label(path[len(GUEST_PREFIX):])
        view = self._views.get(uuid) if uuid is not None else None
        return view if view is not None and guest_path(view.UUID) == path else None  # one path per guest

    def _introspect(self, path: str) -> intr.Node:
        if path == MANAGER_PATH:  # dbus-fast's node (the manager and its jobs), and the guests' parent
            node: intr.Node = self._bus._introspect_export_path(path)
            if self._views and not any(child.name == "guest" for child in node.nodes):
                node.nodes.append(intr.Node("guest"))
            return node
        if path == GUEST_ROOT:
            node = intr.Node(path)
            node.nodes = [intr.Node(escape_label(uuid)) for uuid in self._views]
            return node
        node = intr.Node.default(path)
        node.interfaces.append(self._interface)
        return node

    def _properties(self, msg: Message, view: GuestView) -> Message:
        """org.freedesktop.DBus.Properties of one guest: what dbus-fast answers for a read-only interface."""
        if PROPERTY_METHODS.get(msg.member or "") != msg.signature:
            return _error(msg, ErrorType.UNKNOWN_METHOD, f"properties interface doesn't have method "
                                                         f'"{msg.member}" with signature "{msg.signature}"')
        interface = msg.body[0]
        if interface == "":
            return _error(msg, ErrorType.NOT_SUPPORTED,
                          "getting and setting properties with an empty interface string is not supported yet")
        if interface != GUEST_INTERFACE:
            if interface not in STANDARD:
                return _error(msg, ErrorType.UNKNOWN_INTERFACE,
                              f'could not find an interface "{interface}" at path: "{msg.path}"')
            if msg.member == "GetAll":
                return Message.new_method_return(msg, "a{sv}", [{}])
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [view.variants()])
        name = msg.body[1]
        if interface != GUEST_INTERFACE or name not in SIGNATURES:
            return _error(msg, ErrorType.UNKNOWN_PROPERTY, f'interface "{interface}" does not have property "{name}"')
        if msg.member == "Set":
            return _error(msg, ErrorType.PROPERTY_READ_ONLY, "the property is readonly")
        return Message.new_method_return(msg, "v", [view.variant(name)])

    def _managed_objects(self, msg: Message) -> Message | bool | None:
        """GetManagedObjects, answered from the snapshots (dbus-fast's own handler would ask every property
        of every object again); with a wrong signature, on any path, refused as any other method would be."""
        if msg.signature:  # on any path: dbus-fast's own handler (other paths) ignores the signature too
            return _error(msg, ErrorType.UNKNOWN_METHOD, f"{OBJECT_MANAGER}.GetManagedObjects with "
                                                         f'signature "{msg.signature}" could not be found')
        path = msg.path or ""
        if path == MANAGER_PATH:
            body = self._guests()
            if self._iface.jobs is not None:
                body.update(self._iface.jobs.managed())
            return Message.new_method_return(msg, MANAGED, [body])
        if path == GUEST_ROOT:
            return Message.new_method_return(msg, MANAGED, [self._guests()])
        if path == "/" or MANAGER_PATH.startswith(path + "/"):  # an ancestor: dbus-fast's answer, and the guests
            # dbus-fast calls its reply hook, or its send_error: _WithGuests has both.
            self._bus._default_get_managed_objects_handler(msg, cast(Any, _WithGuests(self, msg)))
            return True
        return None  # a guest's path (nothing under it) or another: dbus-fast's answer

    def _guests(self) -> dict[str, Any]:
        """Every guest's interfaces and properties. A guest's Variants are built once per snapshot and kept
        with the very snapshot they come from (a changed guest has a new one): only clients that ask pay
        their memory, and a GetManagedObjects of 1,000 guests builds no Variant twice."""
        built: dict[str, tuple[GuestView, dict[str, dict[str, Variant]]]] = {}
        body: dict[str, Any] = {}
        for uuid, view in self._views.items():
            kept = self._built.get(uuid)
            if kept is None or kept[0] is not view:
                kept = (view, {GUEST_INTERFACE: view.variants()})
            built[uuid] = kept
            body[guest_path(uuid)] = kept[1]
        self._built = built  # what the guests gone since held goes with it
        return body

    def _call(self, msg: Message, uuid: str) -> None:
        """Release or Verify, answered when done (the context carries the message: authorization asks who
        sent it)."""
        work: Callable[[str], Awaitable[Any]] = (self._iface.release_guest if msg.member == "Release"
                                                 else self._iface.verify_guest)
        task = asyncio.create_task(self._reply(msg, dbus_errors(work)(uuid)), name=f"guest-{msg.member}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _reply(self, msg: Message, work: Awaitable[Any]) -> None:
        out = METHODS[msg.member or ""]
        try:
            result = await work
            reply = Message.new_method_return(msg, out, [result] if out else [])
        except DBusError as exc:  # dbus_errors made every failure one
            reply = Message.new_error(msg, exc.type, exc.text)
        if _expects_reply(msg) and self._bus.connected:
            self._bus.send(reply)


class _WithGuests:
    """The reply hook given to dbus-fast's GetManagedObjects on an ancestor path: its answer plus the guests."""

    def __init__(self, guests: GuestObjects, msg: Message) -> None:
        self._guests, self._msg = guests, msg

    def __call__(self, reply: Message) -> None:
        body = {**reply.body[0], **self._guests._guests()}
        self._send(Message.new_method_return(self._msg, MANAGED, [body]))

    def send_error(self, exc: Exception) -> None:
        text = exc.text if isinstance(exc, DBusError) else "GetManagedObjects failed"
        self._send(Message.new_error(self._msg, exc.type if isinstance(exc, DBusError) else ErrorType.FAILED, text))

    def _send(self, reply: Message) -> None:
        bus = self._guests._bus
        if _expects_reply(self._msg) and bus.connected:
            bus.send(reply)


class ObjectManagerBus(MessageBus):
    """InterfacesAdded / InterfacesRemoved of job objects are sent from the object manager's path, as the
    ObjectManager specification says (dbus-fast sends them from the object's own path, where clients of
    /org/svirt/Manager do not listen); the guests' are sent so by GuestObjects. Its socket survives a burst
    that fills it (dbus_socket)."""

    async def connect(self) -> "ObjectManagerBus":
        await super().connect()
        make_patient(self)
        return self

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if not (path.startswith(JOB_PREFIX) and isinstance(interface, JobObject)):
            super()._emit_interface_added(path, interface)
            return
        if not self.connected:
            return
        self.send(Message.new_signal(path=MANAGER_PATH, interface=OBJECT_MANAGER, member="InterfacesAdded",
                                     signature="oa{sa{sv}}", body=[path, {interface.name: interface.variants}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not path.startswith(JOB_PREFIX):
            super()._emit_interface_removed(path, removed_interfaces)
            return
        if not self.connected:
            return
        self.send(Message.new_signal(path=MANAGER_PATH, interface=OBJECT_MANAGER, member="InterfacesRemoved",
                                     signature="oas", body=[path, removed_interfaces]))
