"""Verify on demand, bounded: one proof at a time however many callers ask, and a recent one reused.

The proof is O(guests^2) policy decisions plus a libvirt listing and a look at every resource on disk
(1,000 guests: about 50 s of CPU). Callers that ask while a proof runs share it; a caller that does not
insist on a new one (every caller but root) gets the last proof if it is younger than RECENT seconds,
whoever started it (the automatic proof after a libvirt reconnect included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .manager import VerifyResult

log = logging.getLogger(__name__)

RECENT = 5.0  # seconds a proof is answered as is


class VerifyGate:
    def __init__(self, prove: Callable[[], Awaitable[VerifyResult]], last: Callable[[], VerifyResult | None],
                 recent: float = RECENT, clock: Callable[[], float] = time.time) -> None:
        self._prove = prove
        self._last = last
        self._recent = recent
        self._clock = clock  # the clock VerifyResult.at is read from
        self._running: asyncio.Task[VerifyResult] | None = None

    async def result(self, new: bool = False) -> VerifyResult:
        """The last proof if it is recent and `new` is false, else the one running, else a new one."""
        last = self._last()
        if not new and last is not None and 0 <= self._clock() - last.at < self._recent:
            log.debug("Verify: answered with the proof of %.1f s ago", self._clock() - last.at)
            return last
        if self._running is None:
            self._running = asyncio.create_task(self._run(), name="verify")
            self._running.add_done_callback(self._finished)
        else:
            log.debug("Verify: joined the proof in progress")
        # Shielded: a caller that goes away does not cancel the proof the others wait for.
        return await asyncio.shield(self._running)

    async def _run(self) -> VerifyResult:
        return await self._prove()

    def _finished(self, task: asyncio.Task[VerifyResult]) -> None:
        """The next call starts a new proof (also after a cancelled one, say at shutdown). A failure is
        marked seen: the callers that waited got it, and if all went away asyncio would warn."""
        if self._running is task:
            self._running = None
        if not task.cancelled():
            task.exception()
