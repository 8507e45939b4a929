"""Hostile domain definitions (issue 19), shared by the unit tests of the parser and the bus fuzzing."""

from __future__ import annotations

from collections.abc import Callable
from xml.sax.saxutils import quoteattr

HOSTILE_UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
HEAD = f"<domain type='kvm'><name>web01</name><uuid>{HOSTILE_UUID}</uuid>"


def billion_laughs() -> str:
    ents = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    dtd = f'<!DOCTYPE domain [<!ENTITY l0 "lol">{ents}]>'
    return f'<?xml version="1.0"?>{dtd}{HEAD}<description>&l9;</description></domain>'


def external_entity() -> str:
    return f'<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/shadow">]>{HEAD}<description>&x;</description></domain>'


def internal_entity() -> str:  # harmless by itself: refused because libvirt never writes a DTD
    return f'<!DOCTYPE domain [<!ENTITY n "web02">]>{HEAD}<description>&n;</description></domain>'


def bare_doctype() -> str:
    return f"<!DOCTYPE domain>{HEAD}</domain>"


def parameter_entity() -> str:
    return f'<!DOCTYPE domain [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>{HEAD}</domain>'


def disks(n: int) -> str:
    one = ("<disk type='file' device='disk'><source file='/var/lib/libvirt/images/d{i}.img'/>"
           "<target dev='vd{i}'/></disk>")
    return HEAD + "<devices>" + "".join(one.format(i=i) for i in range(n)) + "</devices></domain>"


def huge(size: int = 10 * 1024 * 1024) -> str:
    return HEAD + "<description>" + "x" * size + "</description></domain>"


def deep(depth: int = 10_000) -> str:
    return HEAD + "<metadata>" + "<a>" * depth + "</a>" * depth + "</metadata></domain>"


HOSTILE_DOCS: dict[str, Callable[[], str]] = {
    "billion laughs": billion_laughs,
    "external entity": external_entity,
    "parameter entity": parameter_entity,
    "internal entity": internal_entity,
    "bare DOCTYPE": bare_doctype,
    "10 MiB": huge,
    "10,000 disks": lambda: disks(10_000),
    "10,000 deep": deep,
}


def domain_doc(name: str, uuid: str, disk: str) -> str:
    """A well-formed definition naming some guest and some file: what a hostile hook caller would send."""
    return (f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><devices><disk type='file' device='disk'>"
            f"<source file={quoteattr(disk)}/><target dev='vda'/></disk></devices></domain>")
