"""The doc and EmitsChangedSignal annotations of svirtd's own interfaces (Guest1, Job1), in one place: what
introspection shows, and what scripts/gen-introspection.py installs for tools."""

from collections.abc import Collection, Mapping
from typing import Any

from dbus_fast import introspection as intr

DESCRIPTION = "org.freedesktop.DBus.Description"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def annotate(iface: intr.Interface, docs: Mapping[str, str], const: Collection[str]) -> intr.Interface:
    """Each documented member gets its Description; each property says whether it emits PropertiesChanged
    ("const" for those in const, which never change while the object exists)."""
    members: list[Any] = [*iface.methods, *iface.properties]
    for member in members:
        if member.name in docs:
            member.annotations[DESCRIPTION] = docs[member.name]
    for prop in iface.properties:
        prop.annotations[EMITS] = "const" if prop.name in const else "true"
    return iface
