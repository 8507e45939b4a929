"""Issue 14: the journal fields of denials, and the forwarding of refused isolations to the audit trail."""

from __future__ import annotations

import logging

import pytest

from svirtd import message_ids
from svirtd.audit_watch import parse_avc
from svirtd.denial_tracker import DenialTracker
from svirtd.denials import GuestRef
from svirtd.logsetup import guest_fields
from svirtd.manager import FailureListener, Listeners
from svirtd.models import Assignment, Level

A = GuestRef("uuid-a", "web01")
B = GuestRef("uuid-b", "db02")
TABLE = {Level(low=1, high=2): A, Level(low=3, high=4): B}


def avc(source: str, target: str, target_type: str = "svirt_image_t") -> str:
    return (f'avc:  denied  {{ read write }} for  pid=2 comm="qemu" name="disk.img" dev="vda" ino=12 '
            f"scontext=system_u:system_r:svirt_t:{source} tcontext=system_u:object_r:{target_type}:{target} "
            "tclass=file permissive=0")


def logged(caplog: pytest.LogCaptureFixture, *records: str) -> list[logging.LogRecord]:
    tracker = DenialTracker(TABLE.get, None)
    with caplog.at_level(logging.WARNING, logger="svirtd.denial_tracker"):
        for text in records:
            tracker.on_record(parse_avc("AVC", f"type=AVC msg=audit(1795643064.286:7): {text}"))
    return [r for r in caplog.records if r.name == "svirtd.denial_tracker"]


def test_cross_guest_denial_names_both_guests(caplog: pytest.LogCaptureFixture) -> None:
    (rec,) = logged(caplog, avc("s0:c1,c2", "s0:c3,c4"))
    fields = vars(rec)
    assert fields["MESSAGE_ID"] == message_ids.DENIAL_CROSS_GUEST
    assert (fields["GUEST_UUID"], fields["SVIRT_SOURCE_GUEST"], fields["SVIRT_TARGET"]) == ("uuid-a", "web01", "db02")
    assert (fields["AVC_PERMISSIONS"], fields["AVC_TCLASS"], fields["AVC_PATH"]) == ("read write", "file", "disk.img")
    assert fields["SVIRT_VERDICT"] == "UNKNOWN"  # no policy loaded here


def test_denial_on_a_host_object_is_a_guest_denial(caplog: pytest.LogCaptureFixture) -> None:
    (rec,) = logged(caplog, avc("s0:c1,c2", "s0", target_type="etc_t"))
    assert vars(rec)["MESSAGE_ID"] == message_ids.DENIAL_GUEST
    assert vars(rec)["SVIRT_TARGET"] == "system_u:object_r:etc_t:s0"


def test_unattributed_denials_are_logged_only_when_they_carry_a_pair(caplog: pytest.LogCaptureFixture) -> None:
    records = logged(caplog, avc("s0:c7,c8", "s0:c7,c8"), avc("s0", "s0", target_type="etc_t"))
    assert [vars(r)["MESSAGE_ID"] for r in records] == [message_ids.DENIAL_UNATTRIBUTED]
    assert vars(records[0])["AVC_SCONTEXT"] == "system_u:system_r:svirt_t:s0:c7,c8"


def test_unattributed_denials_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    assert len(logged(caplog, *[avc("s0:c7,c8", "s0:c9,c10")] * 100)) <= 20


def test_guest_fields_with_an_event() -> None:
    assert guest_fields("u", "n") == {"GUEST_UUID": "u", "GUEST_NAME": "n"}
    assert guest_fields("u", "n", message_ids.GUEST_RELEASED, SVIRT_LEVEL="s0:c1,c2") == {
        "GUEST_UUID": "u", "GUEST_NAME": "n", "MESSAGE_ID": message_ids.GUEST_RELEASED, "SVIRT_LEVEL": "s0:c1,c2"}


class Plain:
    def isolated(self, assignment: Assignment) -> None:
        pass

    def released(self, uuid: str, name: str) -> None:
        pass


class Auditing(Plain):
    def __init__(self) -> None:
        self.failed: list[tuple[str, str, str]] = []

    def isolation_failed(self, uuid: str, name: str, reason: str) -> None:
        self.failed.append((uuid, name, reason))


def test_refused_isolations_reach_only_the_listeners_that_audit_them() -> None:
    auditing = Auditing()
    listeners = Listeners(Plain(), auditing)
    assert isinstance(listeners, FailureListener) and not isinstance(Plain(), FailureListener)
    listeners.isolation_failed("u", "n", "ResourceConflict")
    assert auditing.failed == [("u", "n", "ResourceConflict")]
