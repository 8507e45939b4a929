"""Review of issue 13, finding 13: a schema upgrade interrupted half-way must not brick the next start.

The schema-1 database is built with the DDL svirtd 1 shipped (claims without `real`); the crash is
real: a subprocess opening it is SIGKILLed from inside SQLite's statement trace, after the upgrade's
ALTER and DDL ran and right before it records the new user_version.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from svirtd.models import ResourceKind
from svirtd.store import SCHEMA_VERSION, Store

SCHEMA_1 = """
CREATE TABLE assignments (
    uuid TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, level TEXT NOT NULL UNIQUE, profile TEXT NOT NULL,
    origin TEXT NOT NULL, state TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'active' CHECK (phase IN ('active', 'releasing')),
    note TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL
);
CREATE INDEX assignments_name ON assignments(name);
CREATE TABLE claims (
    uuid TEXT NOT NULL REFERENCES assignments(uuid), path TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL,
    rclass TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL, expected TEXT NOT NULL, original TEXT,
    phase TEXT NOT NULL CHECK (phase IN ('applying', 'applied', 'restoring')),
    PRIMARY KEY (uuid, path)
);
CREATE INDEX claims_inode ON claims(dev, ino);
CREATE UNIQUE INDEX claims_private_inode ON claims(dev, ino) WHERE rclass = 'private';
CREATE TABLE optouts (uuid TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, at REAL NOT NULL);
PRAGMA user_version = 1;
"""

# Opens the Store with SQLite's statement trace armed: SIGKILL the moment the upgrade is about to record
# its new version, i.e. with the ALTER and the DDL executed (committed or not: that is the point).
KILL_BEFORE_VERSION = """
import os, signal, sqlite3, sys
real_connect = sqlite3.connect
def connect(*args, **kwargs):
    db = real_connect(*args, **kwargs)
    def trace(statement):
        if statement.replace(" ", "").lower().startswith("pragmauser_version="):
            os.kill(os.getpid(), signal.SIGKILL)
    db.set_trace_callback(trace)
    return db
sqlite3.connect = connect
from pathlib import Path
from svirtd.store import Store
Store(Path(sys.argv[1]))
"""


def schema_1_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    now = time.time()
    db.execute("INSERT INTO assignments (uuid, name, level, profile, origin, state, created, updated)"
               " VALUES ('u1', 'web01', 's0:c1,c2', 'default', 'api', 'shutoff', ?, ?)", (now, now))
    db.execute("INSERT INTO claims VALUES ('u1', '/img/a.img', 'disk vda', 'file', 'private', 1, 7,"
               " 'system_u:object_r:svirt_image_t:s0:c1,c2', '', 'applied')")
    db.commit()
    db.close()


def assert_upgraded(path: Path) -> None:
    s = Store(path)
    try:
        assert s._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        [claim] = s.claims_for("u1")
        assert (claim.path, claim.kind, claim.real) == ("/img/a.img", ResourceKind.FILE, "")
        assert s.get("u1") is not None
    finally:
        s.close()


def test_a_column_added_by_an_interrupted_upgrade_does_not_stop_the_next_start(tmp_path: Path) -> None:
    """What svirtd <= this fix left behind when killed between its ALTER and its user_version."""
    db_path = tmp_path / "state.db"
    schema_1_database(db_path)
    db = sqlite3.connect(db_path)
    db.execute("ALTER TABLE claims ADD COLUMN real TEXT NOT NULL DEFAULT ''")
    db.commit()
    db.close()
    assert_upgraded(db_path)


def test_an_upgrade_killed_before_recording_its_version_is_done_again_at_the_next_start(tmp_path: Path) -> None:
    db_path = tmp_path / "state.db"
    schema_1_database(db_path)
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_VERSION, str(db_path)], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # the crash landed inside the upgrade
    db.close()
    assert_upgraded(db_path)
