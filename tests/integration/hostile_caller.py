"""A bus client that sends whatever it is told, as the uid it runs under (test_hostile_bus.py runs one as
root and one under setpriv as nobody): raw dbus-fast Messages, so the signature can be anything.

Protocol on stdin/stdout: a 4-byte big-endian length, then a pickled request dict (path, interface,
member, signature, body, flags); the answer is pickled the same way: kind (return, error, unsendable:
the client library refused to build it, disconnected: the bus dropped us for it, timeout), error name,
text, body and elapsed seconds. Pickle is fine here: both ends are the test's own processes.

A request with "patch": (old, new) is sent on a connection of its own, authenticated by hand, with
`old` replaced by `new` in its marshalled bytes: what no client library would send (a NUL or invalid
UTF-8 in a string, a header whose signature does not match the body). The answer is "disconnected"
when the bus dropped that connection without delivering it, else "answered".
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import struct
import sys
import time
from typing import IO, Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.constants import BusType

DEST = "org.svirt.Manager"
TIMEOUT = 10.0  # far above the 1 s the test asserts: a slow answer is reported, not lost


def read_frame(stream: IO[bytes]) -> Any:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return pickle.loads(stream.read(size))  # noqa: S301 - our own test process writes it


def write_frame(stream: IO[bytes], value: object) -> None:
    data = pickle.dumps(value)
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


async def connect(address: str) -> MessageBus:
    return await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()


async def one(bus: MessageBus, req: dict[str, Any]) -> dict[str, Any]:
    try:
        msg = Message(destination=DEST, path=req["path"], interface=req["interface"], member=req["member"],
                      signature=req["signature"], body=req["body"], flags=req.get("flags", 0))
        msg._marshall(False)  # refuse here what cannot be encoded (a lone surrogate), not mid-send
    except Exception as exc:
        return {"kind": "unsendable", "text": f"{type(exc).__name__}: {exc}"[:300], "elapsed": 0.0}
    started = time.monotonic()
    try:
        reply = await asyncio.wait_for(bus.call(msg), TIMEOUT)
    except TimeoutError:
        return {"kind": "timeout", "elapsed": time.monotonic() - started}
    except Exception as exc:  # the bus closed the connection: an invalid message (a NUL in a string)
        return {"kind": "disconnected", "text": f"{type(exc).__name__}: {exc}"[:300],
                "elapsed": time.monotonic() - started}
    elapsed = time.monotonic() - started
    if reply is None or not bus.connected:
        return {"kind": "disconnected", "text": "no reply", "elapsed": elapsed}
    if reply.message_type is MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        return {"kind": "error", "error": reply.error_name, "text": text[:2000], "text_len": len(text),
                "elapsed": elapsed}
    return {"kind": "return", "signature": reply.signature, "body": reply.body, "elapsed": elapsed}


def raw(address: str, req: dict[str, Any]) -> dict[str, Any]:
    old, new = req["patch"]
    hello = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="Hello", serial=1)
    msg = Message(destination=DEST, path=req["path"], interface=req["interface"], member=req["member"],
                  signature=req["signature"], body=req["body"], serial=2)
    data = msg._marshall(False)
    assert data.count(old) == 1 and len(old) == len(new), "the patch must hit one place and keep the length"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)  # the bus drops a malformed sender at once; a delivered message is left open
    started = time.monotonic()
    try:
        sock.connect(address.removeprefix("unix:path=").split(",")[0])
        sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        assert sock.recv(4096).startswith(b"OK"), "EXTERNAL authentication refused"
        sock.sendall(b"BEGIN\r\n" + hello._marshall(False) + data.replace(old, new))
        received = b""
        while chunk := sock.recv(65536):  # the Hello reply, NameAcquired, then EOF (or the answer: timeout)
            received += chunk
        return {"kind": "disconnected", "text": f"{len(received)} bytes before EOF",
                "elapsed": time.monotonic() - started}
    except TimeoutError:
        return {"kind": "answered", "text": "the bus kept the connection open", "elapsed": time.monotonic() - started}
    finally:
        sock.close()


async def serve(address: str) -> None:
    bus = await connect(address)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    loop = asyncio.get_running_loop()
    while True:
        req = await loop.run_in_executor(None, read_frame, stdin)
        if req is None:
            break
        answer = raw(address, req) if "patch" in req else await one(bus, req)
        if not bus.connected:
            answer["kind"] = "disconnected"
            bus = await connect(address)
        write_frame(stdout, answer)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
