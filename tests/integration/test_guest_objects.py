"""One object per guest on the bus (issue 15): busctl tree, GetManagedObjects, GetGuest, a client
watching one guest's State, InterfacesAdded/Removed on the manager's path, and annotations saying
which properties emit PropertiesChanged. Real svirtd, real private bus loaded with our policy file,
real libvirtd with real qemu guests."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from svirtd.dbus_guests import escape_label, guest_path
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess, busctl, unwrap_busctl
from testbed.guests import GuestFactory
from tests.conftest import wait_until
from tests.helpers import SignalRecorder, call, run

pytestmark = pytest.mark.integration
NOBODY = 65534
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
StartSvirtd = Callable[..., SvirtdProcess]


def managed(bus: PrivateBus, user: int | None = None) -> dict[str, dict[str, dict[str, object]]]:
    out = busctl(bus.address, "--json=short", "call", "org.svirt.Manager", "/org/svirt/Manager",
                 "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", user=user)
    data: dict[str, dict[str, dict[str, object]]] = unwrap_busctl(json.loads(out.stdout)["data"][0])
    return data


def test_escaping_is_systemds() -> None:
    # sd_bus_path_encode("/org/svirt/Manager/guest", uuid): a leading digit and every non-alnum escaped.
    assert escape_label("0a-b_c") == "_30a_2db_5fc"
    assert escape_label("") == "_"
    assert guest_path("abc") == "/org/svirt/Manager/guest/abc"


def test_one_object_per_guest_listed_and_kept_in_step(bus: PrivateBus, guests: GuestFactory,
                                                      svirtd: StartSvirtd) -> None:
    a, b = guests.new(), guests.new()
    svirtd()
    wait_until(lambda: {guest_path(a.uuid), guest_path(b.uuid)} <= set(managed(bus)), what="both guests' objects")
    tree = busctl(bus.address, "tree", "--list", "org.svirt.Manager").stdout.split()
    assert guest_path(a.uuid) in tree and guest_path(b.uuid) in tree
    # Anyone may read them, as Query: an unprivileged caller lists them too.
    objects = managed(bus, user=NOBODY)
    props = objects[guest_path(a.uuid)]["org.svirt.Guest1"]
    report = run(call(bus, "Query", "s", a.uuid))
    assert props["Name"] == a.name and props["UUID"] == a.uuid
    assert props["Level"] == report["level"] and props["Label"] == report["label"]
    assert props["ImageLabel"] == report["image_label"] and props["State"] == "shutoff"
    held = {r[0]: r for r in props["Resources"]}  # type: ignore[attr-defined]
    assert held[str(a.disk)][3] == report["image_label"] and held[str(a.disk)][4] == "svirtd"
    assert run(call(bus, "GetGuest", "s", a.name)) == guest_path(a.uuid)
    assert run(call(bus, "GetGuest", "s", b.uuid)) == guest_path(b.uuid)

    # A watcher of a's object sees State follow the guest; b's State says nothing meanwhile (its
    # Isolation may change: a proof of isolation can finish in the window and covers every guest).
    with SignalRecorder(bus, f"type='signal',path='{guest_path(a.uuid)}'",
                        f"type='signal',path='{guest_path(b.uuid)}'") as rec:
        guests.virsh("start", a.name)
        wait_until(lambda: any(s.body[1].get("State") == "running" for s in rec.signals("PropertiesChanged")),
                   what="State running on a's object")
        # GetManagedObjects keeps each guest's built properties: never past a change (built before it above).
        assert managed(bus)[guest_path(a.uuid)]["org.svirt.Guest1"]["State"] == "running"
        guests.virsh("destroy", a.name)
        wait_until(lambda: any(s.body[1].get("State") == "shutoff" for s in rec.signals("PropertiesChanged")),
                   what="State shutoff on a's object")
        assert managed(bus)[guest_path(a.uuid)]["org.svirt.Guest1"]["State"] == "shutoff"
        assert all(s.path == guest_path(a.uuid) for s in rec.signals("PropertiesChanged") if "State" in s.body[1])

    # Guests coming and going: InterfacesAdded / InterfacesRemoved on the manager's path.
    with SignalRecorder(bus, "type='signal',interface='org.freedesktop.DBus.ObjectManager'") as rec:
        c = guests.new()
        wait_until(lambda: rec.signals("InterfacesAdded"), what="InterfacesAdded for a new guest")
        added = rec.signals("InterfacesAdded")[0]
        assert added.path == "/org/svirt/Manager" and added.body[0] == guest_path(c.uuid)
        assert added.body[1]["org.svirt.Guest1"]["Name"] == c.name
        run(call(bus, "Release", "s", c.uuid))
        wait_until(lambda: rec.signals("InterfacesRemoved"), what="InterfacesRemoved after Release")
        removed = rec.signals("InterfacesRemoved")[0]
        assert removed.path == "/org/svirt/Manager" and removed.body == [guest_path(c.uuid), ["org.svirt.Guest1"]]
    assert guest_path(c.uuid) not in managed(bus)


def test_guest_release_through_its_object_is_authorized_like_the_managers(bus: PrivateBus, guests: GuestFactory,
                                                                          svirtd: StartSvirtd) -> None:
    a = guests.new()
    svirtd()
    wait_until(lambda: guest_path(a.uuid) in managed(bus), what="a's object")
    denied = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "dbus-send",
                             f"--bus={bus.address}", "--print-reply", "--dest=org.svirt.Manager", guest_path(a.uuid),
                             "org.svirt.Guest1.Release"], capture_output=True, text=True, timeout=60)
    # svirtd's own error, as Manager1.Release gives it (not a generic ServiceError with a traceback).
    assert denied.returncode != 0 and "Error org.freedesktop.DBus.Error.AccessDenied" in denied.stderr, denied.stderr
    busctl(bus.address, "call", "org.svirt.Manager", guest_path(a.uuid), "org.svirt.Guest1", "Release")
    wait_until(lambda: guest_path(a.uuid) not in managed(bus), what="a's object gone after its Release")


def test_every_property_says_whether_it_emits_changes(bus: PrivateBus, guests: GuestFactory,
                                                      svirtd: StartSvirtd) -> None:
    a = guests.new()
    svirtd()
    wait_until(lambda: guest_path(a.uuid) in managed(bus), what="a's object")
    for path, interface in (("/org/svirt/Manager", "org.svirt.Manager1"), (guest_path(a.uuid), "org.svirt.Guest1")):
        xml = busctl(bus.address, "introspect", "--xml-interface", "org.svirt.Manager", path).stdout
        node = ET.fromstring(xml)
        iface = node.find(f"interface[@name='{interface}']")
        assert iface is not None, xml
        props = iface.findall("property")
        assert props
        for prop in props:
            emits = [a.get("value") for a in prop.findall("annotation") if a.get("name") == EMITS]
            assert emits and emits[0] in ("true", "const", "invalidates", "false"), (interface, prop.get("name"))
    manager = busctl(bus.address, "introspect", "--xml-interface", "org.svirt.Manager", "/org/svirt/Manager").stdout
    assert re.search(r'<method name="GetGuest">', manager)
    full = busctl(bus.address, "introspect", "--xml-interface", "org.svirt.Manager", "/org/svirt/Manager").stdout
    assert 'interface name="org.freedesktop.DBus.ObjectManager"' in full, full


async def raw(bus: PrivateBus, path: str, interface: str | None, member: str, signature: str = "",
              *body: object) -> Message:
    """One call on svirtd's object `path`, its reply or error as received."""
    client = await MessageBus(bus_address=bus.address).connect()
    try:
        reply = await client.call(Message(destination="org.svirt.Manager", path=path, interface=interface,
                                          member=member, signature=signature, body=list(body)))
        assert reply is not None
        return reply
    finally:
        client.disconnect()


def error_of(reply: Message) -> str | None:
    return reply.error_name if reply.message_type is MessageType.ERROR else None


def children(bus: PrivateBus, path: str) -> set[str]:
    xml = run(raw(bus, path, "org.freedesktop.DBus.Introspectable", "Introspect")).body[0]
    return {n.attrib["name"] for n in ET.fromstring(xml).findall("node")}


def test_every_standard_call_on_the_subtree_answers_as_for_an_exported_object(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    # The guests' objects are served by one handler (issue 19), not exported one by one: what a client
    # sees must be what dbus-fast answered for an exported read-only object and for a path with none.
    a = guests.new()
    svirtd()
    wait_until(lambda: guest_path(a.uuid) in managed(bus), what="a's object")
    path, props = guest_path(a.uuid), "org.freedesktop.DBus.Properties"
    assert "guest" in children(bus, "/org/svirt/Manager")
    assert escape_label(a.uuid) in children(bus, "/org/svirt/Manager/guest")
    xml = run(raw(bus, path, "org.freedesktop.DBus.Introspectable", "Introspect")).body[0]
    names = {i.attrib["name"] for i in ET.fromstring(xml).findall("interface")}
    assert {"org.svirt.Guest1", props, "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Introspectable"} <= names

    assert run(raw(bus, path, props, "Get", "ss", "org.svirt.Guest1", "Name")).body[0].value == a.name
    everything = run(raw(bus, path, props, "GetAll", "s", "org.svirt.Guest1")).body[0]
    assert set(everything) == {"Name", "UUID", "Level", "Label", "ImageLabel", "Profile", "State", "Origin",
                               "Isolation", "Note", "Resources"}
    assert everything["UUID"].value == a.uuid and everything["Resources"].signature == "a(sssss)"
    assert run(raw(bus, path, props, "GetAll", "s", "org.freedesktop.DBus.Peer")).body[0] == {}
    expected_errors = [
        ((path, props, "Set", "ssv", "org.svirt.Guest1", "Name", Variant("s", "x")), "PropertyReadOnly"),
        ((path, props, "Get", "ss", "org.svirt.Guest1", "Nope"), "UnknownProperty"),
        ((path, props, "Get", "ss", "org.freedesktop.DBus.Peer", "Name"), "UnknownProperty"),
        ((path, props, "Get", "ss", "org.example.Nope", "Name"), "UnknownInterface"),
        ((path, props, "Get", "ss", "", "Name"), "NotSupported"),
        ((path, props, "Get", "s", "org.svirt.Guest1"), "UnknownMethod"),
        ((path, "org.svirt.Guest1", "Release", "s", "x"), "UnknownMethod"),
        ((path, "org.svirt.Guest1", "Nope"), "UnknownMethod"),
        ((path, None, "Introspect"), "UnknownMethod"),  # no interface: only Guest1's methods are looked for
        # A path of no guest, and another spelling of a's (one path per guest): no object there.
        ((guest_path(a.uuid[:-1]), props, "Get", "ss", "org.svirt.Guest1", "Name"), "UnknownObject"),
        ((path.replace("_2d", "_2D", 1), props, "GetAll", "s", "org.svirt.Guest1"), "UnknownObject"),
        ((guest_path(a.uuid[:-1]), "org.svirt.Guest1", "Release"), "UnknownMethod"),
    ]
    for args, error in expected_errors:
        reply = run(raw(bus, *args))  # type: ignore[arg-type]
        assert error_of(reply) == f"org.freedesktop.DBus.Error.{error}", (args, reply.body)
    assert run(raw(bus, path, "org.freedesktop.DBus.Peer", "Ping")).message_type is MessageType.METHOD_RETURN

    # GetManagedObjects from the root and from the guests' parent list a's object too; from its own path,
    # nothing (no object under it).
    for root in ("/", "/org/svirt", "/org/svirt/Manager/guest"):
        objects = run(raw(bus, root, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")).body[0]
        assert objects[path]["org.svirt.Guest1"]["Name"].value == a.name, root
    assert "/org/svirt/Manager" in run(raw(bus, "/", "org.freedesktop.DBus.ObjectManager",
                                           "GetManagedObjects")).body[0]
    assert run(raw(bus, path, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")).body[0] == {}

    # Verify through the object, without an interface named: Guest1's part of the proof.
    verdict = run(raw(bus, path, None, "Verify"))
    assert verdict.message_type is MessageType.METHOD_RETURN and verdict.signature == "a{sv}", verdict.body
    assert set(verdict.body[0]) == {"ok", "policy", "violations"}
