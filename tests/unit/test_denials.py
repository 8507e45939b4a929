"""Denials: parsing (auparse), attribution by level, explanations (pure apart from auparse)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from svirtd.audit_watch import parse_avc
from svirtd.denials import GuestRef, MalformedRecord, attribute, explain
from svirtd.models import Level

A = GuestRef("uuid-a", "web01")
B = GuestRef("uuid-b", "db02")
TABLE = {Level(low=1, high=2): A, Level(low=3, high=4): B}


def record(scon: str = "system_u:system_r:svirt_t:s0:c1,c2", tcon: str = "system_u:object_r:svirt_image_t:s0:c3,c4",
           perms: str = "read write", extra: str = 'name="disk.img" dev="vda" ino=12') -> str:
    return (f"audit(1795643064.286:3): pid=29388 uid=0 auid=4294967295 ses=4294967295 msg='avc:  denied  {{ {perms} }} "
            f'for  pid=2 comm="qemu-system-x86" {extra} scontext={scon} tcontext={tcon} tclass=file permissive=0 '
            "exe=\"/usr/bin/qemu\" sauid=0 hostname=? addr=? terminal=?'")


def test_parse_user_avc_from_netlink_payload_and_log_line() -> None:
    rec = parse_avc("USER_AVC", record())
    assert rec.permissions == ("read", "write") and rec.tclass == "file" and rec.path == "disk.img"
    assert rec.comm == "qemu-system-x86" and rec.result == "denied"
    line = ('type=AVC msg=audit(1795643064.286:7): avc:  denied  { open } for  pid=9 comm="qemu" '
            'path="/img/b.img" dev="vda" '
            "ino=5 scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 "
            "tclass=file permissive=0")
    rec = parse_avc("AVC", line)
    assert rec.kind == "AVC" and rec.path == "/img/b.img" and rec.permissions == ("open",)


def test_attribution_and_mcs_explanation() -> None:
    a = attribute(parse_avc("USER_AVC", record()), TABLE.get)
    assert (a.source, a.target) == (A, B)
    text = explain(a, "CONSTRAINT", ()).text
    assert "MCS isolation between guest web01 and guest db02" in text and "expected" in text


def test_host_object_boolean_and_te_explanations() -> None:
    nfs = attribute(parse_avc("USER_AVC", record(tcon="system_u:object_r:nfs_t:s0", extra='path="/mnt/nfs/x"')),
                    TABLE.get)
    assert nfs.source == A and nfs.target is None
    exp = explain(nfs, "BOOLEAN", ("virt_use_nfs",))
    assert "virt_use_nfs" in exp.text and exp.command == "setsebool -P virt_use_nfs 1"
    te = explain(attribute(parse_avc("USER_AVC", record(tcon="system_u:object_r:shadow_t:s0")), TABLE.get),
                 "TERULE", ())
    assert te.text.startswith("type enforcement") and "shadow_t" in te.text


def test_unknown_levels_are_not_attributed() -> None:
    a = attribute(parse_avc("USER_AVC", record(scon="system_u:system_r:svirt_t:s0:c7,c8",
                                               tcon="system_u:object_r:svirt_image_t:s0")), TABLE.get)
    assert not a.involves_guests


@pytest.mark.parametrize("text", [
    "", "garbage", record()[:60], record()[:150], record().replace("scontext=", "sc="),
    record(scon="notacontext"), record(perms=""), "msg='avc:  denied  { read } for'",
])
def test_malformed_records_raise_malformed_only(text: str) -> None:
    with pytest.raises(MalformedRecord):
        parse_avc("USER_AVC", text)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(
    st.text(max_size=400),
    st.integers(0, len(record())).map(lambda n: record()[:n]),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.tuples(st.integers(0, len(record()) - 1), st.text(max_size=20)).map(
        lambda t: record()[:t[0]] + t[1] + record()[t[0]:]),
))
def test_fuzzed_records_never_raise_anything_but_malformed(text: str) -> None:
    try:
        rec = parse_avc("USER_AVC", text)
    except MalformedRecord:
        return
    assert rec.scontext and rec.tcontext and rec.permissions
