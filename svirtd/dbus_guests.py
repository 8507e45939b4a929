"""One D-Bus object per isolated guest, as systemd-machined does: /org/svirt/Manager/guest/<escaped uuid>
with org.svirt.Guest1, under the org.freedesktop.DBus.ObjectManager of /org/svirt/Manager.

A client (virt-manager, cockpit) watches one guest's object instead of polling Query; every property
emits PropertiesChanged when the table changes (the store tells us, see Store.observer), and guests
coming and going are InterfacesAdded / InterfacesRemoved on the manager's path. Properties are served
from a snapshot taken when the guest changed, so GetManagedObjects over 1,000 guests reads no file and
no table: what a resource carries on disk right now stays Query's (and Verify's) job.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the annotations.
import asyncio
import logging
import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Annotated, Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr
from dbus_fast.constants import ErrorType, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

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
GUEST_PREFIX = f"{MANAGER_PATH}/guest/"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
DESCRIPTION = "org.freedesktop.DBus.Description"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"

EXPORT_CHUNK = 100  # guest objects exported per turn of the event loop at start

ResourceRows = Annotated[list[list[str]], DBusSignature("a(sssss)")]

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


def escape_label(text: str) -> str:
    """systemd's bus_label_escape: [A-Za-z0-9] stay (a leading digit does not), the rest is _xx."""
    if not text:
        return "_"
    return "".join(c if c.isascii() and (c.isalpha() or (c.isdigit() and i > 0)) else f"_{ord(c):02x}"
                   for i, c in enumerate(text))


def guest_path(uuid: str) -> str:
    return GUEST_PREFIX + escape_label(uuid)


@dataclass(frozen=True)
class GuestView:
    """Every property of a guest's object, as of its last change."""

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

    def as_dbus(self) -> dict[str, Any]:
        return {f.name: [list(r) for r in self.Resources] if f.name == "Resources" else getattr(self, f.name)
                for f in fields(self)}


class GuestObject(ServiceInterface):
    def __init__(self, view: GuestView, manager_iface: "ManagerInterface") -> None:
        super().__init__(GUEST_INTERFACE)
        self._iface = manager_iface
        self.view = view

    @property
    def view(self) -> GuestView:
        return self._view

    @view.setter
    def view(self, view: GuestView) -> None:
        self._view = view
        # Built once per change, not per GetManagedObjects: 1,000 guests are served from these.
        self.variants = {name: Variant("a(sssss)" if name == "Resources" else "s", value)
                         for name, value in view.as_dbus().items()}

    @method()
    @dbus_errors
    async def Release(self) -> None:
        await self._iface.release_guest(self.view.UUID)

    @method()
    @dbus_errors
    async def Verify(self) -> Annotated[dict[str, Variant], DBusSignature("a{sv}")]:
        return await self._iface.verify_guest(self.view.UUID)

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self.view.Name

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.view.UUID

    @dbus_property(access=PropertyAccess.READ)
    def Level(self) -> DBusStr:
        return self.view.Level

    @dbus_property(access=PropertyAccess.READ)
    def Label(self) -> DBusStr:
        return self.view.Label

    @dbus_property(access=PropertyAccess.READ)
    def ImageLabel(self) -> DBusStr:
        return self.view.ImageLabel

    @dbus_property(access=PropertyAccess.READ)
    def Profile(self) -> DBusStr:
        return self.view.Profile

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.view.State

    @dbus_property(access=PropertyAccess.READ)
    def Origin(self) -> DBusStr:
        return self.view.Origin

    @dbus_property(access=PropertyAccess.READ)
    def Isolation(self) -> DBusStr:
        return self.view.Isolation

    @dbus_property(access=PropertyAccess.READ)
    def Note(self) -> DBusStr:
        return self.view.Note

    @dbus_property(access=PropertyAccess.READ)
    def Resources(self) -> ResourceRows:
        return [list(r) for r in self.view.Resources]

    def introspect(self) -> intr.Interface:
        iface = super().introspect()
        members: list[Any] = [*iface.methods, *iface.properties]
        for member in members:
            if member.name in GUEST_DOCS:
                member.annotations[DESCRIPTION] = GUEST_DOCS[member.name]
        for prop in iface.properties:
            prop.annotations[EMITS] = "const" if prop.name == "UUID" else "true"
        return iface


class GuestObjects:
    """Keeps one GuestObject per isolated guest exported, in step with svirtd's table."""

    def __init__(self, bus: MessageBus, manager: "Manager", manager_iface: "ManagerInterface") -> None:
        self._bus = bus
        self._manager = manager
        self._iface = manager_iface
        self._objects: dict[str, GuestObject] = {}
        self._pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._exporting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the table's changes, and export every guest in it: the first EXPORT_CHUNK now, the others
        a chunk per turn of the loop (1,000 objects take ~0.5 s: the bus answers and the reconcile with
        libvirt go on meanwhile; a guest that changes first is exported by its change)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._bus.add_message_handler(self.managed_objects)
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
            if uuid in self._objects:  # exported meanwhile by a change
                continue
            try:
                self._sync(uuid)
            except Exception:  # one guest's object must not stop the others'
                log.exception("cannot export the bus object of guest %s", uuid)

    def managed_objects(self, msg: Message) -> Message | None:
        """Bus message handler: GetManagedObjects on the manager's path, answered from the objects'
        prebuilt variants (dbus-fast's own handler asks every property of every object again); with a
        wrong signature, on any path, refused as any other method would be."""
        if (msg.message_type is not MessageType.METHOD_CALL or msg.member != "GetManagedObjects"
                or msg.interface not in (OBJECT_MANAGER, None)):
            return None
        if msg.signature:  # on any path: dbus-fast's own handler (other paths) ignores the signature too
            return Message.new_error(msg, ErrorType.UNKNOWN_METHOD, f"{OBJECT_MANAGER}.GetManagedObjects with "
                                     f'signature "{msg.signature}" could not be found')
        if msg.path != MANAGER_PATH:
            return None
        body = {guest_path(uuid): {GUEST_INTERFACE: obj.variants} for uuid, obj in self._objects.items()}
        if self._iface.jobs is not None:
            body.update(self._iface.jobs.managed())
        return Message.new_method_return(msg, "a{oa{sa{sv}}}", [body])

    def path_of(self, uuid: str) -> str | None:
        return guest_path(uuid) if uuid in self._objects else None

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
        for uuid in list(self._objects):
            self.changed(uuid)

    def _flush(self) -> None:
        pending, self._pending = self._pending, set()
        for uuid in pending:
            try:
                self._sync(uuid)
            except Exception:  # one guest's object must not stop the others'
                log.exception("cannot update the bus object of guest %s", uuid)

    def _sync(self, uuid: str, assignment: Assignment | None = None) -> None:
        a = assignment or self._manager.store.get(uuid)
        obj = self._objects.get(uuid)
        if a is None:
            if obj is not None:
                del self._objects[uuid]
                self._bus.unexport(guest_path(uuid), obj)
            return
        view = self._view(a)
        if obj is None:
            obj = self._objects[uuid] = GuestObject(view, self._iface)
            self._bus.export(guest_path(uuid), obj)
            return
        old, obj.view = obj.view.as_dbus(), view
        changes = {k: v for k, v in view.as_dbus().items() if old[k] != v}
        if changes:
            obj.emit_properties_changed(changes)

    def _view(self, a: Assignment) -> GuestView:
        spec = self._manager.spec
        resources = tuple((c.path, c.device, c.rclass.value, c.expected, c.applier.value)
                          for c in self._manager.store.claims_for(a.uuid))
        return GuestView(Name=a.name, UUID=a.uuid, Level=str(a.level),
                         Label=str(self._manager.process_label(a, self._manager.is_tcg(a.uuid))),
                         ImageLabel=str(spec.image_label(a.level)), Profile=a.profile, State=a.state.value,
                         Origin=a.origin.value, Isolation=self._manager.isolation_status(a.uuid), Note=a.note,
                         Resources=resources)


class ObjectManagerBus(MessageBus):
    """InterfacesAdded / InterfacesRemoved of guest (and job) objects are sent from the object manager's path,
    as the ObjectManager specification says (dbus-fast sends them from the object's own path, where
    clients of /org/svirt/Manager do not listen). Its socket survives a burst that fills it (dbus_socket)."""

    async def connect(self) -> "ObjectManagerBus":
        await super().connect()
        make_patient(self)
        return self

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if not (path.startswith((GUEST_PREFIX, JOB_PREFIX)) and isinstance(interface, GuestObject | JobObject)):
            super()._emit_interface_added(path, interface)
            return
        if not self.connected:
            return
        self.send(Message.new_signal(path=MANAGER_PATH, interface=OBJECT_MANAGER, member="InterfacesAdded",
                                     signature="oa{sa{sv}}", body=[path, {interface.name: interface.variants}]))

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if not path.startswith((GUEST_PREFIX, JOB_PREFIX)):
            super()._emit_interface_removed(path, removed_interfaces)
            return
        if not self.connected:
            return
        self.send(Message.new_signal(path=MANAGER_PATH, interface=OBJECT_MANAGER, member="InterfacesRemoved",
                                     signature="oas", body=[path, removed_interfaces]))
