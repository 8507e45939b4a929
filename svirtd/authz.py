"""Who may call what. The caller's identity always comes from the bus, never from the caller."""

from __future__ import annotations

import enum

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from .errors import AccessDenied


class Action(enum.StrEnum):
    QUERY = "org.svirt.manager1.query"
    ISOLATE = "org.svirt.manager1.isolate"
    RELEASE = "org.svirt.manager1.release"


async def caller_uid(bus: MessageBus, sender: str) -> int:
    """The Unix uid behind a unique bus name, as the bus daemon knows it."""
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        member="GetConnectionUnixUser", signature="s", body=[sender],
    ))
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise AccessDenied(f"cannot establish who {sender} is; refusing")
    return int(reply.body[0])


class Authorizer:
    """Root-only for state-changing actions; anyone may query."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def check(self, sender: str | None, action: Action, guest: str = "") -> None:
        if action is Action.QUERY:
            return
        if not sender:
            raise AccessDenied("the call carries no sender; refusing")
        uid = await caller_uid(self._bus, sender)
        if uid != 0:
            what = action.value.rsplit(".", 1)[1]
            raise AccessDenied(f"only root may {what} guests (caller uid {uid})")
