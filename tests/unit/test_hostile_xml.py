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
from tests.hostile_docs import HEAD, HOSTILE_DOCS, HOSTILE_UUID, disks, huge

UUID = HOSTILE_UUID


UNTRUSTED: dict[str, Callable[[str], object]] = {
    "parse_domain": parse_domain,
    "without_selinux_labels": identity.without_selinux_labels,
    "rewrite_definition": lambda x: identity.rewrite_definition(x, UUID, Level(low=1, high=2), "default", None, None),
    "strip_identity": lambda x: identity.strip_identity(x, Level(low=1, high=2)),
    "chained_filters": lambda x: identity.chained_filters(x, "svirtd-nosmtp"),
}


@pytest.mark.parametrize("entry", UNTRUSTED)
@pytest.mark.parametrize("doc", HOSTILE_DOCS)
def test_hostile_definition_refused(doc: str, entry: str) -> None:
    text = HOSTILE_DOCS[doc]()
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
