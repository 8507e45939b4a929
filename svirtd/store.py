"""svirtd's state database (SQLite): the allocation table, claimed resources and their originals.

Every change is committed (WAL, synchronous=FULL) before any file is touched, so after a crash the
database says what was meant and the next start finishes or undoes it. The schema itself refuses a
duplicate level and a private inode claimed twice, even if the code above has a bug.

The event loop reads through its own connection. `await store.write(store.method, ...)` runs a write
method in the store's one writer thread, on a second connection: the commit's fsync (tens of ms on a busy
disk, one per new guest in a burst of defines) never holds the loop, and the loop's reads go on meanwhile
(WAL: readers do not wait for the writer). A write method called directly runs where it is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import StateNotWritable
from .models import Applier, Assignment, GuestState, Level, Origin, ResourceClass, ResourceKind
from .state_db import UnusableStateDatabase, open_state_db
from .to_the_end import to_the_end

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 3  # 2: claims.real; 3: claims.applier
STAMP_BUCKETS = 4096  # a power of two (see Store.stamp)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    uuid     TEXT PRIMARY KEY NOT NULL,
    name     TEXT NOT NULL,
    level    TEXT NOT NULL UNIQUE,          -- s0:cA,cB: one guest per pair, enforced here
    profile  TEXT NOT NULL,
    origin   TEXT NOT NULL,
    state    TEXT NOT NULL,
    phase    TEXT NOT NULL DEFAULT 'active' CHECK (phase IN ('active', 'releasing')),
    note     TEXT NOT NULL DEFAULT '',
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS assignments_name ON assignments(name);

CREATE TABLE IF NOT EXISTS claims (
    uuid     TEXT NOT NULL REFERENCES assignments(uuid),
    path     TEXT NOT NULL,
    device   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    rclass   TEXT NOT NULL,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    expected TEXT NOT NULL,
    original TEXT,                          -- NULL: the file carried no label
    phase    TEXT NOT NULL CHECK (phase IN ('applying', 'applied', 'restoring')),
    real     TEXT NOT NULL DEFAULT '',      -- where the file really was when claimed (symlinked parents resolved)
    applier  TEXT NOT NULL DEFAULT 'svirtd' CHECK (applier IN ('svirtd', 'libvirt')),
    PRIMARY KEY (uuid, path)
);
CREATE INDEX IF NOT EXISTS claims_inode ON claims(dev, ino);
-- A private resource belongs to exactly one guest.
CREATE UNIQUE INDEX IF NOT EXISTS claims_private_inode ON claims(dev, ino) WHERE rclass = 'private';
-- Every relabel checks other guests' directory trees (few) for overlaps: no scan of every claim.
CREATE INDEX IF NOT EXISTS claims_trees ON claims(kind) WHERE kind = 'tree';

-- [cluster] backend = "etcd" (issue 16): the bindings this host uses, cached, and what it still has to tell
-- etcd. A new table is compatible both ways (an older svirtd ignores it), so SCHEMA_VERSION stays.
CREATE TABLE IF NOT EXISTS cluster_bindings (
    uuid       TEXT PRIMARY KEY NOT NULL,
    level      TEXT NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    state      TEXT NOT NULL CHECK (state IN ('bound', 'joining', 'leaving', 'moving')),
    moved_from TEXT NOT NULL DEFAULT '',
    updated    REAL NOT NULL
);
-- What etcd has not heard yet: looked at every few seconds, so no scan of every binding.
CREATE INDEX IF NOT EXISTS cluster_bindings_pending ON cluster_bindings(state) WHERE state != 'bound';

-- Guests an admin released: automatic confinement leaves them alone until Isolate or undefine.
CREATE TABLE IF NOT EXISTS optouts (
    uuid TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    at   REAL NOT NULL
);
"""


class Claim(BaseModel):
    """A resource a guest holds, with what it carried before svirtd touched it."""

    model_config = ConfigDict(frozen=True)

    uuid: str
    path: str
    device: str
    kind: ResourceKind
    rclass: ResourceClass
    dev: int
    ino: int
    expected: str
    original: str | None
    phase: str
    real: str = ""  # the path with symlinked parents resolved, when claimed ('' from schema 1)
    # SVIRTD: svirtd labeled it and restores `original`. LIBVIRT: libvirt's driver labels it while the
    # guest runs (and remembers the original itself); the claim records ownership only.
    applier: Applier = Applier.SVIRTD

    @property
    def where(self) -> str:
        """Where the file lives, for overlap checks."""
        return self.real or self.path


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()  # .db: the writer thread's connection, in that thread only
        self._main = open_state_db(path)  # UnusableStateDatabase: never replaced by a new, empty table
        try:
            _configure(self._main)
            self._upgrade(path)
        except sqlite3.DatabaseError as exc:
            self._main.close()
            raise UnusableStateDatabase(path, f"cannot be brought to schema {SCHEMA_VERSION} ({exc})") from exc
        except BaseException:
            self._main.close()
            raise
        path.chmod(0o600)
        self._writer: ThreadPoolExecutor | None = None  # started by the first write()
        self._writer_dbs: list[sqlite3.Connection] = []
        # Called with a guest's UUID after each committed change to its row or claims (any thread).
        self.observer: Callable[[str], None] | None = None
        # A new value after each committed change to any row or claim: what is read at generation g is
        # still true while generation == g (read it BEFORE the rows). next() of a count is atomic.
        self._generations = itertools.count(1)
        self.generation = 0
        # Per guest, the generation of its last change, in STAMP_BUCKETS buckets by hash (two guests sharing
        # a bucket only drop each other's kept reads more often): what was read about a guest at stamp s is
        # still true while stamp(uuid) == s, whatever other guests do (a burst of isolations).
        self._stamps = [0] * STAMP_BUCKETS

    def _upgrade(self, path: Path) -> None:
        """Bring the schema to SCHEMA_VERSION in ONE transaction (ALTER, DDL and user_version): a crash
        half-way leaves the old schema, and the next start simply upgrades again."""
        with self._tx():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UnusableStateDatabase(path, f"was written by a newer svirtd (schema {version}, this one knows "
                                                  f"{SCHEMA_VERSION})", "Install that svirtd version (or newer) "
                                                  "again; a downgrade cannot read its table, and svirtd never "
                                                  "starts a new one over it")
            # Schema 1: a claims table without `real` ('' until the next relabel records it). Asked of the
            # table, not of user_version: an older svirtd killed mid-upgrade left the column and version 1.
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(claims)")}
            if columns and "real" not in columns:
                self._db.execute("ALTER TABLE claims ADD COLUMN real TEXT NOT NULL DEFAULT ''")
            if columns and "applier" not in columns:  # schema 3: every older claim was labeled by svirtd itself
                self._db.execute("ALTER TABLE claims ADD COLUMN applier TEXT NOT NULL DEFAULT 'svirtd' "
                                 "CHECK (applier IN ('svirtd', 'libvirt'))")
            for statement in _SCHEMA.split(";"):  # not executescript(): it would COMMIT first
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection of the thread asking: the writer thread's own, else the main one."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        return db if db is not None else self._main

    async def write(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this store's write methods in the writer thread. Cancelled meanwhile, it waits for the
        write to be over before the cancellation goes on: the caller never goes on while its write may still
        commit (a pair recorded after the caller gave it back)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svirtd-store",
                                              initializer=self._open_writer)
        work = asyncio.get_running_loop().run_in_executor(self._writer, functools.partial(method, *args, **kwargs))
        return await to_the_end(work)

    def _open_writer(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _configure(db)
        self._writer_dbs.append(db)
        self._local.db = db

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)  # writes under way finish first
            self._writer = None
        for db in self._writer_dbs:
            db.close()
        self._writer_dbs.clear()
        self._main.close()

    def _changed(self, uuid: str) -> None:
        """After the commit: an observer's failure must not look like a failed write to the caller (which
        would undo what is committed, e.g. give a recorded pair back)."""
        generation = next(self._generations)
        self._stamps[hash(uuid) & (STAMP_BUCKETS - 1)] = generation
        self.generation = generation
        if self.observer is not None:
            try:
                self.observer(uuid)
            except Exception:
                log.exception("the observer of guest %s's row failed", uuid)

    def stamp(self, uuid: str) -> int:
        """Changes after each committed change of this guest's row or claims (read it BEFORE them)."""
        return self._stamps[hash(uuid) & (STAMP_BUCKETS - 1)]

    @contextlib.contextmanager
    def _fsync(self, durable: bool) -> Iterator[None]:
        """durable=False: the transactions inside commit without an fsync (WAL, synchronous=NORMAL: a
        power loss may take them back, never half of one); FULL again after."""
        if durable:
            yield
            return
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def _tx(self) -> _Transaction:
        # isolation_level=None + explicit BEGIN IMMEDIATE: one writer, committed on exit.
        return _Transaction(self._db, self.path)

    # -- assignments ---------------------------------------------------------------------------

    def insert_assignment(self, a: Assignment) -> None:
        with self._tx():
            self._db.execute(
                "INSERT INTO assignments (uuid, name, level, profile, origin, state, note, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (a.uuid, a.name, str(a.level), a.profile, a.origin.value, a.state.value, a.note,
                 a.created, a.updated),
            )
            self._db.execute("DELETE FROM optouts WHERE uuid = ?", (a.uuid,))
        self._changed(a.uuid)

    def update_assignment(self, uuid: str, durable: bool = True, **fields: str) -> None:
        """durable=False: committed without an fsync (WAL, synchronous=NORMAL), for what svirtd learns
        again from libvirt at every start (a guest's state): one fsync less per guest start."""
        allowed = {"name", "level", "profile", "state", "phase", "note"}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"cannot update {sorted(set(fields) - allowed)}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._fsync(durable), self._tx():
            self._db.execute(f"UPDATE assignments SET {cols}, updated = ? WHERE uuid = ?",  # noqa: S608
                             (*fields.values(), time.time(), uuid))
        self._changed(uuid)

    def begin_release(self, uuid: str, optout: bool) -> None:
        """Mark a release under way; the opt-out is recorded in the same transaction, so a crash
        before the release finishes cannot turn an admin's Release into a re-isolation."""
        with self._tx():
            self._db.execute("UPDATE assignments SET phase = 'releasing', updated = ? WHERE uuid = ?",
                             (time.time(), uuid))
            if optout:
                self._db.execute("INSERT OR REPLACE INTO optouts (uuid, name, at)"
                                 " SELECT uuid, name, ? FROM assignments WHERE uuid = ?", (time.time(), uuid))
        self._changed(uuid)

    def delete_assignment(self, uuid: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM claims WHERE uuid = ?", (uuid,))
            self._db.execute("DELETE FROM assignments WHERE uuid = ?", (uuid,))
        self._changed(uuid)

    def get(self, uuid: str) -> Assignment | None:
        row = self._db.execute(f"SELECT {_A_COLS} FROM assignments WHERE uuid = ?", (uuid,)).fetchone()  # noqa: S608
        return _assignment(row) if row else None

    def find_by_name(self, name: str) -> list[Assignment]:
        rows = self._db.execute(f"SELECT {_A_COLS} FROM assignments WHERE name = ?", (name,)).fetchall()  # noqa: S608
        return [_assignment(r) for r in rows]

    def by_level(self, level: Level) -> Assignment | None:
        row = self._db.execute(f"SELECT {_A_COLS} FROM assignments WHERE level = ?",  # noqa: S608
                               (str(level),)).fetchone()
        return _assignment(row) if row else None

    def guest_at_level(self, level: Level) -> tuple[str, str] | None:
        """(uuid, name) holding a level: the hot path of denial attribution, so no model is built."""
        row = self._db.execute("SELECT uuid, name FROM assignments WHERE level = ?", (str(level),)).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def assignments(self) -> list[Assignment]:
        rows = self._db.execute(f"SELECT {_A_COLS} FROM assignments ORDER BY name, uuid").fetchall()  # noqa: S608
        return [_assignment(r) for r in rows]

    def summary_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(uuid, name, level, profile, state) of every guest: List's answer without building models,
        which matters with 100k guests (plain tuples cost a tenth of the memory)."""
        return self._db.execute("SELECT uuid, name, level, profile, state FROM assignments ORDER BY name, uuid"
                                ).fetchall()

    def translation_rows(self) -> list[tuple[str, str, str]]:
        """(level, name, uuid) of every guest, for the MCS translation file."""
        return self._db.execute("SELECT level, name, uuid FROM assignments WHERE phase = 'active'").fetchall()

    def levels(self) -> Iterator[tuple[str, Level]]:
        """(uuid, level) of every assignment, streamed: cheap even with 100k guests."""
        for uuid, level in self._db.execute("SELECT uuid, level FROM assignments"):
            yield uuid, Level.parse(level)

    def uuids(self) -> set[str]:
        """Every guest in the table."""
        return {row[0] for row in self._db.execute("SELECT uuid FROM assignments")}

    def releasing(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT uuid FROM assignments WHERE phase = 'releasing'")]

    def is_releasing(self, uuid: str) -> bool:
        """A release is under way, or waits for files it could not restore yet."""
        return self._db.execute("SELECT 1 FROM assignments WHERE uuid = ? AND phase = 'releasing'",
                                (uuid,)).fetchone() is not None

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM assignments").fetchone()[0])

    # -- claims --------------------------------------------------------------------------------

    def claims_for(self, uuid: str) -> list[Claim]:
        rows = self._db.execute(f"SELECT {_C_COLS} FROM claims WHERE uuid = ? ORDER BY path", (uuid,))  # noqa: S608
        return [_claim(r) for r in rows]

    def claims_on_inode(self, dev: int, ino: int) -> list[Claim]:
        rows = self._db.execute(f"SELECT {_C_COLS} FROM claims WHERE dev = ? AND ino = ?", (dev, ino))  # noqa: S608
        return [_claim(r) for r in rows]

    def claims_of_others(self, uuid: str, trees_only: bool = False) -> list[Claim]:
        """Every other guest's claims (only their directory trees if trees_only)."""
        where = "uuid != ?" + (" AND kind = 'tree'" if trees_only else "")
        rows = self._db.execute(f"SELECT {_C_COLS} FROM claims WHERE {where}", (uuid,))  # noqa: S608
        return [_claim(r) for r in rows]

    def put_claims(self, claims: Iterable[Claim]) -> None:
        claims = list(claims)
        with self._tx():
            # Upsert on the primary key only: any other uniqueness violation (a private inode
            # claimed by a second guest) must fail, never silently replace the first claim.
            self._db.executemany(
                f"INSERT INTO claims ({_C_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
                " ON CONFLICT (uuid, path) DO UPDATE SET device = excluded.device, kind = excluded.kind,"
                " rclass = excluded.rclass, dev = excluded.dev, ino = excluded.ino, expected = excluded.expected,"
                " original = excluded.original, phase = excluded.phase, real = excluded.real,"
                " applier = excluded.applier",
                [(c.uuid, c.path, c.device, c.kind.value, c.rclass.value, c.dev, c.ino, c.expected, c.original,
                  c.phase, c.real, c.applier.value) for c in claims],
            )
        for uuid in {c.uuid for c in claims}:
            self._changed(uuid)

    def set_claims_phase(self, uuid: str, paths: Iterable[str], phase: str) -> None:
        with self._tx():
            self._db.executemany("UPDATE claims SET phase = ? WHERE uuid = ? AND path = ?",
                                 [(phase, uuid, p) for p in paths])
        self._changed(uuid)

    def delete_claims(self, uuid: str, paths: Iterable[str]) -> None:
        with self._tx():
            self._db.executemany("DELETE FROM claims WHERE uuid = ? AND path = ?", [(uuid, p) for p in paths])
        self._changed(uuid)

    # -- opt-outs ------------------------------------------------------------------------------

    def remove_optout(self, uuid: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM optouts WHERE uuid = ?", (uuid,))

    def optout_named(self, ref: str) -> str | None:
        """UUID of a released guest, by UUID or name."""
        row = self._db.execute("SELECT uuid FROM optouts WHERE uuid = ? OR name = ?", (ref, ref)).fetchone()
        return str(row[0]) if row else None

    def is_opted_out(self, uuid: str) -> bool:
        return self._db.execute("SELECT 1 FROM optouts WHERE uuid = ?", (uuid,)).fetchone() is not None


    # -- cluster bindings (issue 16) --------------------------------------------------------------

    def cluster_binding(self, uuid: str) -> ClusterRow | None:
        row = self._db.execute("SELECT uuid, level, name, state, moved_from FROM cluster_bindings WHERE uuid = ?",
                               (uuid,)).fetchone()
        return ClusterRow(*row) if row else None

    def cluster_bindings(self, pending: bool = False) -> list[ClusterRow]:
        """Every cached binding, or (pending) those etcd has not heard of yet."""
        where = " WHERE state != 'bound'" if pending else ""
        return [ClusterRow(*row) for row in self._db.execute(
            f"SELECT uuid, level, name, state, moved_from FROM cluster_bindings{where} ORDER BY uuid")]  # noqa: S608

    def put_cluster_binding(self, row: ClusterRow, durable: bool = True) -> None:
        """durable=False: committed without an fsync (WAL, synchronous=NORMAL), for a row etcd itself can give
        back after a power loss (a binding etcd lists this host for): one fsync less per allocation."""
        with self._fsync(durable), self._tx():
            self._db.execute("INSERT OR REPLACE INTO cluster_bindings"
                             " (uuid, level, name, state, moved_from, updated) VALUES (?, ?, ?, ?, ?, ?)",
                             (row.uuid, row.level, row.name, row.state, row.moved_from, time.time()))

    def delete_cluster_binding(self, uuid: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM cluster_bindings WHERE uuid = ?", (uuid,))

    def unbound_assignments(self) -> list[tuple[str, str, str]]:
        """(uuid, name, level) of guests isolated here with no cluster binding recorded (a table made
        with the local backend, before [cluster] backend = "etcd")."""
        return self._db.execute("SELECT uuid, name, level FROM assignments WHERE uuid NOT IN"
                                " (SELECT uuid FROM cluster_bindings)").fetchall()


class ClusterRow(NamedTuple):
    """A cluster binding as this host knows it. state: bound (etcd lists this host), joining / leaving (this
    host must add / remove itself), moving (the guest runs with another pair: re-bind from moved_from)."""

    uuid: str
    level: str
    name: str
    state: str
    moved_from: str = ""


_A_COLS = "uuid, name, level, profile, origin, state, note, created, updated"
_C_COLS = "uuid, path, device, kind, rclass, dev, ino, expected, original, phase, real, applier"


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")


def _assignment(row: tuple[str, str, str, str, str, str, str, float, float]) -> Assignment:
    uuid, name, level, profile, origin, state, note, created, updated = row
    return Assignment(uuid=uuid, name=name, level=Level.parse(level), profile=profile, origin=Origin(origin),
                      state=GuestState(state), note=note, created=created, updated=updated)


def _claim(row: tuple[str, str, str, str, str, int, int, str, str | None, str, str, str]) -> Claim:
    uuid, path, device, kind, rclass, dev, ino, expected, original, phase, real, applier = row
    return Claim(uuid=uuid, path=path, device=device, kind=ResourceKind(kind), rclass=ResourceClass(rclass),
                 dev=dev, ino=ino, expected=expected, original=original, phase=phase, real=real,
                 applier=Applier(applier))


# SQLite's primary result codes that mean "the state directory cannot take this write" (a full disk,
# a failing one, a read-only remount): the change is not made, and the caller is told so.
_UNWRITABLE = {8: "read-only", 10: "I/O error", 13: "full", 14: "cannot open a file"}


def _unwritable(path: Path, exc: sqlite3.Error) -> StateNotWritable | None:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code not in _UNWRITABLE:
        return None
    return StateNotWritable(f"svirtd could not record the change in {path} ({_UNWRITABLE[code]}: {exc}); "
                            f"nothing was changed. Free space in {path.parent} (or mend its disk) and try "
                            "again: svirtd needs no restart")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error. A write the state directory cannot take (full,
    failing) is rolled back and raised as StateNotWritable: the caller makes no change on disk."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise (_unwritable(self._path, exc) or exc) from exc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as failed:
                self._rollback()
                raise (_unwritable(self._path, failed) or failed) from failed
        self._rollback()
        if isinstance(exc, sqlite3.Error) and (typed := _unwritable(self._path, exc)) is not None:
            raise typed from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have ended it already
                self._db.execute("ROLLBACK")
