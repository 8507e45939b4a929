"""Telling systemd how svirtd is (Type=notify): READY, a live STATUS= line, watchdog keep-alives.

A no-op when not started by systemd (no $NOTIFY_SOCKET). The keep-alive runs on the event loop, so
a loop that stops turning (a deadlock, a SIGSTOP) stops it, and systemd restarts svirtd after
WatchdogSec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import systemd.daemon as sd_daemon

log = logging.getLogger(__name__)

STATUS_SECONDS = 2.0  # how often the STATUS= line is looked at (sent only when it changed)


def notify(state: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        sd_daemon.notify(state)
    except OSError as exc:  # the manager went away: nothing to tell, nothing to fix
        log.debug("sd_notify(%s) failed: %s", state, exc)


def watchdog_seconds() -> float:
    """The keep-alive period systemd asked for (half of WatchdogSec), 0 if none was asked for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2_000_000


class Notifier:
    """Sends WATCHDOG=1 every half watchdog period and the status line whenever it changes."""

    def __init__(self, status: Callable[[], str]) -> None:
        self._status = status
        self._last = ""
        self._task: asyncio.Task[None] | None = None

    def ready(self) -> None:
        self._last = self._status()
        notify(f"READY=1\nSTATUS={self._last}")

    def status_now(self) -> None:
        text = self._status()
        if text != self._last:
            self._last = text
            notify(f"STATUS={text}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sd-notify")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        keepalive = watchdog_seconds()
        period = min(keepalive, STATUS_SECONDS) if keepalive else STATUS_SECONDS
        while True:
            if keepalive:
                notify("WATCHDOG=1")
            self.status_now()
            await asyncio.sleep(period)
