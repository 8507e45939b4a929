"""sd_notify never blocks svirtd's event loop: a notify socket whose reader is slow or gone (a queue of
net.unix.max_dgram_qlen datagrams, 10 by default) used to block sendto, and with it every D-Bus answer and
the libvirt keepalive (found by bench/load.py: svirtd froze with 440 guests not isolated). A datagram that
does not fit is dropped; the status line is sent again at the next look, READY=1 too."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd import sd_notify


@pytest.fixture
def full_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound notify socket nobody reads, its queue filled to the brim."""
    path = tmp_path / "notify.sock"
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(path))
    monkeypatch.setitem(sd_notify._ENV, "NOTIFY_SOCKET", str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                filler.sendto(b"X=1", str(path))
    yield reader
    reader.close()


def drain(reader: socket.socket) -> list[str]:
    reader.setblocking(False)
    got = []
    while True:
        try:
            got.append(reader.recv(4096).decode())
        except BlockingIOError:
            return got


def within(seconds: float, fn: object) -> object:
    """fn() in a thread; its result, or a failure if it has not returned within `seconds` (blocked)."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)  # type: ignore[operator]
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "sd_notify blocked on a full notify socket"
    return result[0]


def test_notify_on_a_full_socket_returns_at_once_and_says_so(full_socket: socket.socket) -> None:
    assert within(2, lambda: sd_notify.notify("STATUS=busy")) is False
    drain(full_socket)
    assert sd_notify.notify("STATUS=busy") is True
    assert drain(full_socket) == ["STATUS=busy"]


def test_a_status_or_ready_that_did_not_fit_is_sent_at_the_next_look(full_socket: socket.socket) -> None:
    status = ["3 guests isolated"]
    notifier = sd_notify.Notifier(lambda: status[0])
    within(2, notifier.ready)
    within(2, notifier.status_now)
    assert not any("guests" in m for m in drain(full_socket))  # nothing fitted
    notifier.status_now()
    assert drain(full_socket) == ["READY=1\nSTATUS=3 guests isolated"]
    notifier.status_now()  # unchanged and told: nothing
    status[0] = "4 guests isolated"
    notifier.status_now()
    assert drain(full_socket) == ["STATUS=4 guests isolated"]
