"""A polkit text agent for svirtctl's own process, as systemctl spawns one.

polkit asks the caller's authentication agent for a password only when the call carries
ALLOW_INTERACTIVE_AUTHORIZATION. A desktop session has an agent; an ssh or console session has
none, so svirtctl starts `pkttyagent` (registered for its parent process, svirtctl: it answers for
svirtctl's calls only) when it may ask: stdin is a terminal, --no-ask-password was not given, and
the caller is not root (svirtd never asks polkit about root).

Unlike systemctl, without --fallback: with it, polkitd 122 never asked the agent on a host without
logind (measured on Debian 12), and an agent scoped to one process replaces nobody else's anyway.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from types import TracebackType

PKTTYAGENT = "pkttyagent"
READY_TIMEOUT = 10.0  # registering takes milliseconds; this only bounds a polkitd that does not answer


def may_ask_password(no_ask_password: bool) -> bool:
    """Whether svirtctl may let polkit ask for a password (and sets the header flag saying so)."""
    return not no_ask_password and sys.stdin.isatty()


class PolkitAgent:
    """`with PolkitAgent(address, enabled):` runs pkttyagent while the block runs; a no-op when disabled,
    as root, or without pkttyagent."""

    def __init__(self, bus_address: str | None, enabled: bool) -> None:
        self.bus_address = bus_address
        self.enabled = enabled and os.geteuid() != 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PolkitAgent:
        binary = shutil.which(PKTTYAGENT) if self.enabled else None
        if binary is None:
            return self
        env = dict(os.environ)
        if self.bus_address:  # the agent must register with the polkitd of svirtd's bus
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus_address
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen([binary, "--notify-fd", str(write_fd)],
                                         pass_fds=(write_fd,), env=env)
        except OSError:
            os.close(read_fd)
            return self
        finally:
            os.close(write_fd)
        try:
            _wait_closed(read_fd, READY_TIMEOUT)  # pkttyagent closes it once registered (or exits)
        finally:
            os.close(read_fd)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _wait_closed(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if readable and not os.read(fd, 64):
            return
