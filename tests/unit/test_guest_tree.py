"""The guests' subtree on the bus, its pure parts: paths and their inverse, what a change emits, and Guest1's
introspection (the same XML the per-guest ServiceInterface gave, which data/interfaces also holds)."""

from __future__ import annotations

import uuid as uuidlib

from svirtd.dbus_guests import GUEST_INTERFACE, GuestView, escape_label, guest_interface, unescape_label


def view(**changes: object) -> GuestView:
    fields: dict[str, object] = {"Name": "web", "UUID": "u", "Level": "s0:c1,c2", "Label": "l", "ImageLabel": "i",
                                 "Profile": "default", "State": "shutoff", "Origin": "auto", "Isolation": "",
                                 "Note": "", "Resources": (("/d", "vda", "private", "x", "svirtd"),)}
    return GuestView(**{**fields, **changes})  # type: ignore[arg-type]


def test_every_label_escape_makes_comes_back() -> None:
    for text in [str(uuidlib.uuid4()) for _ in range(50)] + ["0a-b_c", "_", "é", "a b", "9"]:
        assert unescape_label(escape_label(text)) == text


def test_what_escape_never_makes_is_no_label() -> None:
    assert unescape_label("_") is None  # escape_label("") is "_", but no guest has an empty UUID
    assert unescape_label("ab_2") is None and unescape_label("_zz") is None and unescape_label("a_") is None
    # Another spelling of the same text unescapes; the subtree then checks it is the guest's one path.
    assert unescape_label("_2D") == "-" and escape_label("-") != "_2D"


def test_a_change_names_only_the_properties_that_differ() -> None:
    old = view()
    assert view().changed(old) == []
    assert view(State="running", Resources=()).changed(old) == ["State", "Resources"]


def test_variants_carry_every_property_with_its_signature() -> None:
    variants = view().variants()
    assert variants["Resources"].signature == "a(sssss)"
    assert variants["Resources"].value == [["/d", "vda", "private", "x", "svirtd"]]
    assert {v.signature for k, v in variants.items() if k != "Resources"} == {"s"}
    assert len(variants) == 11


def test_guest1_says_what_it_has_and_which_property_never_changes() -> None:
    iface = guest_interface()
    assert iface.name == GUEST_INTERFACE
    assert [m.name for m in iface.methods] == ["Release", "Verify"]
    assert [a.signature for a in iface.methods[1].out_args] == ["a{sv}"] and not iface.methods[0].out_args
    emits = {p.name: p.annotations["org.freedesktop.DBus.Property.EmitsChangedSignal"] for p in iface.properties}
    assert emits.pop("UUID") == "const" and set(emits.values()) == {"true"} and len(emits) == 10
    assert all("org.freedesktop.DBus.Description" in m.annotations for m in iface.methods)
    assert all("org.freedesktop.DBus.Description" in p.annotations for p in iface.properties)
