"""svirtd's bus socket as dbus-fast's writer sees it: a full socket wrote nothing, it is not broken.

dbus-fast writes a message at once when its queue is empty, and waits for the socket to be writable only
after a partial write; the EAGAIN of a socket that is already full (dbus-daemon has not read what came
before) ends in its catch-all, which closes the connection (python-dbus-next#153, still in dbus-fast 5.2).
Under a burst (1,000 guests defined at once: a signal or two per guest, replies to many clients) svirtd
lost the bus and exited. Here such a send wrote 0 bytes, and the writer waits for writability as after a
partial write."""

from __future__ import annotations

import socket
from typing import Any


class PatientSocket:
    """The connection's socket, with send() returning 0 instead of raising BlockingIOError."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:  # sendmsg (file descriptors: not used by svirtd), fileno...
        return getattr(self._sock, name)


def make_patient(bus: Any) -> None:
    """Give the connected bus's writer the patient socket (dbus-fast's aio MessageBus, once connected)."""
    writer = getattr(bus, "_writer", None)
    if writer is not None and isinstance(getattr(writer, "sock", None), socket.socket):
        writer.sock = PatientSocket(writer.sock)
