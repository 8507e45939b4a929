"""Issue 19: a state database svirtd cannot trust stops svirtd with a message that names the file and
says what to do; it is never replaced by a new, empty table (that would hand pairs out twice).

svirtd runs as a real process on the private bus; each damage is real (bytes, a truncation, a
directory, permissions under the unit's capability set, a newer schema).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svirtd.models import Assignment, GuestState, Level, Origin
from svirtd.service import EX_CONFIG
from svirtd.store import SCHEMA_VERSION, Store
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.libvirtd import Libvirtd

pytestmark = pytest.mark.integration

DB_NAME = "state.db"
KEPT = "5a1f2e3d-0000-4000-8000-000000000001"
# What the unit leaves svirtd (CapabilityBoundingSet=): no CAP_DAC_OVERRIDE, so modes and owners count.
UNIT_CAPS = ["setpriv", "--bounding-set=-all,+fowner,+dac_read_search,+audit_write,+audit_read",
             "--inh-caps=-all", "--"]


@pytest.fixture
def daemon(bus: PrivateBus, libvirtd: Libvirtd, tmp_path: Path) -> Iterator[SvirtdProcess]:
    proc = SvirtdProcess(tmp_path / "svirtd", bus.address, libvirtd.uri, tmp_path / "hook-env",
                         auto_confine_names=["none-of-these-*"])
    yield proc
    proc.stop()


def a_table(path: Path) -> bytes:
    """A real svirtd database with one guest's pair in it, as bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(path)
    now = time.time()
    store.insert_assignment(Assignment(uuid=KEPT, name="kept", level=Level(low=3, high=7), profile="default",
                                       origin=Origin.API, state=GuestState.SHUTOFF, created=now, updated=now))
    store.close()
    return path.read_bytes()


def garbage(db: Path) -> None:
    db.write_bytes(os.urandom(8192))


def truncated(db: Path) -> None:
    db.write_bytes(db.read_bytes()[:1500])


def emptied(db: Path) -> None:
    db.write_bytes(b"")


def directory(db: Path) -> None:
    db.unlink()
    db.mkdir()


def future_schema(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()


def mode_000(db: Path) -> None:
    db.chmod(0)


def foreign_owner(db: Path) -> None:
    os.chown(db, 65534, 65534)


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage": (garbage, "not a usable database"),
    "truncated": (truncated, "damaged|not a usable database"),
    "empty": (emptied, "is empty"),
    "directory": (directory, "is a directory"),
    "future-schema": (future_schema, "newer svirtd"),
    "mode-000": (mode_000, "cannot be opened for reading and writing"),
    "foreign-owner": (foreign_owner, "cannot be opened for reading and writing"),
}


def fingerprint(path: Path) -> tuple[str, bytes | None, list[str]]:
    """What is at path (kind, bytes) and what lies beside it: nothing svirtd may change."""
    kind = "dir" if path.is_dir() else "file" if path.exists() else "none"
    data = path.read_bytes() if kind == "file" else None
    return kind, data, sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_state_database_it_cannot_trust_stops_svirtd_and_says_what_to_do(daemon: SvirtdProcess,
                                                                          damage: str) -> None:
    db = daemon.state_dir / DB_NAME
    a_table(db)
    (db.parent / f"{DB_NAME}-wal").unlink(missing_ok=True)  # a clean shutdown leaves none
    spoil, expected = DAMAGES[damage]
    spoil(db)
    before = fingerprint(db)
    with pytest.raises(RuntimeError, match=f"svirtd exited with {EX_CONFIG}") as exc:
        daemon.start(wrapper=UNIT_CAPS)
    text = str(exc.value)
    assert f"state database {db}" in text, text  # names the file
    assert any(word in text for word in expected.split("|")), text  # says what is wrong
    advice = "chown root:root" if damage in ("mode-000", "foreign-owner") else \
        "Install that svirtd version" if damage == "future-schema" else "Restore it from a backup"
    assert advice in text, text  # and what to do
    assert any("STATUS=State database unusable" in n for n in daemon.drain_notifications()), daemon.notifications
    assert fingerprint(db) == before, "svirtd changed or replaced the database it refused"


def test_the_admins_remedy_is_taken_and_a_kept_table_survives(daemon: SvirtdProcess) -> None:
    """Refused while unreadable; once the admin restores the owner, svirtd starts with the table as it
    was (the guest's pair is still there, not a new, empty table)."""
    db = daemon.state_dir / DB_NAME
    a_table(db)
    foreign_owner(db)
    with pytest.raises(RuntimeError, match=f"svirtd exited with {EX_CONFIG}"):
        daemon.start(wrapper=UNIT_CAPS)
    os.chown(db, 0, 0)
    daemon.start(wrapper=UNIT_CAPS)
    assert "1 guests in the table" in daemon.log_text(), daemon.log_tail()


def test_a_first_start_builds_the_database_aside(daemon: SvirtdProcess) -> None:
    """No database yet: svirtd makes one (never an empty file at the path, which it would refuse later)."""
    shutil.rmtree(daemon.state_dir, ignore_errors=True)
    daemon.start()
    db = daemon.state_dir / DB_NAME
    assert db.stat().st_size > 0 and not (daemon.state_dir / f"{DB_NAME}.new").exists()
