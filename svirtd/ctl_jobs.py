"""svirtctl's side of svirtd's jobs: start one (Manager1.StartIsolate/StartRelease/StartVerify), follow its object's
PropertiesChanged for the progress bar, and wait for its JobRemoved however long it takes: no method
call is open meanwhile, so no client timeout applies to the job, only to each short call. Ctrl-C asks
svirtd to cancel the job (an isolation rolls back what it labeled) and still waits for its end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from dbus_fast import DBusError, Message, MessageType

from .ctl_output import progress_line

if TYPE_CHECKING:
    from .ctl import Client

BUS_NAME = "org.svirt.Manager"
MANAGER_PATH = "/org/svirt/Manager"
JOB_INTERFACE = "org.svirt.Job1"
_SIGNALS = (
    f"type='signal',sender='{BUS_NAME}',path='{MANAGER_PATH}',interface='org.svirt.Manager1',member='JobRemoved'",
    f"type='signal',sender='{BUS_NAME}',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
    f"path_namespace='{MANAGER_PATH}/job'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',"
    f"arg0='{BUS_NAME}'",
)
CANCELLED = "org.svirt.Manager1.Error.Cancelled"


class Bar:
    """The one-line progress bar on a terminal (stderr), redrawn in place; nothing when off."""

    def __init__(self, label: str, stream: TextIO, on: bool) -> None:
        self.label = label
        self.stream = stream
        self.on = on
        self.shown = False
        self.started = time.monotonic()

    def draw(self, props: dict[str, Any]) -> None:
        if not self.on:
            return
        width = _columns(self.stream)
        line = progress_line(self.label, float(props.get("Progress", 0.0)), int(props.get("FilesDone", 0)),
                             int(props.get("FilesTotal", 0)), str(props.get("State", "running")), width,
                             time.monotonic() - self.started)
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def say(self, text: str) -> None:
        """A message of its own line (the bar, if shown, is redrawn below it by the next change)."""
        self.clear()
        print(text, file=self.stream)

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except OSError:
        columns = 0
    return columns if columns > 0 else 80  # a pseudo-terminal nobody sized says 0


class JobWatch:
    """Signals about jobs, collected from before the job is started (its JobRemoved may come at once)."""

    def __init__(self) -> None:
        self.removed: dict[str, list[Any]] = {}  # job path -> JobRemoved's body
        self.props: dict[str, dict[str, Any]] = {}
        self.gone = False  # svirtd left the bus
        self.changed = asyncio.Event()

    def handle(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if msg.member == "JobRemoved" and msg.path == MANAGER_PATH:
            self.removed[msg.body[1]] = list(msg.body)
        elif msg.member == "PropertiesChanged" and msg.body and msg.body[0] == JOB_INTERFACE and msg.path:
            self.props.setdefault(msg.path, {}).update({k: v.value for k, v in msg.body[1].items()})
        elif msg.member == "NameOwnerChanged" and msg.body and msg.body[0] == BUS_NAME and not msg.body[2]:
            self.gone = True
        else:
            return
        self.changed.set()


async def run_job(client: Client, member: str, signature: str, body: list[Any], bar: Bar) -> None:
    """Start a job with Manager1.<member> and wait for its end; DBusError with the job's error when it
    failed or was cancelled. Ctrl-C cancels it once (svirtd rolls back), a second Ctrl-C stops waiting."""
    watch = JobWatch()
    client.bus.add_message_handler(watch.handle)
    for rule in _SIGNALS:
        await client.call("AddMatch", "s", [rule], interface="org.freedesktop.DBus", destination="org.freedesktop.DBus",
                          path="/org/freedesktop/DBus")
    (path,) = await client.call(member, signature, body)
    try:
        (props,) = await client.call("GetAll", "s", [JOB_INTERFACE], interface="org.freedesktop.DBus.Properties",
                                     path=path)
        watch.props.setdefault(path, {}).update({k: v.value for k, v in props.items()})
    except DBusError:
        pass  # already gone: its JobRemoved is here or on its way
    loop = asyncio.get_running_loop()
    interrupted: list[int] = []
    cancel_calls: list[asyncio.Future[Any]] = []

    def on_interrupt() -> None:
        interrupted.append(1)
        watch.changed.set()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        while path not in watch.removed:
            if watch.gone:
                raise DBusError("org.freedesktop.DBus.Error.NameHasNoOwner", "svirtd left the bus while the job ran")
            if len(interrupted) > 1:
                bar.say("svirtctl: stopped waiting; the job goes on in svirtd")
                raise KeyboardInterrupt
            if interrupted and not cancel_calls:
                cancel_calls.append(_cancel(client, path, watch.props.get(path, {}), bar))
            bar.draw(watch.props.get(path, {}))
            watch.changed.clear()
            # Redrawn every second as well: a job that counts nothing (a verify) shows its seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), 1.0 if bar.on else None)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        bar.clear()
        for call in cancel_calls:
            if call.done() and not call.cancelled() and call.exception() is not None:
                print(f"svirtctl: the cancel was refused: {call.exception()}", file=sys.stderr)
            elif not call.done():
                call.cancel()
    _id, _path, _guest, result, error_name, error_message = watch.removed[path]
    if result != "done":
        raise DBusError(error_name or CANCELLED, error_message or result)


def _cancel(client: Client, path: str, props: dict[str, Any], bar: Bar) -> asyncio.Future[Any]:
    """The first Ctrl-C: ask svirtd to cancel the job (said on the terminal); the call, running."""
    if not props.get("Cancellable", True):
        bar.say("svirtctl: a release cannot be cancelled; waiting for it to finish (Ctrl-C again to stop waiting)")
        return asyncio.ensure_future(asyncio.sleep(0))
    if props.get("Operation") == "verify":  # labels nothing: the job just stops waiting for the proof
        bar.say("svirtctl: cancelling the verify (Ctrl-C again to stop waiting)")
    else:
        bar.say("svirtctl: cancelling: svirtd rolls back what the job labeled (Ctrl-C again to stop waiting)")
    return asyncio.ensure_future(client.call("Cancel", "", [], interface=JOB_INTERFACE, path=path))
