"""Issue 13 (12): authorization comes first; Verify is authorized and bounded; raw audit records are not open.

Real callers with real uids on the private bus, the real polkitd with the project's actions and a
test's rules, real svirtd subprocesses and the private libvirtd. "libvirt was not asked" is shown
with libvirtd stopped (SIGSTOP): any call svirtd makes to it then waits until it is continued, so a
call that is answered at all made none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import audit
import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from svirtd.ctl import unwrap as plain
from svirtd.policy_judge import host_policy_file
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess, busctl, unwrap_busctl
from testbed.guests import Guest, GuestFactory
from testbed.libvirtd import Libvirtd
from testbed.polkit import Polkitd
from tests.conftest import wait_until
from tests.helpers import call, run

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
Delegated = tuple[Guest, Guest, Polkitd]  # guests a and b; polkitd running rules(a.name)
NOBODY, DAEMON, BIN = 65534, 1, 2  # users "nobody", "daemon", "bin"
PROOF_DONE = "verified isolation of"  # svirtd logs it once per proof run
JOINED = "Verify: joined the proof in progress"


def rules(guest_name: str) -> dict[str, str]:
    """daemon: Verify, and the raw audit records of the delegated guest only; bin: isolating it."""
    return {"50-svirtd-hardening.rules": f"""
polkit.addRule(function(action, subject) {{
    if (action.id == "org.svirt.manager1.verify" && subject.user == "daemon") {{
        return polkit.Result.YES;
    }}
    if (action.id == "org.svirt.manager1.audit" && subject.user == "daemon" &&
        action.lookup("guest_name") == "{guest_name}") {{
        return polkit.Result.YES;
    }}
    if (action.id == "org.svirt.manager1.isolate" && subject.user == "bin" &&
        action.lookup("guest_name") == "{guest_name}") {{
        return polkit.Result.YES;
    }}
}});"""}


def busctl_cmd(bus: PrivateBus, member: str, *args: str, user: int | None = None) -> list[str]:
    cmd = ["busctl", f"--address={bus.address}", "--json=short", "--timeout=60", "call", "org.svirt.Manager",
           "/org/svirt/Manager", "org.svirt.Manager1", member, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return cmd


def reply(out: subprocess.CompletedProcess[str] | tuple[str, str]) -> Any:
    stdout = out.stdout if isinstance(out, subprocess.CompletedProcess) else out[0]
    return unwrap_busctl(json.loads(stdout)["data"])[0]


def ask(bus: PrivateBus, member: str, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    """One call with busctl as `user`, which must succeed; reply() reads the answer."""
    out = busctl(bus.address, "--json=short", "--timeout=60", "call", "org.svirt.Manager", "/org/svirt/Manager",
                 "org.svirt.Manager1", member, *args, user=user, check=False, timeout=70)
    assert out.returncode == 0, out.stderr
    return out


def refused(bus: PrivateBus, member: str, *args: str, user: int, timeout: float = 60) -> str:
    """A call as `user` (dbus-send: busctl does not print the error's text) that must be refused;
    the error line. Arguments as dbus-send takes them (string:web01)."""
    cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "dbus-send", f"--bus={bus.address}",
           "--print-reply", f"--reply-timeout={int(timeout * 1000)}", "--dest=org.svirt.Manager",
           "/org/svirt/Manager", f"org.svirt.Manager1.{member}", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
    assert out.returncode != 0, f"{member} as uid {user} was answered: {out.stdout}"
    assert "org.freedesktop.DBus.Error.AccessDenied" in out.stderr, out.stderr
    return out.stderr


@contextlib.contextmanager
def libvirtd_stopped(libvirtd: Libvirtd) -> Iterator[None]:
    """SIGSTOP the private libvirtd: every call to it waits until it is continued (not failing fast
    as a dead libvirtd's would, which would look the same as no call at all)."""
    pid = libvirtd.libvirtd_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def proofs(proc: SvirtdProcess) -> int:
    return proc.log_text().count(PROOF_DONE)


def isolated_level(bus: PrivateBus, g: Guest) -> str:
    return str(wait_until(lambda: run(call(bus, "Query", "s", g.uuid))["level"], what=f"{g.name} isolated"))


@pytest.fixture
def delegated(bus: PrivateBus, guests: GuestFactory, tmp_path: Path) -> Iterator[Delegated]:
    a, b = guests.new(), guests.new()
    daemon = Polkitd(tmp_path / "polkit", bus.address, rules(a.name)).start()
    try:
        yield a, b, daemon
    finally:
        daemon.stop()


@pytest.fixture
def policy_file() -> str:
    found = host_policy_file()
    assert found is not None, "no compiled policy on this host"
    return str(found)


def test_an_unauthorized_isolate_is_refused_without_asking_libvirt(bus: PrivateBus, svirtd: StartSvirtd,
                                                                   libvirtd: Libvirtd, delegated: Delegated) -> None:
    a, _, _ = delegated
    svirtd(default_confined=False)
    root: subprocess.Popen[str] | None = None
    try:
        with libvirtd_stopped(libvirtd):
            # Control: root is authorized, so its Isolate goes on to ask libvirt, and waits.
            root = subprocess.Popen(busctl_cmd(bus, "Isolate", "ss", a.name, ""), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            # Refused (not NoReply after 10 s: svirtd asked libvirt nothing), for a guest libvirt has
            # and for one it has not alike.
            assert f"not authorized to isolate {a.name}" in refused(bus, "Isolate", f"string:{a.name}", "string:",
                                                                    user=DAEMON, timeout=10)
            unknown = refused(bus, "Isolate", f"string:{a.name}-nonexistent", "string:", user=DAEMON, timeout=10)
            assert f"not authorized to isolate {a.name}-nonexistent" in unknown
            assert root.poll() is None, "root's Isolate finished while libvirtd was stopped"
        out, err = root.communicate(timeout=60)
        assert root.returncode == 0, err
        assert reply((out, err))["uuid"] == a.uuid
    finally:
        if root is not None and root.poll() is None:
            root.kill()
            root.communicate()


def test_a_guest_not_isolated_yet_is_authorized_as_the_caller_names_it(bus: PrivateBus, svirtd: StartSvirtd,
                                                                        delegated: Delegated) -> None:
    a, _, _ = delegated  # bin may isolate a, by a rule on guest_name
    svirtd(default_confined=False)
    # By UUID, svirtd knows no name for a guest it does not isolate, and asks libvirt nothing first.
    by_uuid = refused(bus, "Isolate", f"string:{a.uuid}", "string:", user=BIN)
    assert f"not authorized to isolate {a.uuid}" in by_uuid
    assert reply(ask(bus, "Isolate", "ss", a.name, "", user=BIN))["uuid"] == a.uuid
    # Once isolated, svirtd's table knows both: the rule on the name holds for the UUID too.
    assert reply(ask(bus, "Isolate", "ss", a.uuid, "", user=BIN))["uuid"] == a.uuid


def test_verify_needs_root_or_polkit(bus: PrivateBus, svirtd: StartSvirtd, delegated: Delegated,
                                     policy_file: str) -> None:
    polkitd = delegated[2]
    proc = svirtd(policy_file=policy_file, auto_verify_max_guests=0)
    for user in (BIN, NOBODY):
        error = refused(bus, "Verify", user=user)
        assert "not authorized to verify" in error and "org.svirt.manager1.verify" in error
    assert proofs(proc) == 0, "a refused caller got a proof run"
    assert reply(ask(bus, "Verify", user=DAEMON))["ok"]  # granted by the rule
    assert reply(ask(bus, "Verify"))["ok"]  # root
    polkitd.stop()
    assert "polkit is not running, so only root may verify" in refused(bus, "Verify", user=DAEMON)
    assert reply(ask(bus, "Verify"))["ok"]


def test_concurrent_verify_calls_share_one_proof_and_a_recent_one_is_reused(
        bus: PrivateBus, svirtd: StartSvirtd, libvirtd: Libvirtd, delegated: Delegated, policy_file: str) -> None:
    a, b, _ = delegated
    proc = svirtd(policy_file=policy_file, auto_verify_max_guests=0)
    for g in (a, b):
        isolated_level(bus, g)
    calls: list[subprocess.Popen[str]] = []
    try:
        with libvirtd_stopped(libvirtd):  # the proof lists libvirt's domains: it waits here
            calls = [subprocess.Popen(busctl_cmd(bus, "Verify"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(4)]
            wait_until(lambda: proc.log_text().count(JOINED) >= 3, timeout=20, what="three calls joining the first")
        results = [c.communicate(timeout=60) for c in calls]
    finally:
        for c in calls:
            if c.poll() is None:
                c.kill()
                c.communicate()
    assert all(c.returncode == 0 for c in calls), results
    assert len({out for out, _err in results}) == 1  # one proof, one answer
    assert proofs(proc) == 1
    # Another caller within seconds gets that proof; root gets a new one.
    assert reply(ask(bus, "Verify", user=DAEMON)) == reply(results[0])
    assert proofs(proc) == 1 and "Verify: answered with the proof of" in proc.log_text()
    assert reply(ask(bus, "Verify"))["ok"]
    assert proofs(proc) == 2


async def denial_signal(bus: PrivateBus, text: str, marker: str) -> dict[str, Any]:
    """Inject an AVC and return the Denied signal carrying its marker, as a root listener sees it."""
    client = await MessageBus(bus_address=bus.address).connect()
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def handler(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "Denied" and not got.done():
            event = plain(msg.body[0])
            if event["path"] == marker:
                got.set_result(event)

    client.add_message_handler(handler)
    await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                              interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                              body=["type='signal',interface='org.svirt.Manager1',member='Denied'"]))
    fd = audit.audit_open()
    try:
        audit.audit_log_user_avc_message(fd, audit.AUDIT_USER_AVC, text, None, None, None, 0)
    finally:
        audit.audit_close(fd)
    try:
        return await asyncio.wait_for(got, 10)
    finally:
        client.disconnect()


def test_raw_audit_records_only_for_root_and_polkit_authorized_callers(bus: PrivateBus, svirtd: StartSvirtd,
                                                                       delegated: Delegated) -> None:
    a, b, polkitd = delegated  # daemon may read a's raw records (rule), not b's
    svirtd()
    la, lb = isolated_level(bus, a), isolated_level(bus, b)
    marker = f"svt-raw-{secrets.token_hex(4)}"  # the record's name= field: the path, and in the raw record
    avc = (f'avc:  denied  {{ read }} for  pid=4242 comm="qemu-system-x86" name="{marker}" dev="vda" ino=12 '
           f"scontext=system_u:system_r:svirt_t:{la} tcontext=system_u:object_r:svirt_image_t:{lb} "
           "tclass=file permissive=0")
    signalled = run(denial_signal(bus, avc, marker))
    assert signalled["raw"] == "", "the Denied signal carries the raw record to every listener"
    assert signalled["source_name"] == a.name and signalled["target_name"] == b.name

    def denial(uuid: str, user: int | None) -> dict[str, Any]:
        history = reply(ask(bus, "Query", "s", uuid, user=user))["denials"]
        return next(d for d in history if d["path"] == marker or marker in d["raw"])

    root_view = wait_until(lambda: denial(a.uuid, None), what="the denial in a's history")
    assert isinstance(root_view, dict) and marker in root_view["raw"] and "pid=4242" in root_view["raw"]
    for user in (NOBODY, BIN):
        for guest in (a, b):
            view = denial(guest.uuid, user)
            assert view["raw"] == "", f"uid {user} reads the raw record in {guest.name}'s Query"
            assert {k: v for k, v in view.items() if k != "raw"} == {k: v for k, v in root_view.items()
                                                                      if k != "raw"}
    assert marker in denial(a.uuid, DAEMON)["raw"]  # delegated by polkit for a ...
    assert denial(b.uuid, DAEMON)["raw"] == ""  # ... not for b
    polkitd.stop()
    assert denial(a.uuid, DAEMON)["raw"] == ""  # without polkit, root only
    assert marker in denial(a.uuid, None)["raw"]
