"""Telling systemd how svirtd is (Type=notify): READY, a live STATUS= line, watchdog keep-alives.

A no-op when not started by systemd (no $NOTIFY_SOCKET). The datagram is sent here (sd_notify's
protocol is one sendto), so the environment can be taken out of the process (adopt_environment).
The keep-alive runs on the event loop, so a loop that stops turning (a deadlock, a SIGSTOP) stops
it, and systemd restarts svirtd after WatchdogSec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

STATUS_SECONDS = 2.0  # how often the STATUS= line is looked at (sent only when it changed)


# What systemd told this process ($NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID), kept here and taken out
# of the environment: svirtd's helper processes (the storage prober, the tree walker) must not inherit
# a channel to systemd that speaks for svirtd.
_ENV: dict[str, str] = {}
_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def adopt_environment() -> None:
    for name in _NAMES:
        value = os.environ.pop(name, None)
        if value is not None:
            _ENV[name] = value


def _get(name: str) -> str:
    return _ENV.get(name) or os.environ.get(name, "")


def notify(state: str) -> bool:
    """Send one datagram; True if it was taken. Never waits: it is sent from the event loop, and a reader
    that lags (the socket's queue holds net.unix.max_dgram_qlen datagrams, 10 unless systemd raised it)
    must not stop svirtd's bus answers and libvirt keepalives. A datagram that did not fit is dropped."""
    address = _get("NOTIFY_SOCKET")
    if not address:
        return True
    target = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, target)
        return True
    except OSError as exc:  # the manager is busy or went away: nothing to fix here
        log.debug("sd_notify(%s) failed: %s", state, exc)
        return False


def watchdog_seconds() -> float:
    """The keep-alive period systemd asked for (half of WatchdogSec), 0 if none was asked for us."""
    usec = _get("WATCHDOG_USEC")
    pid = _get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2_000_000


class Notifier:
    """Sends WATCHDOG=1 every half watchdog period and the status line whenever it changes."""

    def __init__(self, status: Callable[[], str]) -> None:
        self._status = status
        self._last = ""  # the status line systemd has
        self._ready = False  # READY=1 is due (sent again with the status until it is taken)
        self._task: asyncio.Task[None] | None = None

    def ready(self) -> None:
        self._ready = True
        self.status_now()

    def status_now(self) -> None:
        text = self._status()
        due = text != self._last or self._ready
        if due and notify(f"READY=1\nSTATUS={text}" if self._ready else f"STATUS={text}"):
            self._last, self._ready = text, False

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
            try:
                self.status_now()
            except Exception:  # the keep-alives go on: the loop turns, svirtd is alive
                log.exception("computing the status line failed")
            await asyncio.sleep(period)
