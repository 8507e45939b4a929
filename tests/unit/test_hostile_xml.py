"""Issue 19, hostile input: every pure entry point that parses an untrusted domain definition refuses a
DTD, entity expansion, external entities, oversized documents, too many devices and deep nesting with
InvalidArgument, quickly, before building a tree of it (svirtd/xml_limits.py holds the limits)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import pytest

from svirtd import identity, xml_limits
from svirtd.errors import InvalidArgument
from svirtd.models import Level
from svirtd.resources import parse_domain

UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
HEAD = f"<domain type='kvm'><name>web01</name><uuid>{UUID}</uuid>"


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


HOSTILE: dict[str, Callable[[], str]] = {
    "billion laughs": billion_laughs,
    "external entity": external_entity,
    "parameter entity": parameter_entity,
    "internal entity": internal_entity,
    "bare DOCTYPE": bare_doctype,
    "10 MiB": huge,
    "10,000 disks": lambda: disks(10_000),
    "10,000 deep": deep,
}

UNTRUSTED: dict[str, Callable[[str], object]] = {
    "parse_domain": parse_domain,
    "without_selinux_labels": identity.without_selinux_labels,
    "rewrite_definition": lambda x: identity.rewrite_definition(x, UUID, Level(low=1, high=2), "default", None, None),
    "strip_identity": lambda x: identity.strip_identity(x, Level(low=1, high=2)),
    "chained_filters": lambda x: identity.chained_filters(x, "svirtd-nosmtp"),
}


@pytest.mark.parametrize("entry", UNTRUSTED)
@pytest.mark.parametrize("doc", HOSTILE)
def test_hostile_definition_refused(doc: str, entry: str) -> None:
    text = HOSTILE[doc]()
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(InvalidArgument):
            UNTRUSTED[entry](text)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert took < 2.0, f"{doc} took {took:.2f}s to refuse"
    # Refused without a tree or a copy beyond the document itself (10 MiB text: one encoded copy).
    assert peak < len(text) * 4 + 4 * 1024 * 1024, f"{doc}: peak {peak / 2**20:.1f} MiB"


def test_limits_leave_real_definitions_alone() -> None:
    spec = parse_domain(disks(xml_limits.MAX_DEVICES))
    assert len(spec.resources) == xml_limits.MAX_DEVICES
    nested = HEAD + "<metadata>" + "<a>" * (xml_limits.MAX_DEPTH - 3) + "</a>" * (xml_limits.MAX_DEPTH - 3)
    assert parse_domain(nested + "</metadata></domain>").uuid == UUID


def test_one_over_each_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="devices"):
        parse_domain(disks(xml_limits.MAX_DEVICES + 1))
    nested = HEAD + "<metadata>" + "<a>" * (xml_limits.MAX_DEPTH - 1) + "</a>" * (xml_limits.MAX_DEPTH - 1)
    with pytest.raises(InvalidArgument, match="nested"):
        parse_domain(nested + "</metadata></domain>")
    with pytest.raises(InvalidArgument, match="larger"):
        parse_domain(huge(xml_limits.MAX_XML_BYTES))


@pytest.mark.parametrize("text", ["", "<domain", "\udcff", "<domain>\x00</domain>", "<a/><b/>", "<?xml?>"])
def test_not_xml_is_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_domain(text)
