"""The state database refuses what must never happen, even if the code above it has a bug."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from svirtd.models import Applier, Assignment, Level, Origin, ResourceClass, ResourceKind
from svirtd.state_db import UnusableStateDatabase
from svirtd.store import Claim, Store


def assignment(uuid: str, level: Level, name: str = "g") -> Assignment:
    now = time.time()
    return Assignment(uuid=uuid, name=name, level=level, profile="default", origin=Origin.API,
                      created=now, updated=now)


def claim(uuid: str, path: str, rclass: ResourceClass, ino: int = 7) -> Claim:
    return Claim(uuid=uuid, path=path, device="disk vda", kind=ResourceKind.FILE, rclass=rclass, dev=1, ino=ino,
                 expected="x", original="", phase="applied")


def test_wal_and_round_trip(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    a = assignment("u1", Level(low=1, high=2), "web01")
    s.insert_assignment(a)
    s.close()
    s = Store(tmp_path / "state.db")
    assert s.get("u1") == a
    assert [lv for _, lv in s.levels()] == [Level(low=1, high=2)]
    assert oct((tmp_path / "state.db").stat().st_mode & 0o777) == "0o600"


def test_duplicate_level_is_refused_by_the_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.insert_assignment(assignment("u1", Level(low=1, high=2)))
    with pytest.raises(sqlite3.IntegrityError):
        s.insert_assignment(assignment("u2", Level(low=1, high=2)))
    assert s.count() == 1


def test_private_inode_cannot_be_claimed_twice(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.insert_assignment(assignment("u1", Level(low=1, high=2)))
    s.insert_assignment(assignment("u2", Level(low=3, high=4)))
    s.put_claims([claim("u1", "/a", ResourceClass.PRIVATE)])
    with pytest.raises(sqlite3.IntegrityError):
        s.put_claims([claim("u2", "/b", ResourceClass.PRIVATE)])
    # Shared/read-only claims on one inode are fine.
    s.put_claims([claim("u1", "/s", ResourceClass.SHARED, ino=9), claim("u2", "/s", ResourceClass.SHARED, ino=9)])
    assert len(s.claims_on_inode(1, 9)) == 2


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s._db.execute("PRAGMA user_version=99")
    s.close()
    with pytest.raises(UnusableStateDatabase, match="newer svirtd"):
        Store(tmp_path / "state.db")


SCHEMA_1_CLAIMS = """
CREATE TABLE assignments (uuid TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, level TEXT NOT NULL UNIQUE,
    profile TEXT NOT NULL, origin TEXT NOT NULL, state TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'active' CHECK (phase IN ('active', 'releasing')), note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE claims (uuid TEXT NOT NULL REFERENCES assignments(uuid), path TEXT NOT NULL, device TEXT NOT NULL,
    kind TEXT NOT NULL, rclass TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, expected TEXT NOT NULL,
    original TEXT, phase TEXT NOT NULL CHECK (phase IN ('applying', 'applied', 'restoring')),
    PRIMARY KEY (uuid, path));
INSERT INTO assignments VALUES ('u1', 'web01', 's0:c1,c2', 'default', 'api', 'shutoff', 'active', '', 0, 0);
INSERT INTO claims VALUES ('u1', '/srv/a.img', 'disk vda', 'file', 'private', 1, 7, 'x', NULL, 'applied');
PRAGMA user_version=1;
"""


def test_a_schema_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(SCHEMA_1_CLAIMS)
    db.close()
    s = Store(tmp_path / "state.db")
    [old] = s.claims_for("u1")
    assert old.real == "" and old.where == "/srv/a.img"  # unknown until the next relabel records it
    s.put_claims([old.model_copy(update={"real": "/data/a.img"})])
    assert s.claims_for("u1")[0].where == "/data/a.img"
    s.close()
    s = Store(tmp_path / "state.db")  # opening an upgraded database again changes nothing
    assert s.claims_for("u1")[0].real == "/data/a.img"
    assert s.claims_for("u1")[0].applier is Applier.SVIRTD  # schema 3: every older claim was svirtd's own
    assert s._db.execute("PRAGMA user_version").fetchone()[0] == 3
