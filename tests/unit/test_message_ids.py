"""Issue 14: every MESSAGE_ID has exactly one catalog entry, and the catalog names no other id."""

from __future__ import annotations

import re
from pathlib import Path

from svirtd import message_ids

CATALOG = Path(__file__).resolve().parents[2] / "data" / "svirtd.catalog"
HEADERS = ("Subject", "Defined-By", "Support", "Documentation")


def entries() -> list[tuple[str, dict[str, str], str]]:
    """(id, headers, body) per `-- ID` block, as journalctl reads the format."""
    out: list[tuple[str, dict[str, str], str]] = []
    for block in re.split(r"^-- ", CATALOG.read_text(), flags=re.M)[1:]:
        first, _, rest = block.partition("\n")
        head, _, body = rest.partition("\n\n")
        headers = dict(line.split(": ", 1) for line in head.splitlines())
        out.append((first.strip(), headers, body.strip()))
    return out


def test_ids_are_valid_unique_128_bit_ids() -> None:
    ids = list(message_ids.ALL.values())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    constants = {k: v for k, v in vars(message_ids).items() if k.isupper() and isinstance(v, str)}
    assert constants == message_ids.ALL  # a constant missing from ALL would escape the catalog check


def test_every_id_has_exactly_one_catalog_entry_and_vice_versa() -> None:
    catalog_ids = [i for i, _h, _b in entries()]
    assert sorted(catalog_ids) == sorted(message_ids.ALL.values())
    assert len(set(catalog_ids)) == len(catalog_ids)


def test_each_entry_has_the_headers_and_a_body() -> None:
    for entry_id, headers, body in entries():
        assert set(HEADERS) <= headers.keys(), entry_id
        assert headers["Defined-By"] == "svirtd" and headers["Documentation"] == "man:svirtd(8)"
        assert len(body.split()) >= 30, f"{entry_id}: the body must say what happened and what to do"


def test_message_fields() -> None:
    assert message_ids.message_fields(message_ids.GUEST_ISOLATED, SVIRT_LEVEL="s0:c1,c2") == {
        "MESSAGE_ID": message_ids.GUEST_ISOLATED, "SVIRT_LEVEL": "s0:c1,c2"}
