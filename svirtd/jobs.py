"""Jobs: a long Isolate, Release or Verify as something a caller can watch and cancel (pure model, no I/O).

The bus side is svirtd/dbus_jobs.py. The worker threads of a job find it through `current_job` (a
context variable: asyncio.to_thread carries it into the thread), so the tree helper reports its progress
and sees a cancel without an argument threaded through every layer between the D-Bus method and
relabel.run_treewalk. A job counts the entries of every tree walk it makes (a job may label several
trees): FilesDone and FilesTotal are sums, and a tree's total is known once the helper has counted it.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field


class Result(enum.StrEnum):
    """How a job ended (JobRemoved's result), as systemd names a job's."""

    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class State(enum.StrEnum):
    RUNNING = "running"
    CANCELLING = "cancelling"


def fraction(done: int, total: int) -> float:
    """Progress 0..1; 0 while the total is unknown, never above 1 (the count is taken before the walk,
    which also sees what the guest creates meanwhile)."""
    return min(1.0, done / total) if total > 0 else 0.0


class Throttle:
    """At most one event per interval: ready() says whether one may go now (and counts it sent), wait()
    how long until the next may. Keeps PropertiesChanged of a job at <= 10 a second on the bus."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True

    def wait(self) -> float:
        if self._last is None:
            return 0.0
        return max(0.0, self.interval - (self._clock() - self._last))


class ProgressLines:
    """Parses what the tree helper writes on its progress fd: 'done N' (N more entries walked, from any of
    its processes) and 'total N' (the entries it counted), a line each; a line may arrive in pieces."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> Iterator[tuple[str, int]]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            word, _, number = line.partition(b" ")
            if word in (b"done", b"total") and number.isdigit():
                yield word.decode(), int(number)


@dataclass
class JobControl:
    """What a job's worker threads share with the loop: the cancel flag and the progress counters.

    on_change is called (from whatever thread counted) after every change of the counts."""

    cancellable: bool
    on_change: Callable[[], None] = lambda: None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _walks: list[list[int]] = field(default_factory=list)  # [done, total] of each tree walk

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def walk(self) -> int:
        """A new tree walk to count; its index for add()."""
        with self._lock:
            self._walks.append([0, 0])
            return len(self._walks) - 1

    def add(self, walk: int, what: str, number: int) -> None:
        """One parsed progress line of a walk: 'done' adds to it, 'total' sets it."""
        with self._lock:
            counts = self._walks[walk]
            if what == "done":
                counts[0] += number
            else:
                counts[1] = number
        self.on_change()

    def counts(self) -> tuple[int, int]:
        """(entries done, entries counted) over every walk so far."""
        with self._lock:
            return sum(w[0] for w in self._walks), sum(w[1] for w in self._walks)


@dataclass
class Job:
    """One job as its object shows it."""

    id: int
    operation: str  # isolate, release, verify
    guest: str  # the guest's UUID (as the caller named it when svirtd does not know it yet); '' for verify
    control: JobControl
    state: State = State.RUNNING

    def snapshot(self) -> dict[str, object]:
        """Every property of the job's object, as of now."""
        done, total = self.control.counts()
        return {"Id": self.id, "Operation": self.operation, "Guest": self.guest, "State": self.state.value,
                "Progress": fraction(done, total), "FilesDone": done, "FilesTotal": total,
                "Cancellable": self.control.cancellable}


# The job the running code works for (None outside a job: svirtd's own converges, the libvirt hook).
current_job: ContextVar[JobControl | None] = ContextVar("current_job", default=None)
