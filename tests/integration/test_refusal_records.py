"""Issue 14: a refused isolation is one journal message with its MESSAGE_ID, and one audit-trail call;
a guest let start unconfined is a GUEST_UNCONFINED message.

The manager runs in-process on the hook's path (real store and files; libvirt is never called there),
with the log captured and a listener standing in for the audit trail (test_audit.py checks the
records that trail writes, from the live kernel).
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from svirtd import message_ids
from svirtd.errors import LabelSpaceExhausted, NotConfined
from svirtd.manager import Listeners
from svirtd.models import Assignment
from testbed.guests import Disk, domain_xml, make_disk
from tests.helpers import in_process_manager
from tests.integration.test_hook_labels import DriverOnly

pytestmark = pytest.mark.integration


class Trail:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str, str]] = []

    def isolated(self, assignment: Assignment) -> None:
        pass

    def released(self, uuid: str, name: str) -> None:
        pass

    def isolation_failed(self, uuid: str, name: str, reason: str) -> None:
        self.failed.append((uuid, name, reason))


def guest(tmp_path: Path, name: str) -> tuple[str, str]:
    uuid = str(uuidlib.uuid4())
    return uuid, domain_xml(name, uuid, [Disk(make_disk(tmp_path / f"{name}.img"), "vda")])


def events(caplog: pytest.LogCaptureFixture, uuid: str) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records if getattr(r, "GUEST_UUID", "") == uuid and hasattr(r, "MESSAGE_ID")]


def test_an_exhausted_label_space_is_one_message_and_one_audit_call(as_root: None, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    trail = Trail()
    with in_process_manager(tmp_path, DriverOnly(), categories="c0.c1") as m:  # one pair
        m.listener = Listeners(trail)
        first_uuid, first = guest(tmp_path, "svt-first")
        second_uuid, second = guest(tmp_path, "svt-second")
        with caplog.at_level(logging.INFO, logger="svirtd"):
            assert asyncio.run(m.prepare_start(first)) is not None
            with pytest.raises(LabelSpaceExhausted):
                asyncio.run(m.prepare_start(second))
    assert [e["MESSAGE_ID"] for e in events(caplog, first_uuid)] == [message_ids.GUEST_ISOLATED]
    (failed,) = events(caplog, second_uuid)
    assert (failed["MESSAGE_ID"], failed["SVIRT_REASON"], failed["SVIRT_ORIGIN"]) == (
        message_ids.LABEL_SPACE_EXHAUSTED, "LabelSpaceExhausted", "auto")
    assert failed["levelno"] == logging.ERROR
    assert trail.failed == [(second_uuid, "svt-second", "LabelSpaceExhausted")]


def test_a_start_require_confined_refuses_is_an_isolation_failure(as_root: None, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    trail = Trail()
    with in_process_manager(tmp_path, DriverOnly(), default_confined=False, require_confined=True) as m:
        m.listener = Listeners(trail)
        uuid, xml = guest(tmp_path, "svt-uncovered")
        with caplog.at_level(logging.INFO, logger="svirtd"), pytest.raises(NotConfined):
            asyncio.run(m.prepare_start(xml))
    (failed,) = events(caplog, uuid)
    assert (failed["MESSAGE_ID"], failed["SVIRT_REASON"]) == (message_ids.ISOLATION_FAILED, "NotConfined")
    assert trail.failed == [(uuid, "svt-uncovered", "NotConfined")]


def test_a_start_let_through_unconfined_says_so(as_root: None, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    trail = Trail()
    with in_process_manager(tmp_path, DriverOnly(), default_confined=False) as m:
        m.listener = Listeners(trail)
        uuid, xml = guest(tmp_path, "svt-free")
        with caplog.at_level(logging.INFO, logger="svirtd"):
            assert asyncio.run(m.prepare_start(xml)) is None
    (unconfined,) = events(caplog, uuid)
    assert unconfined["MESSAGE_ID"] == message_ids.GUEST_UNCONFINED
    assert "automatic confinement does not cover it" in unconfined["SVIRT_REASON"]
    assert trail.failed == []  # allowed by config: not a failure
