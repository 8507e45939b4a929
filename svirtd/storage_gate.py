"""Storage that stops answering (a dead NFS server, a stopped FUSE daemon) must not stop svirtd.

Every lookup on such storage blocks the thread that makes it until the server answers, possibly
never; with one worker thread per guest on it, a few dozen such guests would take every thread svirtd
has and stall every other guest's start (libvirt's hook waits on svirtd). So before svirtd's threads
touch a guest's files, the mount each file lies on is asked first, by a killable helper with a
deadline: a small process per mount in use, which stat()s the paths it is sent and says so. One that
has not answered within io_timeout is SIGKILLed (a process waiting on NFS or FUSE dies of SIGKILL; a
thread cannot be killed) and its mount is marked hung: every request touching it then fails at once
with StorageNotResponding, without a thread or a process, until it is asked again (after 5 s,
doubling up to a minute). Guests on one hung mount cost one helper process, whatever their number.
A question to a live mount is one round trip on a pipe (tens of microseconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import FAILING_STORAGE_ERRNOS, StorageFailed, StorageNotResponding
from .local_proof import provably_local, text_is_local
from .mount_table import TABLE, MountTable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Read-only work in threads after the mount answered gets this many io_timeouts (several lookups).
READ_DEADLINE_FACTOR = 3
RETRY_SECONDS = 5.0  # a hung mount is asked again after this long (doubling, up to MAX_RETRY_SECONDS)
MAX_RETRY_SECONDS = 60.0
# Worker threads that may do read-only work on one mount at a time. Storage that dies with work in flight
# keeps those threads in the kernel until it answers again: this caps what one dead mount can hold,
# whatever the number of guests on it (the I/O pool has service.IO_THREADS for everything else).
THREADS_PER_MOUNT = 8
# The helper: stdlib only, no site packages (starts in ~15 ms); paths NUL-separated, one request a line.
# statx(AT_STATX_FORCE_SYNC) asks the server itself: a plain stat() is answered from the kernel's
# attribute cache (FUSE attr_timeout, NFS actimeo) for a while after the server stopped, so a gate that
# stat()ed would let through work whose next open() or uncached lookup then waits on the dead server.
PROBER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "buf = ctypes.create_string_buffer(256)\n"
    "for line in sys.stdin:\n"
    "    for p in line.rstrip('\\n').split('\\0'):\n"
    "        # AT_FDCWD, AT_SYMLINK_NOFOLLOW | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS\n"
    "        if libc.statx(-100, os.fsencode(p), 0x100 | 0x2000, 0x7ff, buf) and ctypes.get_errno() == 38:\n"
    "            try:\n"
    "                os.stat(p)  # ENOSYS, no statx (an old kernel): the best there is\n"
    "            except OSError:\n"
    "                pass\n"
    "    sys.stdout.write('ok\\n')\n"
    "    sys.stdout.flush()\n"
)


@dataclass
class _Mount:
    point: str
    proc: subprocess.Popen[bytes] | None = None
    hung_since: float = 0.0  # wall clock, for messages
    retry_at: float = 0.0  # monotonic
    backoff: float = RETRY_SECONDS
    lock: asyncio.Lock | None = None  # created on the loop that uses it
    threads: asyncio.Semaphore | None = None  # THREADS_PER_MOUNT, on the same loop


class StorageGate:
    def __init__(self, timeout: float, table: MountTable = TABLE) -> None:
        self.timeout = timeout
        self._table = table
        self._mounts: dict[str, _Mount] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._killed: list[subprocess.Popen[bytes]] = []  # reaped once they are gone
        self.hangs = 0  # mounts marked hung so far: what was read before one was is not kept (Query's cache)

    @property
    def table(self) -> MountTable:
        return self._table

    async def unresponsive(self, paths: Iterable[str]) -> dict[str, str]:
        """path -> why, for the paths whose storage does not answer (never raises)."""
        files = _files(paths)
        if any(text_is_local(p, self._table) and not self._known_hung(p) for p in files):
            # Proven local (local_proof.py): no helper question, one thread hop for all of them. A
            # local disk that does not answer the proof in time: everything is asked the slow way.
            try:
                proven = await asyncio.wait_for(asyncio.to_thread(self._proven, files), self.timeout)
            except TimeoutError:
                proven = set()
            files = [p for p in files if p not in proven]
        groups: dict[str, list[str]] = {}
        for path in files:
            groups.setdefault(self._point(path), []).append(path)
        verdicts = await asyncio.gather(*(self._answers(point, members) for point, members in groups.items()))
        out: dict[str, str] = {}
        for (point, members), answered in zip(groups.items(), verdicts, strict=True):
            if not answered:
                since = time.strftime("%H:%M:%S", time.localtime(self._mounts[point].hung_since))
                for path in members:
                    out[path] = (f"the storage mounted on {point} has not answered since {since} (a dead NFS "
                                 "server, a stopped FUSE daemon?); svirtd asks it again and goes on once it answers")
        return out

    async def ensure(self, paths: Iterable[str], what: str) -> None:
        """StorageNotResponding naming the storage when some of the paths lie on storage that hangs."""
        hung = await self.unresponsive(paths)
        if hung:
            path, why = next(iter(hung.items()))
            more = f" (and {len(hung) - 1} more of its files)" if len(hung) > 1 else ""
            raise StorageNotResponding(f"{what}: {path}{more}: {why}; nothing was changed")

    async def read(self, paths: Iterable[str], what: str, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread, for read-only work on files (lookups, labels, headers), with a
        deadline: storage that dies between the question above and this work (a request in flight when
        the NFS server goes) costs that one thread, and the caller is answered StorageNotResponding at
        the deadline, its locks released, the mount marked hung for everyone after it."""
        points = sorted({self._point(p) for p in paths if p.startswith("/")})
        try:
            return await asyncio.wait_for(self._in_thread(points, fn, *args),
                                          self.timeout * READ_DEADLINE_FACTOR)
        except TimeoutError:
            for point in points:
                self._mark_hung(self._mounts.setdefault(point, _Mount(point)))
            where = ", ".join(sorted(points)) or "?"
            raise StorageNotResponding(f"{what}: its files on {where} did not answer within "
                                       f"{self.timeout * READ_DEADLINE_FACTOR:g} s; nothing was changed") from None
        except OSError as exc:
            if exc.errno not in FAILING_STORAGE_ERRNOS:
                raise
            raise StorageFailed(f"{what}: {exc.filename or 'one of its files'}: the storage answered with an "
                                f"error ({exc.strerror}: a failing disk, a broken network mount?); nothing was "
                                "changed. Mend the storage and isolate the guest again") from exc

    async def _in_thread(self, points: list[str], fn: Callable[..., T], *args: Any) -> T:
        """fn in a worker thread holding a slot of each mount it reads (taken in order: no deadlock). A
        slot is given back when the THREAD ends, not when the caller stops waiting for it."""
        held: list[asyncio.Semaphore] = []
        try:
            for point in points:
                m = self._mount(point)
                if m.hung_since and time.monotonic() < m.retry_at:
                    continue  # known hung: callers asked unresponsive() first and leave its files alone
                assert m.threads is not None
                await m.threads.acquire()
                held.append(m.threads)
        except BaseException:
            for sem in held:
                sem.release()
            raise
        def give_back(_done: object) -> None:
            for sem in held:
                sem.release()

        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        work.add_done_callback(give_back)
        return await asyncio.shield(work)

    def _mount(self, point: str) -> _Mount:
        """The mount's record, with its lock and thread slots on the running loop."""
        m = self._mounts.setdefault(point, _Mount(point))
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # locks belong to one event loop (svirtd has one; tests several)
            for other in self._mounts.values():
                other.lock, other.threads = None, None
            self._loop = loop
        if m.lock is None:
            m.lock = asyncio.Lock()
        if m.threads is None:
            m.threads = asyncio.Semaphore(THREADS_PER_MOUNT)
        return m

    async def read_local(self, paths: Iterable[str], what: str, fn: Callable[..., T],
                         *args: Any) -> tuple[bool, T | None]:
        """The fast path of read() after ensure(): (True, fn(*args)) in ONE worker-thread hop, without
        the helper's question, when every path is provably on local storage (local_proof.py) -- decided
        in that thread, right before fn runs; (False, None), fn not run, when one is not (then ensure()
        and read() as usual). The same deadline as read(). fn runs on the loop itself when no path names a
        file (it then reads nothing: emulated devices only)."""
        paths = list(paths)
        if not any(p.startswith("/") for p in paths):
            return True, fn(*args)  # nothing on any storage (a guest without disks): no thread to wait for
        files = list(dict.fromkeys(_files(paths)))  # a claimed file is named twice (decision and claim)
        if not all(text_is_local(p, self._table) for p in files):
            return False, None  # decided on the table alone: no thread
        if any(self._known_hung(p) for p in files):
            # read() takes no thread slot on a mount known hung (its callers asked unresponsive() and
            # leave its files alone): fn here would not, so each call would hold one more I/O thread.
            return False, None

        def proven_then_fn() -> tuple[bool, T | None]:
            if len(self._proven(files)) != len(files):
                return False, None
            return True, fn(*args)

        return await self.read(files, what, proven_then_fn)

    def _proven(self, files: list[str]) -> set[str]:
        """In a worker thread: the paths proven local (local_proof.py). A file on a mount known hung is
        not looked at: its lookup could wait as long as the disk does."""
        return {p for p in files if not self._known_hung(p) and provably_local(p, self._table)}

    def _known_hung(self, path: str) -> bool:
        """Is path on a mount marked hung whose next question is not due yet (local storage hangs too:
        ext4 on iSCSI, multipath queueing without a path)?"""
        m = self._mounts.get(self._point(path))
        return m is not None and bool(m.hung_since) and time.monotonic() < m.retry_at

    def _point(self, path: str) -> str:
        mount = self._table.mount_of(path)
        return mount.point if mount is not None else "/"

    def close(self) -> None:
        for m in self._mounts.values():
            self._kill(m)
        self._reap()

    async def _answers(self, point: str, paths: list[str]) -> bool:
        m = self._mount(point)
        if m.hung_since and time.monotonic() < m.retry_at:
            return False
        assert m.lock is not None
        async with m.lock:  # one question at a time per mount; later askers see its verdict
            if m.hung_since and time.monotonic() < m.retry_at:
                return False
            answered = await self._ask(m, paths)
        if answered and m.hung_since:
            log.warning("the storage mounted on %s answers again", point)
            m.hung_since, m.backoff = 0.0, RETRY_SECONDS
        elif not answered:
            self._mark_hung(m)
        return answered

    def _mark_hung(self, m: _Mount) -> None:
        self.hangs += 1
        if not m.hung_since:
            m.hung_since = time.time()
            log.error("the storage mounted on %s did not answer within %g s: guests with files there are refused "
                      "until it does", m.point, self.timeout)
        else:
            m.backoff = min(m.backoff * 2, MAX_RETRY_SECONDS)
        m.retry_at = time.monotonic() + m.backoff

    async def _ask(self, m: _Mount, paths: list[str]) -> bool:
        self._reap()
        try:
            if m.proc is None or m.proc.poll() is not None:
                m.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", PROBER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
                assert m.proc.stdout is not None
                os.set_blocking(m.proc.stdout.fileno(), False)
            assert m.proc.stdin is not None and m.proc.stdout is not None
            for chunk in _chunks(paths):
                # The helper has read every earlier request (it answered them): a chunk this size fits
                # the empty pipe, so the write never waits for the helper on the event loop.
                m.proc.stdin.write(chunk)
                m.proc.stdin.flush()
                if await asyncio.wait_for(_read_line(m.proc.stdout.fileno()), self.timeout) != b"ok\n":
                    raise OSError("the storage helper answered something else")
            return True
        except (TimeoutError, OSError):
            self._kill(m)  # it waits in the kernel for the storage: SIGKILL ends that wait
            return False
        except asyncio.CancelledError:
            self._kill(m)  # its answer would be read by the next question as its own
            raise

    def _kill(self, m: _Mount) -> None:
        proc, m.proc = m.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            self._killed.append(proc)

    def _reap(self) -> None:
        self._killed = [p for p in self._killed if p.poll() is None]


def _files(paths: Iterable[str]) -> list[str]:
    """The paths that name files: not a network disk or a hostdev address, nothing the path policy
    refuses anyway (newline, NUL)."""
    return [p for p in paths if p.startswith("/") and "\n" not in p and "\0" not in p]


CHUNK_BYTES = 32 * 1024  # half a pipe


def _chunks(paths: list[str]) -> list[bytes]:
    """Requests of at most CHUNK_BYTES each (a path longer than that is refused by the path policy)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for path in paths:
        encoded = path.encode()[:CHUNK_BYTES - 2]
        if current and size + len(encoded) + 1 > CHUNK_BYTES - 1:
            out.append(b"\0".join(current) + b"\n")
            current, size = [], 0
        current.append(encoded)
        size += len(encoded) + 1
    if current:
        out.append(b"\0".join(current) + b"\n")
    return out


async def _read_line(fd: int) -> bytes:
    """One line from a non-blocking pipe, waiting on the event loop (no thread)."""
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            raise OSError("the storage helper exited")
        data += chunk
    return data


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
