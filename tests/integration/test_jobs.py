"""Issue 15: jobs. A long relabel (a 50,000-file virtiofs share) runs as a job: svirtctl shows its
progress on a terminal (none when piped), outlives a client timeout far shorter than the relabel,
watchers see Progress rise and JobRemoved, Cancel rolls the tree back to its original labels, and an
unprivileged caller cannot cancel root's job. Real bus with svirtd's policy, real svirtd, real libvirtd
guests, real xattrs on a real filesystem; svirtctl on a real pseudo-terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from svirtd.ctl_exit import ExitCode
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Guest, GuestFactory
from tests.conftest import wait_until
from tests.helpers import SignalRecorder, call, run, tree_labels, xattr
from tests.integration.test_svirtctl import NOBODY, SVIRTCTL, in_pty, isolated, svirtctl

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
FILES = 50_000
JOB_PREFIX = "/org/svirt/Manager/job/"
ORIGINALS = ("system_u:object_r:virt_image_t:s0", "system_u:object_r:user_tmp_t:s0")


def make_share(root: Path, files: int = FILES) -> None:
    """files regular files in 200 directories, two original labels taking turns (one directory labeled,
    the others as created), so a restore must put back each file's own."""
    dirs = [root / f"d{i % 20}" / f"e{i}" for i in range(200)]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(files):
        path = dirs[i % len(dirs)] / f"f{i}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        os.setxattr(path, "security.selinux", ORIGINALS[i % 2].encode())
    os.setxattr(dirs[0], "security.selinux", ORIGINALS[0].encode())




def share_guest(guests: GuestFactory) -> tuple[Guest, Path]:
    share = guests.image_dir / f"share-{len(guests.guests)}"
    make_share(share)
    g = guests.new(extra_devices=f"<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
                                 f"<source dir='{share}'/><target dir='share'/></filesystem>",
                   extra="<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>")
    return g, share


def test_svirtctl_shows_progress_on_a_terminal_and_outlives_a_short_timeout(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g, share = share_guest(guests)
    env = {"PATH": os.environ["PATH"], "SVIRT_BUS_ADDRESS": bus.address, "TERM": "xterm", "LC_ALL": "C.UTF-8"}
    started = time.monotonic()
    code, shown = in_pty([str(SVIRTCTL), "--timeout", "1", "isolate", g.name], env, lambda _: None, timeout=300)
    took = time.monotonic() - started
    print(f"isolate of a {FILES}-file share through svirtctl on a terminal: {took:.1f} s")
    assert code == 0, shown
    # The precondition that makes this test mean something: the relabel outlasted the client's timeout.
    assert took > 1, f"the share was labeled in {took:.2f} s, within the 1 s timeout: nothing was proven"
    percents = [int(p) for p in re.findall(r"\]\s+(\d+)%", shown)]
    assert len(set(percents)) >= 2 and percents == sorted(percents), shown  # drawn more than once, advancing
    assert f"/{FILES + 220:,} files" in shown, shown  # FilesTotal: the share's 50,000 files and 220 directories
    print(shown.split("guest ")[0][-400:])
    assert "\r" in shown and f"guest      {g.name}" in shown, shown  # redrawn in place, then the report
    image = run(call(bus, "Query", "s", g.uuid))["image_label"]
    assert xattr(share / "d7" / "e7" / "f7") == image

    # The same command piped: no bar, nothing on stderr; the release (a job too) restores every file.
    out = svirtctl(bus, "--timeout", "1", "release", g.name)
    assert out.returncode == 0 and out.stderr == "", out
    assert "\r" not in out.stdout and "%" not in out.stdout, out.stdout
    assert xattr(share / "d7" / "e7" / "f7") == ORIGINALS[1]
    out = svirtctl(bus, "--timeout", "1", "isolate", g.name)
    assert out.returncode == 0 and out.stderr == "" and f"guest      {g.name}" in out.stdout, out
    assert xattr(share / "d7" / "e7" / "f7") == run(call(bus, "Query", "s", g.uuid))["image_label"]


async def _watch_isolate(address: str, guest: str) -> tuple[str, list[Any]]:
    async with _Client(address) as client:
        return await client.call_raw("/org/svirt/Manager", "org.svirt.Manager1", "StartIsolate", "ss", [guest, ""])


class _Client:
    """A plain bus connection (root: the test's own uid) for calls on job objects."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.bus: MessageBus | None = None

    async def __aenter__(self) -> _Client:
        self.bus = await MessageBus(bus_address=self.address).connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.bus is not None
        self.bus.disconnect()

    async def call_raw(self, path: str, interface: str, member: str, signature: str = "",
                       body: list[Any] | None = None) -> tuple[str, list[Any]]:
        """('' and the body) or (the error name and its message)."""
        assert self.bus is not None
        reply = await self.bus.call(Message(destination="org.svirt.Manager", path=path, interface=interface,
                                            member=member, signature=signature, body=body or []))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            return reply.error_name or "?", list(reply.body)
        return "", list(reply.body)


def job_prop(address: str, path: str, name: str) -> Any:
    async def get() -> Any:
        async with _Client(address) as c:
            error, body = await c.call_raw(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                           ["org.svirt.Job1", name])
            return None if error else body[0].value
    return run(get())


def managed_jobs(address: str) -> list[str]:
    async def get() -> list[str]:
        async with _Client(address) as c:
            error, body = await c.call_raw("/org/svirt/Manager", "org.freedesktop.DBus.ObjectManager",
                                           "GetManagedObjects")
            assert not error, body
            paths: dict[str, Any] = body[0]
            return [p for p in paths if p.startswith(JOB_PREFIX)]
    jobs: list[str] = run(get())
    return jobs


# A call from whoever runs it (ADDRESS PATH [INTERFACE MEMBER], default Job1.Cancel): prints the error
# name and message, or "answered".
CALL_AS_ANYBODY = """
import asyncio, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    interface, member = sys.argv[3:5] if len(sys.argv) > 3 else ("org.svirt.Job1", "Cancel")
    reply = await bus.call(Message(destination="org.svirt.Manager", path=sys.argv[2], interface=interface,
                                   member=member))
    print(f"{reply.error_name}: {reply.body[0]}" if reply.message_type is MessageType.ERROR else "answered")

asyncio.run(main())
"""
RULES = ("type='signal',sender='org.svirt.Manager',interface='org.freedesktop.DBus.Properties',"
         "member='PropertiesChanged',path_namespace='/org/svirt/Manager/job'",
         "type='signal',sender='org.svirt.Manager',interface='org.svirt.Manager1',member='JobRemoved'",
         "type='signal',sender='org.svirt.Manager',interface='org.freedesktop.DBus.ObjectManager'")


def test_a_watcher_sees_progress_rise_then_job_removed_and_the_object_goes(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g, _share = share_guest(guests)
    with SignalRecorder(bus, *RULES) as rec:
        error, body = run(_watch_isolate(bus.address, g.name))
        assert not error, body
        path = body[0]
        assert path.startswith(JOB_PREFIX)
        removed = wait_until(lambda: [s for s in rec.signals("JobRemoved") if s.body[1] == path], timeout=300,
                             what="JobRemoved")
        assert isinstance(removed, list)
    job_id, _path, guest, result, error_name, message = removed[0].body
    assert (guest, result, error_name, message) == (g.uuid, "done", "", "")
    assert path == f"{JOB_PREFIX}{job_id}"
    added = [s for s in rec.signals("InterfacesAdded") if s.body[0] == path]
    assert added and added[0].body[1]["org.svirt.Job1"]["Operation"] == "isolate"
    changes = [s for s in rec.signals("PropertiesChanged") if s.path == path]
    progress = [s.body[1]["Progress"] for s in changes if "Progress" in s.body[1]]
    assert len(progress) >= 2 and progress == sorted(progress) and 0 < progress[-1] <= 1, progress
    print(f"{len(changes)} PropertiesChanged over {changes[-1].received - changes[0].received:.2f} s: {progress}")
    # Throttled: at most 10 a second (one more for the edges of the window).
    span = changes[-1].received - changes[0].received
    assert len(changes) <= 10 * span + 2, (len(changes), span)
    assert [s.body[0] for s in rec.signals("InterfacesRemoved")] == [path]
    assert removed[0].received <= rec.signals("InterfacesRemoved")[0].received
    assert managed_jobs(bus.address) == [] and job_prop(bus.address, path, "Id") is None
    assert isolated(bus, g.uuid)


def test_cancel_rolls_the_share_back_and_nobody_may_cancel_roots_job(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g, share = share_guest(guests)
    before = tree_labels(share)
    with SignalRecorder(bus, *RULES) as rec:
        error, body = run(_watch_isolate(bus.address, g.name))
        assert not error, body
        path = body[0]
        wait_until(lambda: (job_prop(bus.address, path, "FilesDone") or 0) > 1000, timeout=120,
                   what="the job under way")
        # An unprivileged caller (no polkit: only root may) is refused; the job goes on.
        refused = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                  sys.executable, "-c", CALL_AS_ANYBODY, bus.address, path],
                                 capture_output=True, text=True, timeout=60, cwd="/")
        assert refused.stdout.startswith("org.freedesktop.DBus.Error.AccessDenied: polkit is not running, so only "
                                         "root may isolate"), refused
        assert job_prop(bus.address, path, "State") == "running"
        done_at_cancel = job_prop(bus.address, path, "FilesDone")
        error, body = run(_cancel(bus.address, path))
        assert not error, body
        removed = wait_until(lambda: [s for s in rec.signals("JobRemoved") if s.body[1] == path], timeout=300,
                             what="JobRemoved")
        assert isinstance(removed, list)
    _id, _path, _guest, result, error_name, message = removed[0].body
    assert message and (result, error_name) == ("canceled", "org.svirt.Manager1.Error.Cancelled"), removed[0].body
    assert done_at_cancel < FILES  # cancelled mid-way, not after the walk
    assert tree_labels(share) == before  # every entry carries its own original again
    assert not isolated(bus, g.uuid)
    assert managed_jobs(bus.address) == []


async def _cancel(address: str, path: str) -> tuple[str, list[Any]]:
    async with _Client(address) as c:
        return await c.call_raw(path, "org.svirt.Job1", "Cancel")


def test_ctrl_c_cancels_an_isolation_on_a_terminal(bus: PrivateBus, guests: GuestFactory,
                                                   svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g, share = share_guest(guests)
    before = tree_labels(share)
    env = {"PATH": os.environ["PATH"], "SVIRT_BUS_ADDRESS": bus.address, "TERM": "xterm", "LC_ALL": "C.UTF-8"}
    typed: list[float] = []

    def interrupt(shown: str) -> bytes | None:
        if not typed and re.search(r"\]\s+\d+%", shown):  # the bar is up: the walk is under way
            typed.append(time.monotonic())
            return b"\x03"
        return None

    code, shown = in_pty([str(SVIRTCTL), "isolate", g.name], env, interrupt, timeout=300)
    assert typed, shown
    assert code == ExitCode.CANCELLED and "cancelling" in shown and "Cancelled" in shown, shown
    assert tree_labels(share) == before
    assert not isolated(bus, g.uuid)


# Guests that make the proof outlast a 1 s client timeout: it judges every guest against every other's
# image and sockets (4 checks per ordered pair) and every host control plane.
MANY = 20


def test_svirtctl_verify_is_a_job_that_outlives_a_short_timeout_and_ctrl_c_cancels_it(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    with_disk = guests.new()
    for _ in range(MANY - 1):
        guests.new(disks=0)
    svirtd(auto_verify_max_guests=0)  # no proof of svirtd's own running beside the ones asked for
    wait_until(lambda: len(run(call(bus, "List"))) == MANY, timeout=300, what=f"{MANY} guests isolated")
    assert run(_last_verify(bus.address))[0] == "org.svirt.Manager1.Error.Failed"  # no proof made yet
    env = {"PATH": os.environ["PATH"], "SVIRT_BUS_ADDRESS": bus.address, "TERM": "xterm", "LC_ALL": "C.UTF-8"}
    started = time.monotonic()
    code, shown = in_pty([str(SVIRTCTL), "--timeout", "1", "verify"], env, lambda _: None, timeout=300)
    took = time.monotonic() - started
    print(f"verify of {MANY} guests through svirtctl on a terminal: {took:.1f} s")
    assert code == ExitCode.OK, shown
    # The precondition that makes this test mean something: the proof outlasted the client's timeout.
    assert took > 1, f"the proof took {took:.2f} s, within the 1 s timeout: nothing was proven"
    assert "\rverify  working" in shown, shown  # the line on the terminal while the proof runs, its seconds ...
    assert re.search(r"\rverify  working  [1-9]\d* s", shown), shown
    assert f"guests        {MANY}   resources" in shown and "isolation     OK" in shown, shown  # ... then the report
    # The proof, read again, is the same one; nobody but root may read it (no polkit on this bus).
    error, body = run(_last_verify(bus.address))
    assert not error and body[0]["guests"].value == MANY and body[0]["ok"].value, (error, body)
    refused = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                              "-c", CALL_AS_ANYBODY, bus.address, "/org/svirt/Manager", "org.svirt.Manager1",
                              "LastVerify"], capture_output=True, text=True, timeout=60, cwd="/")
    assert refused.stdout.startswith("org.freedesktop.DBus.Error.AccessDenied: polkit is not running, so only "
                                     "root may verify"), refused

    # Piped: no line, nothing on stderr; a violation found by the job is exit 3 with its finding.
    os.setxattr(with_disk.disk, "security.selinux", b"system_u:object_r:shadow_t:s0")  # out of the guest's reach
    started = time.monotonic()
    out = subprocess.run([str(SVIRTCTL), "--timeout", "1", "verify"], capture_output=True, text=True, timeout=300,
                         env=env, stdin=subprocess.DEVNULL)
    print(f"the same, piped: {time.monotonic() - started:.1f} s")
    assert out.returncode == ExitCode.VIOLATED and out.stderr == "", out
    assert re.search(r"isolation     VIOLATED \(\d+ findings\)", out.stdout) and str(with_disk.disk) in out.stdout, out

    # Ctrl-C while the proof runs cancels the job.
    typed: list[float] = []

    def interrupt(seen: str) -> bytes | None:
        if not typed and "verify  working" in seen:
            typed.append(time.monotonic())
            return b"\x03"
        return None

    code, shown = in_pty([str(SVIRTCTL), "verify"], env, interrupt, timeout=300)
    assert typed, shown
    assert code == ExitCode.CANCELLED and "cancelling the verify" in shown and "Cancelled" in shown, shown
    assert managed_jobs(bus.address) == []


async def _last_verify(address: str) -> tuple[str, list[Any]]:
    async with _Client(address) as c:
        return await c.call_raw("/org/svirt/Manager", "org.svirt.Manager1", "LastVerify")
