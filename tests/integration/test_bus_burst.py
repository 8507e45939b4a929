"""A burst of messages on svirtd's bus connection (1,000 guests defined at once: InterfacesAdded and
PropertiesChanged for each, with replies to 100 clients) fills the socket to dbus-daemon. dbus-fast took
the EAGAIN of a full socket for a broken connection (python-dbus-next#153, still in dbus-fast 5.2): svirtd
lost the bus and exited (found by bench/load.py). Real dbus-daemon, svirtd's own bus class."""

from __future__ import annotations

import asyncio

import pytest
from dbus_fast import Message, MessageType

from svirtd.dbus_guests import ObjectManagerBus
from testbed.bus import PrivateBus

pytestmark = pytest.mark.integration


def test_a_burst_that_fills_the_socket_keeps_the_connection(bus: PrivateBus) -> None:
    async def scenario() -> None:
        conn = await ObjectManagerBus(bus_address=bus.address).connect()
        try:
            for i in range(20_000):  # no await in between: nothing drains the socket meanwhile
                conn.send(Message.new_signal("/org/svirt/Manager", "org.svirt.Test", "Burst", "s", [f"{i:0>200}"]))
            reply = await asyncio.wait_for(conn.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="GetId")), 30)
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            assert conn.connected
        finally:
            conn.disconnect()

    asyncio.run(scenario())
