"""Opening svirtd's state database, or refusing to: a database svirtd cannot trust is never replaced.

The database is the only record of which guest holds which category pair and of the labels to put
back. Starting afresh over a corrupt, unreadable or foreign one would forget every pair while the
guests' files still carry them, and hand the same pairs out again. So svirtd refuses to start
(UnusableStateDatabase: exit 78, the unit does not restart it) with a message that names the file and
what the admin can do. A new database is built aside and renamed into place, so an empty file at the
path is never svirtd's own and is refused like any other damage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
from pathlib import Path

ADVICE = ("svirtd will not start without it: it holds every guest's category pair and the labels to restore, "
          "and starting afresh could give two guests the same pair. Restore it from a backup (stop svirtd, copy "
          "the backup to {path}, start svirtd), or, only if every guest is to be isolated anew, move it aside "
          "(mv {path} {path}.broken) and start svirtd: it then builds a new table from the guests libvirt knows")


class UnusableStateDatabase(Exception):
    """The state database exists but cannot be used as it is; the message says why and what to do."""

    def __init__(self, path: Path, why: str, advice: str | None = None) -> None:
        self.path = path
        super().__init__(f"state database {path}: {why}. " + (advice or ADVICE).format(path=path))


def open_state_db(path: Path, check_same_thread: bool = False) -> sqlite3.Connection:
    """A connection to the database at path, created (atomically) if there is none; UnusableStateDatabase
    if something is there that svirtd cannot read, write or trust."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _create(path)
        st = os.stat(path)
    except OSError as exc:
        raise UnusableStateDatabase(path, f"cannot be looked at ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise UnusableStateDatabase(path, "is a directory, not a database")
    if not stat.S_ISREG(st.st_mode):
        raise UnusableStateDatabase(path, "is not a regular file")
    if st.st_size == 0:
        raise UnusableStateDatabase(path, "is empty (svirtd never leaves an empty database: it was truncated)")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UnusableStateDatabase(
                path, f"cannot be opened for reading and writing ({exc.strerror}; owner uid {st.st_uid}, mode "
                      f"{stat.S_IMODE(st.st_mode):o})",
                f"svirtd runs as root without CAP_DAC_OVERRIDE: give it back with `chown root:root {{path}} && "
                f"chmod 600 {{path}}` (and the same for {path.name}-wal and {path.name}-shm if present)") from exc
        raise UnusableStateDatabase(path, f"cannot be opened ({exc.strerror})") from exc
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        found = db.execute("PRAGMA quick_check").fetchall()
        if found != [("ok",)]:
            raise UnusableStateDatabase(path, "is damaged (" + "; ".join(str(r[0]) for r in found[:3]) + ")")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise UnusableStateDatabase(path, f"is not a usable database ({exc})") from exc
    except BaseException:
        db.close()
        raise
    return db


def _create(path: Path) -> None:
    """An empty WAL database at path, made aside and renamed into place."""
    aside = path.with_name(path.name + ".new")
    for leftover in (aside, aside.with_name(aside.name + "-wal"), aside.with_name(aside.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    db = sqlite3.connect(aside, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # writes the header: the file is a database from here on
    finally:
        db.close()
    aside.chmod(0o600)
    fd = os.open(aside, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(aside, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
