"""Issue 14: svirtd's events in a real journal, with their MESSAGE_IDs, and the catalog that explains them.

PID 1 is not systemd here and no journald runs: each test starts a real systemd-journald of its own
in a private mount namespace (testbed/journald.py) and runs svirtd as systemd would have it log
(INVOCATION_ID set: the JournalHandler, not stderr).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd import message_ids
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory
from testbed.journald import PrivateJournald
from testbed.libvirtd import Libvirtd
from tests.conftest import clear_hook_env, wait_until
from tests.helpers import call, run
from tests.integration.test_audit import avc_text, inject, levels_of

pytestmark = pytest.mark.integration

CATALOG = Path(__file__).resolve().parents[2] / "data" / "svirtd.catalog"


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[PrivateJournald]:
    j = PrivateJournald(tmp_path / "journald").start()
    try:
        yield j
    finally:
        j.stop()


def test_journalctl_indexes_the_catalog(journald: PrivateJournald) -> None:
    listed = journald.install_catalog(CATALOG)
    subjects = dict(line.split(" ", 1) for line in listed.splitlines())
    assert subjects.keys() == set(message_ids.ALL.values())
    assert all(s.startswith("svirtd: ") for s in subjects.values())
    assert subjects[message_ids.DENIAL_CROSS_GUEST] == (
        "svirtd: Guest @SVIRT_SOURCE_GUEST@ was denied access to guest @SVIRT_TARGET@")


def one(journald: PrivateJournald, *matches: str) -> dict[str, str]:
    found = wait_until(lambda: journald.entries(*matches), what=" ".join(matches))
    assert isinstance(found, list)
    return dict(found[-1])


def test_isolation_denial_and_release_land_in_the_journal_with_their_ids(
        bus: PrivateBus, libvirtd: Libvirtd, guests: GuestFactory, tmp_path: Path,
        journald: PrivateJournald) -> None:
    proc = SvirtdProcess(tmp_path / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                         auto_confine_names=[f"{guests.prefix}-*"])
    try:
        proc.start(env={"INVOCATION_ID": secrets.token_hex(16)}, wrapper=journald.wrap())
        a, b = guests.new(), guests.new()
        la, lb = levels_of(bus, a, b)

        isolated = one(journald, f"MESSAGE_ID={message_ids.GUEST_ISOLATED}", f"GUEST_UUID={a.uuid}")
        assert (isolated["GUEST_NAME"], isolated["SVIRT_LEVEL"]) == (a.name, la)
        assert isolated["SVIRT_LABEL"] == f"system_u:system_r:svirt_t:{la}"
        assert isolated["SVIRT_IMAGE_LABEL"] == f"system_u:object_r:svirt_image_t:{la}"
        assert (isolated["SVIRT_PROFILE"], isolated["SVIRT_ORIGIN"]) == ("default", "auto")
        assert isolated["SYSLOG_IDENTIFIER"] == "svirtd" and isolated["_PID"] == str(proc.proc and proc.proc.pid)

        inject(avc_text(la, lb, marker=f"qemu-{secrets.token_hex(3)}"))
        denial = one(journald, f"MESSAGE_ID={message_ids.DENIAL_CROSS_GUEST}", f"GUEST_UUID={a.uuid}")
        assert (denial["SVIRT_SOURCE_GUEST"], denial["SVIRT_TARGET"]) == (a.name, b.name)
        assert (denial["TARGET_GUEST_UUID"], denial["AVC_PERMISSIONS"], denial["AVC_TCLASS"]) == (
            b.uuid, "read write", "file")

        # Defined with a's private disk: the automatic isolation (a libvirt event) is refused, once.
        taker = guests.new(disk_specs=[Disk(a.disk, "vda")])
        refused = one(journald, f"MESSAGE_ID={message_ids.ISOLATION_FAILED}", f"GUEST_UUID={taker.uuid}")
        assert (refused["SVIRT_REASON"], refused["SVIRT_ORIGIN"], refused["PRIORITY"]) == (
            "ResourceConflict", "auto", "3")
        assert not [e for e in journald.entries(f"GUEST_UUID={taker.uuid}") if "left unconfined" in e["MESSAGE"]]

        run(call(bus, "Release", "s", b.uuid))
        released = one(journald, f"MESSAGE_ID={message_ids.GUEST_RELEASED}", f"GUEST_UUID={b.uuid}")
        assert (released["GUEST_NAME"], released["SVIRT_LEVEL"]) == (b.name, lb)

        # What an admin sees with `journalctl -x`: the catalog entry, fields substituted.
        journald.install_catalog(CATALOG)
        text = journald.explain(f"MESSAGE_ID={message_ids.DENIAL_CROSS_GUEST}", f"GUEST_UUID={a.uuid}")
        assert f"Subject: Guest {a.name} was denied access to guest {b.name}" in text, text
        assert "MCS isolation at work" in text and "Documentation: man:svirtd(8)" in text, text
        text = journald.explain(f"MESSAGE_ID={message_ids.GUEST_RELEASED}", f"GUEST_UUID={b.uuid}")
        assert f"Subject: Guest {b.name} is released from its pair {lb}" in text, text
    finally:
        proc.stop()
        clear_hook_env(libvirtd)
