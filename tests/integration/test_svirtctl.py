"""Issue 14: svirtctl as a distribution ships it. The real svirtctl binary against the private bus, a
real svirtd subprocess and the private libvirtd; the real polkitd (with a test's rules) for the
authorization paths; a real pseudo-terminal where svirtctl must believe a person is typing."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from svirtd import __version__
from svirtd.ctl_exit import ExitCode
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory
from testbed.polkit import Polkitd
from tests.completion import complete
from tests.conftest import wait_until
from tests.helpers import call, run

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
SVIRTCTL = Path(sys.executable).parent / "svirtctl"
NOBODY = 65534
IMAGE = "system_u:object_r:svirt_image_t:"
# nobody may isolate only after authenticating as an admin: polkit's answer is a challenge.
AUTH_ADMIN_RULES = {"50-svirtctl-test.rules": """
polkit.addRule(function(action, subject) {
    if (action.id == "org.svirt.manager1.isolate" && subject.user == "nobody") {
        return polkit.Result.AUTH_ADMIN;
    }
});"""}


def svirtctl(bus: PrivateBus | None, *args: str, user: int | None = None,
             address: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed svirtctl, stdin not a terminal (as in a script)."""
    cmd = [str(SVIRTCTL), *args]
    env = {k: v for k, v in os.environ.items() if k != "SVIRT_BUS_ADDRESS"}
    env["SVIRT_BUS_ADDRESS"] = address or (bus.address if bus else "")
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def isolated(bus: PrivateBus, uuid: str) -> bool:
    return any(row[0] == uuid for row in run(call(bus, "List")))


def test_version() -> None:
    out = svirtctl(None, "--version")
    assert (out.returncode, out.stdout) == (0, f"svirtctl {__version__}\n"), out


def test_json_after_the_command_and_columns_sized_to_the_content(bus: PrivateBus, guests: GuestFactory,
                                                                 svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    short = guests.new()
    long = guests.new(name=f"{guests.prefix}-a-guest-name-much-longer-than-twenty-characters")
    for g in (short, long):
        assert svirtctl(bus, "isolate", g.name).returncode == 0

    after = svirtctl(bus, "query", long.name, "--json")  # the README's spelling
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(svirtctl(bus, "--json", "query", long.name).stdout)
    assert json.loads(after.stdout)["uuid"] == long.uuid
    for args in (("list", "--json"), ("status", "--json"), ("verify", "--json"),
                 ("isolate", short.name, "--json", "--profile", "default")):
        out = svirtctl(bus, *args)
        assert out.returncode == 0 and json.loads(out.stdout), (args, out)
    assert {r["name"] for r in json.loads(svirtctl(bus, "list", "--json").stdout)} == {short.name, long.name}

    table = svirtctl(bus, "list").stdout.splitlines()
    header, rows, footer = table[0], table[1:3], table[3:]
    assert header.split() == ["UUID", "NAME", "LEVEL", "PROFILE", "STATE"]
    assert footer == ["", "2 guests listed."]
    level_at = header.index("LEVEL")
    for row in rows:  # every column starts where its header does, however long the name
        name = long.name if long.uuid in row else short.name
        assert row.index(name) == header.index("NAME") and row[level_at:].startswith("s0:c"), table
    assert level_at == header.index("NAME") + len(long.name) + 2
    assert not any(line.endswith(" ") for line in table)

    bare = svirtctl(bus, "list", "--no-legend").stdout.splitlines()
    assert bare == rows or sorted(bare) == sorted(rows)
    assert svirtctl(bus, "--no-legend", "list").stdout.splitlines() == bare

    released = svirtctl(bus, "release", short.uuid, "--json")
    assert (released.returncode, json.loads(released.stdout)) == (0, {"released": short.uuid})
    assert not isolated(bus, short.uuid)


def test_exit_codes(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, tmp_path: Path) -> None:
    unreachable = svirtctl(None, "list", address=f"unix:path={tmp_path}/no-bus-here")
    assert unreachable.returncode == 7 and "cannot reach the bus" in unreachable.stderr
    # A bus without svirtd on it: the name has no owner.
    not_running = svirtctl(bus, "status")
    assert not_running.returncode == 7 and "ServiceUnknown" in not_running.stderr, not_running
    assert svirtctl(bus, "bogus").returncode == 2

    svirtd(default_confined=False)
    g = guests.new()
    missing = svirtctl(bus, "query", f"{guests.prefix}-does-not-exist")
    assert missing.returncode == 4 and "NoSuchGuest" in missing.stderr

    # No polkitd on this bus: only root may isolate; nobody is told how to authenticate.
    denied = svirtctl(bus, "isolate", g.name, user=NOBODY)
    assert denied.returncode == 5, denied
    assert "AccessDenied" in denied.stderr and "run svirtctl from a terminal" in denied.stderr
    assert not isolated(bus, g.uuid)

    assert svirtctl(bus, "isolate", g.name).returncode == 0
    assert svirtctl(bus, "verify").returncode == 0
    os.setxattr(g.disk, "security.selinux", b"system_u:object_r:shadow_t:s0")  # out of the guest's reach
    violated = svirtctl(bus, "verify")
    assert violated.returncode == 3 and "VIOLATED" in violated.stdout, violated


def check_authorization_flags(monitor_out: str) -> list[int]:
    """The flags argument of every CheckAuthorization call a `busctl monitor --json=short` saw."""
    flags = []
    for line in monitor_out.splitlines():
        if '"CheckAuthorization"' not in line:
            continue
        msg = json.loads(line)
        if msg.get("member") == "CheckAuthorization" and msg.get("type") == "method_call":
            flags.append(int(msg["payload"]["data"][3]))
    return flags


def test_only_a_call_that_allows_it_lets_polkit_interact(bus: PrivateBus, guests: GuestFactory,
                                                         svirtd: StartSvirtd, tmp_path: Path) -> None:
    """svirtd passes AllowUserInteraction (1) to CheckAuthorization exactly when the caller's message
    carries ALLOW_INTERACTIVE_AUTHORIZATION; seen on the bus by a monitor, as polkitd receives it."""
    polkitd = Polkitd(tmp_path / "polkit", bus.address, AUTH_ADMIN_RULES).start()
    try:
        svirtd(default_confined=False)
        g = guests.new()
        monitor = subprocess.Popen(["busctl", f"--address={bus.address}", "--json=short", "monitor",
                                    "org.freedesktop.PolicyKit1"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # BecomeMonitor is in place once busctl prints nothing else; give it a moment
            for interactive in ("no", "yes"):
                out = subprocess.run(
                    ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "busctl",
                     f"--address={bus.address}", f"--allow-interactive-authorization={interactive}", "call",
                     "org.svirt.Manager", "/org/svirt/Manager", "org.svirt.Manager1", "Isolate", "ss", g.name, ""],
                    capture_output=True, text=True, timeout=60)
                assert out.returncode != 0 and "Access denied" in out.stderr, out  # no agent to ask
            time.sleep(0.5)
        finally:
            monitor.terminate()
            seen, _ = monitor.communicate(timeout=10)
        assert check_authorization_flags(seen) == [0, 1], seen
        assert not isolated(bus, g.uuid)
    finally:
        polkitd.stop()


def in_pty(cmd: list[str], env: dict[str, str], answer: Callable[[str], bytes | None],
           timeout: float = 60) -> tuple[int, str]:
    """Run cmd on a new pseudo-terminal (its stdin, stdout and controlling tty); answer(output so far),
    asked at least every 0.2 s, may return bytes to type. Returns the exit status and everything the
    terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # child: only exec
        os.execvpe(cmd[0], cmd, env)  # noqa: S606 - a fixed argv, no shell
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([fd], [], [], 0.2)
            if readable:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child side is closed
                    break
                if not chunk:
                    break
                seen += chunk
            typed = answer(seen.decode(errors="replace"))  # also while nothing new shows: a slow typist
            if typed:
                os.write(fd, typed)
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


class EndOfInput:
    """An answer for in_pty: ^D (no password) `after` seconds at the password prompt, and again every
    second: the agent discards what was typed before it turned echo off."""

    def __init__(self, after: float) -> None:
        self.after = after
        self.prompted: float | None = None
        self.sent = 0.0

    def __call__(self, shown: str) -> bytes | None:
        now = time.monotonic()
        if "Password:" not in shown:
            return None
        self.prompted = self.prompted or now
        if now - self.prompted < self.after or now - self.sent < 1:
            return None
        self.sent = now
        return b"\x04"


def test_on_a_terminal_svirtctl_runs_a_polkit_agent(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                    tmp_path: Path) -> None:
    """From a terminal, an unprivileged svirtctl sets ALLOW_INTERACTIVE_AUTHORIZATION and runs
    pkttyagent for itself: polkitd asks that agent for the admin's password (shown on the terminal).
    The test gives none (end of input), so the call is still refused; --no-ask-password never asks."""
    polkitd = Polkitd(tmp_path / "polkit", bus.address, AUTH_ADMIN_RULES).start()
    try:
        svirtd(default_confined=False)
        g = guests.new()
        env = {"PATH": os.environ["PATH"], "SVIRT_BUS_ADDRESS": bus.address, "TERM": "dumb", "LC_ALL": "C"}
        base = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(SVIRTCTL)]

        code, shown = in_pty([*base, "isolate", g.name], env, EndOfInput(after=1))
        assert "AUTHENTICATING FOR org.svirt.manager1.isolate" in shown, shown
        assert code == ExitCode.ACCESS_DENIED, shown
        assert "run svirtctl from a terminal" not in shown  # it did ask
        assert not isolated(bus, g.uuid)
        wait_until(lambda: not agents_of(NOBODY), what="svirtctl's pkttyagent ended")

        code, shown = in_pty([*base, "--no-ask-password", "isolate", g.name], env, lambda _: None)
        assert code == ExitCode.ACCESS_DENIED and "AUTHENTICATING" not in shown, shown
        assert "run svirtctl from a terminal" in shown
    finally:
        polkitd.stop()


def agents_of(uid: int) -> list[str]:
    out = subprocess.run(["pgrep", "-u", str(uid), "-x", "pkttyagent"], capture_output=True, text=True)
    return out.stdout.split()


def test_completion_offers_the_guests_svirtd_isolates(bus: PrivateBus, guests: GuestFactory,
                                                     svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    a, b = guests.new(), guests.new()
    guests.new()  # defined, not isolated: not offered
    for g in (a, b):
        assert svirtctl(bus, "isolate", g.name).returncode == 0
    offered = complete("svirtctl query ", env={"SVIRT_BUS_ADDRESS": bus.address})
    assert set(offered) == {a.name, a.uuid, b.name, b.uuid}
    assert complete(f"svirtctl --bus-address {bus.address} release {a.uuid[:13]}",
                    env={"SVIRT_BUS_ADDRESS": ""}) == [a.uuid]
    assert complete(f"svirtctl isolate {a.name} ", env={"SVIRT_BUS_ADDRESS": bus.address}) == []  # one guest


def test_polkit_waits_for_a_slow_typist(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                        tmp_path: Path) -> None:
    """An interactive check outlives svirtd's 30 s bound on non-interactive ones: the answer after
    40 s at the password prompt is polkit's (not authorized), not "the authorization check failed"."""
    polkitd = Polkitd(tmp_path / "polkit", bus.address, AUTH_ADMIN_RULES).start()
    try:
        svirtd(default_confined=False)
        g = guests.new()
        env = {"PATH": os.environ["PATH"], "SVIRT_BUS_ADDRESS": bus.address, "TERM": "dumb", "LC_ALL": "C"}
        no_password = EndOfInput(after=40)
        code, shown = in_pty(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              str(SVIRTCTL), "isolate", g.name], env, no_password, timeout=120)
        assert no_password.sent and code == 5, shown
        assert f"not authorized to isolate {g.name}" in shown and "authorization check failed" not in shown, shown
    finally:
        polkitd.stop()
