"""A minimal asyncio D-Bus client of org.svirt.Manager1 (dbus-fast), for concurrent test traffic."""

from __future__ import annotations

from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from svirtd.ctl import unwrap as plain  # Variants -> plain values, as svirtctl prints them


class CallFailed(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


class SvirtClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.bus: MessageBus | None = None

    async def __aenter__(self) -> SvirtClient:
        self.bus = await MessageBus(bus_address=self.address).connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    async def call(self, member: str, signature: str = "", *args: Any, interface: str = "org.svirt.Manager1") -> Any:
        assert self.bus is not None
        reply = await self.bus.call(Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                                            interface=interface, member=member, signature=signature,
                                            body=list(args)))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise CallFailed(reply.error_name or "?", str(reply.body[0]) if reply.body else "")
        return plain(reply.body[0]) if reply.body else None

    async def prop(self, name: str) -> Any:
        return await self.call("Get", "ss", "org.svirt.Manager1", name, interface="org.freedesktop.DBus.Properties")
