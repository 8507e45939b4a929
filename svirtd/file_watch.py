"""Has anything a report read on disk changed since? (edge: inotify, through ctypes)

Query reports each resource's on-disk label. Re-reading them per call costs a worker-thread hop; the
kernel can instead say when one may have changed: setxattr/removexattr (chcon, setfattr, restorecon,
libvirt) raise IN_ATTRIB on the file's inode, whichever path or mount namespace it was changed through,
and a file replaced, moved, deleted or created under the name raises an event on its directory. So a
report's labels stay true while no event arrived for:

- the file itself (IN_ATTRIB, IN_DELETE_SELF, IN_MOVE_SELF; IN_IGNORED when its watch goes), and
- each directory on the path's text, for the one name on the way (IN_CREATE, IN_DELETE, IN_MOVED_*),
  and for the directory itself (its own move or deletion): a swapped component or symlink is seen.

What inotify does not see, callers must key on themselves: mounts (no event at all: the mount table's
generation), storage whose changes do not go through this kernel (network and FUSE filesystems: only
files proven on local filesystems, local_proof.py, may be watched), and a lost event queue
(IN_Q_OVERFLOW: everything counts as changed). Watches are registered BEFORE the labels are read: a
change between the registration and the read is in the queue, and only spends one cache entry.

Events are read when asked (`unchanged`), from a non-blocking descriptor: one read(2) that finds nothing
when nothing happened, on any thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
import weakref
from collections.abc import Iterable
from typing import Any

_IN_ATTRIB = 0x4
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_DONT_FOLLOW = 0x2000000
# One mask for files and directories (a watch is per inode: a later add replaces the mask). No IN_MODIFY:
# a running guest's writes would flood the queue, and a report reads no content.
MASK = (_IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
        | _IN_DONT_FOLLOW)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
WATCHES_KEPT = 16384  # beyond this many (wd, name) interests every key is dropped and watched afresh

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

Interest = tuple[int, bytes]  # (watch descriptor, the name in that directory; b"" for the inode itself)


class FileWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None  # opened at the first watch(); stays None where inotify cannot be had
        self._tried = False
        self._closer: weakref.finalize[Any, Any] | None = None
        self._seq = 0  # counts batches of events that changed something
        self._all_changed_at = 0
        self._changed_at: dict[str, int] = {}  # key -> seq of its last change
        self._interest: dict[Interest, set[str]] = {}  # -> the keys that read through it
        self._of_key: dict[str, set[Interest]] = {}
        self._incarnation = 0  # bumped when the descriptor is replaced

    def watch(self, key: str, paths: Iterable[str]) -> int | None:
        """Watch absolute, normalized paths (and each directory on their way) for key, BEFORE reading
        what is to be kept; returns the token for unchanged(), or None when they cannot be watched
        (no inotify, a path that is not absolute, the kernel's watch limit)."""
        with self._lock:
            if not self._tried:
                self._tried = True
                self._open()
            if self._fd is not None and len(self._interest) > WATCHES_KEPT:
                self._drop_all()
            fd, incarnation = self._fd, self._incarnation
            self._drop(key)
        if fd is None:
            return None
        # The lookups happen outside the lock: a disk slow to answer holds this thread, never the
        # event loop asking unchanged(). An event drained meanwhile for a watch not yet recorded is a
        # change made before the labels are read: nothing is lost.
        wanted: set[Interest] = set()
        for path in paths:
            found = _watch_path(fd, path)
            if found is None:
                return None
            wanted |= found
        with self._lock:
            if self._fd != fd or self._incarnation != incarnation:
                return None  # started afresh meanwhile: these descriptors belong to the old one
            # Queued events are changes made before the read that follows: spent on earlier interests
            # only, before these are recorded (else a key would be dropped by its own past).
            self._drain()
            for interest in wanted:
                self._interest.setdefault(interest, set()).add(key)
            self._of_key[key] = wanted
            return self._seq

    def unchanged(self, key: str, token: int) -> bool:
        """Nothing key watched has changed since watch() returned token (never waits)."""
        with self._lock:
            if self._fd is None:
                return False
            self._drain()
            return max(self._changed_at.get(key, 0), self._all_changed_at) <= token and key in self._of_key

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def close(self) -> None:
        with self._lock:
            self._shut()
            self._tried = True
            self._interest.clear()
            self._of_key.clear()

    # -- under the lock -----------------------------------------------------------------------------

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            self._seq += 1
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    self._all_changed_at = self._seq
                    continue
                keys = set(self._interest.get((wd, name), ()))
                if mask & _IN_IGNORED:  # the inode went (or was unmounted): every interest through it
                    keys |= {k for (w, _n), ks in self._interest.items() if w == wd for k in ks}
                for key in keys:
                    self._changed_at[key] = self._seq
                    self._drop(key)

    def _drop(self, key: str) -> None:
        for interest in self._of_key.pop(key, ()):
            keys = self._interest.get(interest)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._interest[interest]
        # Watches are not removed one by one (a wd may serve other keys); _drop_all starts afresh.

    def _drop_all(self) -> None:
        self._shut()
        self._open()
        self._all_changed_at = self._seq = self._seq + 1
        self._interest.clear()
        self._of_key.clear()

    def _open(self) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fd = fd if fd >= 0 else None  # EMFILE (max_user_instances): nothing is kept, all is read
        self._incarnation += 1
        if self._fd is not None:  # a Manager let go of (tests make many) gives its descriptor back
            self._closer = weakref.finalize(self, os.close, self._fd)

    def _shut(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the descriptor, once
            self._closer = None
        self._fd = None

def _watch_path(fd: int, path: str) -> set[Interest] | None:
    """Watch a path's inode and every directory on its text for the name on the way."""
    if not path.startswith("/") or "\0" in path:
        return None
    out: set[Interest] = set()
    directory = "/"
    for name in (n for n in path.split("/") if n):
        wd = _add(fd, directory)
        if wd is None:
            return None
        if wd < 0:  # not there (any more): the interest of the directory above covers its creation
            return out
        out |= {(wd, b""), (wd, os.fsencode(name))}
        directory = os.path.join(directory, name)
    wd = _add(fd, directory)
    if wd is None:
        return None
    if wd >= 0:
        out.add((wd, b""))
    return out


def _add(fd: int, path: str) -> int | None:
    """The watch descriptor; -1 when the path does not exist (yet); None when it cannot be watched."""
    wd = _libc.inotify_add_watch(fd, os.fsencode(path), MASK)
    if wd >= 0:
        return int(wd)
    return -1 if ctypes.get_errno() in (errno.ENOENT, errno.ENOTDIR) else None
