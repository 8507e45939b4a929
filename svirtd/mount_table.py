"""The mount table, parsed once and read again only when it changes (edge: /proc/self/mountinfo).

The kernel marks /proc/self/mountinfo readable-with-priority (POLLPRI) when a mount appears or goes,
so one poll() with no timeout tells whether the cached table is still true: the filesystem type of a
file (labelable or not) and the mount a path lies on (whose storage may hang) cost no read of the
table per resource. Safe to use from worker threads.
"""

from __future__ import annotations

import os
import select
import threading
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
ALONG_KEPT = 4096  # paths whose mounts are remembered (the files of the guests being asked about)


@dataclass(frozen=True)
class Mount:
    point: str
    device: str  # major:minor
    fstype: str
    source: str
    options: tuple[str, ...]  # per-mount options (ro, nosuid...)
    super_options: tuple[str, ...]  # of the filesystem itself


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields, sep, rest = line.partition(" - ")
        mount, tail = fields.split(), rest.split()
        if not sep or len(mount) < 6 or len(tail) < 3:
            continue
        mounts.append(Mount(point=_unescape(mount[4]), device=mount[2], fstype=tail[0], source=_unescape(tail[1]),
                            options=tuple(mount[5].split(",")), super_options=tuple(tail[2].split(","))))
    return mounts


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in text:
        return text
    return text.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


class MountTable:
    def __init__(self, path: str = MOUNTINFO) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._poll = select.poll()
        self._mounts: list[Mount] = []
        self._by_device: dict[str, Mount] = {}
        self._along: dict[str, tuple[Mount, ...]] = {}  # path -> along(path), for this table only
        self._generation = 0  # bumped at each read: a mount came or went (Query's cache keys on it)

    def mounts(self) -> list[Mount]:
        with self._lock:
            self._refresh()
            return self._mounts

    def by_device(self, device: str) -> Mount | None:
        """The (last) mount of a device major:minor."""
        with self._lock:
            self._refresh()
            return self._by_device.get(device)

    def generation(self) -> int:
        """Changes whenever the table does (one poll(), no read, when it did not)."""
        with self._lock:
            self._refresh()
            return self._generation

    def mount_of(self, path: str) -> Mount | None:
        """The mount a path lies on, judged on its text (the longest mount point it is inside)."""
        best: Mount | None = None
        for m in self.mounts():
            inside = path == m.point or path.startswith(m.point.rstrip("/") + "/")
            if inside and (best is None or len(m.point) >= len(best.point)):
                best = m
        return best

    def along(self, path: str) -> tuple[Mount, ...]:
        """Every mount on a path's text: each one whose point is the path or a parent of it (hidden
        ones under a later mount on the same point included)."""
        with self._lock:
            self._refresh()
            along = self._along.get(path)
            if along is None:
                if len(self._along) >= ALONG_KEPT:
                    self._along.clear()
                along = self._along[path] = tuple(
                    m for m in self._mounts if path == m.point or path.startswith(m.point.rstrip("/") + "/"))
            return along

    def _refresh(self) -> None:
        if self._fd is not None and not self._poll.poll(0):
            return  # unchanged since the last read
        if self._fd is not None:
            self._poll.unregister(self._fd)
            os.close(self._fd)
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        # Registered after the read: the next change (only) makes the poll fire.
        self._poll.register(self._fd, select.POLLPRI | select.POLLERR)
        self._mounts = parse_mountinfo(b"".join(chunks).decode(errors="replace"))
        self._by_device = {m.device: m for m in self._mounts}
        self._along = {}
        self._generation += 1


TABLE = MountTable()
