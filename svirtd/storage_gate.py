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
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import StorageNotResponding
from .mount_table import TABLE, MountTable

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # a hung mount is asked again after this long (doubling, up to MAX_RETRY_SECONDS)
MAX_RETRY_SECONDS = 60.0
# The helper: stdlib only, no site packages (starts in ~15 ms); paths NUL-separated, one request a line.
PROBER = (
    "import os, sys\n"
    "for line in sys.stdin:\n"
    "    for p in line.rstrip('\\n').split('\\0'):\n"
    "        try:\n"
    "            os.stat(p)\n"
    "        except OSError:\n"
    "            pass\n"
    "    sys.stdout.write('ok\\n')\n"
    "    sys.stdout.flush()\n"
)


@dataclass
class _Mount:
    point: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    proc: asyncio.subprocess.Process | None = None
    hung_since: float = 0.0  # wall clock, for messages
    retry_at: float = 0.0  # monotonic
    backoff: float = RETRY_SECONDS


class StorageGate:
    def __init__(self, timeout: float, table: MountTable = TABLE) -> None:
        self.timeout = timeout
        self._table = table
        self._mounts: dict[str, _Mount] = {}

    async def unresponsive(self, paths: Iterable[str]) -> dict[str, str]:
        """path -> why, for the paths whose storage does not answer (never raises)."""
        groups: dict[str, list[str]] = {}
        for path in paths:
            if not path.startswith("/") or "\n" in path or "\0" in path:
                continue  # not a file (a network disk, a hostdev address...), or refused by the path policy
            mount = self._table.mount_of(path)
            groups.setdefault(mount.point if mount is not None else "/", []).append(path)
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

    async def close(self) -> None:
        for m in self._mounts.values():
            await _kill(m)

    async def _answers(self, point: str, paths: list[str]) -> bool:
        m = self._mounts.setdefault(point, _Mount(point))
        if m.hung_since and time.monotonic() < m.retry_at:
            return False
        async with m.lock:  # one question at a time per mount; later askers see its verdict
            if m.hung_since and time.monotonic() < m.retry_at:
                return False
            answered = await self._ask(m, paths)
        if answered and m.hung_since:
            log.warning("the storage mounted on %s answers again", point)
            m.hung_since, m.backoff = 0.0, RETRY_SECONDS
        elif not answered:
            if not m.hung_since:
                m.hung_since = time.time()
                log.error("the storage mounted on %s did not answer within %g s: guests with files there are "
                          "refused until it does", point, self.timeout)
            else:
                m.backoff = min(m.backoff * 2, MAX_RETRY_SECONDS)
            m.retry_at = time.monotonic() + m.backoff
        return answered

    async def _ask(self, m: _Mount, paths: list[str]) -> bool:
        try:
            if m.proc is None or m.proc.returncode is not None:
                m.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", "-c", PROBER, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd="/")
            assert m.proc.stdin is not None and m.proc.stdout is not None
            m.proc.stdin.write("\0".join(paths).encode() + b"\n")
            await asyncio.wait_for(m.proc.stdin.drain(), self.timeout)
            return await asyncio.wait_for(m.proc.stdout.readline(), self.timeout) == b"ok\n"
        except (TimeoutError, OSError):
            await _kill(m)  # it waits in the kernel for the storage: SIGKILL ends that wait
            return False


async def _kill(m: _Mount) -> None:
    proc, m.proc = m.proc, None
    if proc is not None and proc.returncode is None:
        proc.kill()
        await proc.wait()
