"""svirtd under a service manager (issue 14): READY after the reconcile, a live STATUS= line, watchdog
keep-alives from the event loop, SIGHUP reloads, config errors that stop restart loops.

Real svirtd subprocesses, a real private bus and libvirtd, and a real sd_notify datagram socket
(testbed/daemon.py) standing in for systemd's. Under real systemd the same is shown by the e2e run
(RESULT systemd_ready_after_reconcile, systemctl_reload, sighup_survives, status_line, watchdog).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svirtd.service import EX_CONFIG
from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.daemon import SVIRTD, SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.libvirtd import Libvirtd
from testbed.mounts import Mounts
from tests.conftest import clear_hook_env, wait_until
from tests.helpers import call, run, xattr

pytestmark = pytest.mark.integration
STATUS = re.compile(r"^(\d+) guests isolated, (\d+) unconfined, libvirt (connected|not connected \(retrying\))")

StartDaemon = Callable[..., SvirtdProcess]


@pytest.fixture
def daemon(bus: PrivateBus, libvirtd: Libvirtd, guests: GuestFactory, tmp_path: Path) -> Iterator[StartDaemon]:
    started: list[SvirtdProcess] = []

    def start(env: dict[str, str] | None = None, **config: object) -> SvirtdProcess:
        proc = SvirtdProcess(tmp_path / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env, **config)
        started.append(proc)
        return proc.start(env=env)

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.stop()
    clear_hook_env(libvirtd)


def statuses(proc: SvirtdProcess) -> list[str]:
    return [line.removeprefix("STATUS=") for line in proc.drain_notifications() if line.startswith("STATUS=")]


def isolated(bus: PrivateBus, uuid: str) -> bool:
    try:
        return bool(run(call(bus, "Query", "s", uuid))["level"])
    except CallFailed as exc:
        if exc.name.endswith(".NoSuchGuest"):
            return False
        raise


def test_ready_means_the_guests_defined_while_svirtd_was_down_are_isolated(
        bus: PrivateBus, guests: GuestFactory, daemon: StartDaemon) -> None:
    covered, other = guests.new(), guests.new()
    proc = daemon(auto_confine_names=[covered.name])  # returns when READY=1 arrived
    assert isolated(bus, covered.uuid), "READY=1 was sent before the reconcile isolated the guest"
    ready = proc.notifications.index("READY=1")
    status = STATUS.match(proc.notifications[ready + 1].removeprefix("STATUS="))
    assert status is not None, proc.notifications
    assert int(status.group(1)) >= 1 and int(status.group(2)) >= 1 and status.group(3) == "connected"
    # Live: a release makes one more guest unconfined, and the line says so within a few seconds.
    before = int(status.group(2))
    run(call(bus, "Release", "s", covered.uuid))
    wait_until(lambda: any((m := STATUS.match(s)) and int(m.group(2)) == before + 1 for s in statuses(proc)),
               timeout=10, what=f"a STATUS= line with {before + 1} unconfined")
    assert not isolated(bus, other.uuid)


def test_sighup_reloads_what_can_change_and_keeps_the_rest(bus: PrivateBus, guests: GuestFactory,
                                                           daemon: StartDaemon, libvirtd: Libvirtd) -> None:
    first, second = guests.new(), guests.new()
    proc = daemon(auto_confine_names=[first.name], require_confined=False)
    assert proc.proc is not None
    pid = proc.proc.pid
    assert "SVIRTD_REQUIRE_CONFINED=0" in libvirtd.hook_env.read_text()
    assert not isolated(bus, second.uuid)
    proc.config.update(auto_confine_names=[first.name, second.name], require_confined=True, categories="c0.c99")
    proc.write_config()
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: isolated(bus, second.uuid), timeout=20, what="the guest the reload now covers isolated")
    wait_until(lambda: "SVIRTD_REQUIRE_CONFINED=1" in libvirtd.hook_env.read_text(), timeout=10,
               what="hook.env rewritten with require_confined")
    assert proc.proc.poll() is None and proc.proc.pid == pid
    log = proc.log_text()
    assert "categories changed but take effect only after `systemctl restart svirtd`" in log, log[-2000:]
    # The category space is what it was: the running allocation table is not rebuilt under live guests.
    async def categories_total() -> int:
        async with SvirtClient(bus.address) as client:
            return int(await client.prop("CategoriesTotal"))

    assert run(categories_total()) == 1024 * 1023 // 2


def test_a_reload_with_a_broken_file_changes_nothing_and_says_so(bus: PrivateBus, guests: GuestFactory,
                                                                 daemon: StartDaemon, libvirtd: Libvirtd) -> None:
    guests.new()
    proc = daemon(require_confined=False)
    assert proc.proc is not None
    proc.config_path.write_text(proc.config_path.read_text() + "require_confined = maybe\n")
    os.kill(proc.proc.pid, signal.SIGHUP)
    wait_until(lambda: any("last reload failed" in s for s in statuses(proc)), timeout=10,
               what="STATUS= saying the reload failed")
    assert proc.proc.poll() is None
    assert "SVIRTD_REQUIRE_CONFINED=0" in libvirtd.hook_env.read_text()
    assert "reload refused, svirtd goes on with its running configuration" in proc.log_text()


def test_watchdog_keepalives_stop_when_the_event_loop_stops(guests: GuestFactory, daemon: StartDaemon) -> None:
    guests.new()
    proc = daemon(env={"WATCHDOG_USEC": "400000"})  # keep-alives every 0.2 s
    assert proc.proc is not None

    def keepalives(seconds: float) -> int:
        before = proc.drain_notifications().count("WATCHDOG=1")
        time.sleep(seconds)
        return proc.drain_notifications(0.05).count("WATCHDOG=1") - before

    assert keepalives(1.0) >= 3
    os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        proc.drain_notifications(0.05)
        assert keepalives(1.0) == 0
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)
    assert keepalives(1.0) >= 3
    # Not asked for (no WATCHDOG_USEC, or another process's WATCHDOG_PID): none sent.
    proc.stop()
    proc.notifications.clear()
    proc.start(env={"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    assert keepalives(1.0) == 0


def test_a_config_error_exits_78_and_check_config_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "svirtd.conf"
    bad.write_text('categories = "c5"\n')
    checked = subprocess.run([str(SVIRTD), "--config", str(bad), "--check-config"], capture_output=True, text=True)
    assert checked.returncode == EX_CONFIG == 78, checked
    assert "categories" in checked.stderr and "at least two categories" in checked.stderr
    started = subprocess.run([str(SVIRTD), "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert started.returncode == EX_CONFIG and "svirtd --check-config" in started.stderr, started
    good = tmp_path / "good.conf"
    good.write_text('categories = "c0.c9"\n')
    ok = subprocess.run([str(SVIRTD), "--config", str(good), "--check-config"], capture_output=True, text=True)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok


def test_a_reloaded_denied_path_is_never_relabeled(bus: PrivateBus, guests: GuestFactory,
                                                   daemon: StartDaemon) -> None:
    """denied_paths is applied by a reload: the relabeler itself (not only Query) sees the new list."""
    before = guests.new()
    proc = daemon(auto_confine_names=[f"{guests.prefix}-*"])
    assert proc.proc is not None
    wait_until(lambda: isolated(bus, before.uuid), what="the first guest isolated")
    proc.config.update(denied_paths=[str(guests.image_dir)])
    proc.write_config()
    os.kill(proc.proc.pid, signal.SIGHUP)
    wait_until(lambda: "applied: denied_paths" in proc.log_text(), timeout=10, what="the reload logged")
    after = guests.new()
    # svirtd's refusal names the tree (the test's tmp path, in every later log line, says "denied" too)
    wait_until(lambda: after.name in proc.log_text()
               and f"inside the system tree {guests.image_dir}, which svirtd never relabels"
               in proc.log_text().split(after.name, 1)[1],
               timeout=20, what="svirtd refusing the new guest's disk")
    assert xattr(after.disk) is None, "a file under a denied tree was relabeled"
    assert not isolated(bus, after.uuid)


def test_a_sighup_during_the_start_is_a_reload_after_it(bus: PrivateBus, libvirtd: Libvirtd, guests: GuestFactory,
                                                        tmp_path: Path) -> None:
    """systemd counts death by SIGHUP as a clean exit (no restart): a SIGHUP that arrives while svirtd
    is still starting (log rotation, a reload racing the start) must not end it."""
    guests.new()
    proc = SvirtdProcess(tmp_path / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                         auto_confine_names=[f"{guests.prefix}-*"])
    starter = threading.Thread(target=lambda: proc.start(timeout=60), daemon=True)
    try:
        starter.start()
        wait_until(lambda: proc.proc is not None, interval=0.001, what="svirtd spawned")
        started = proc.proc
        assert started is not None
        # Into svirtd's own start (its asyncio loop runs: the start has begun), before READY.
        wait_until(lambda: " starting with " in proc.log_text(), interval=0.002, what="svirtd's start under way")
        assert "READY=1" not in proc.notifications, "too late: svirtd was ready already"
        os.kill(started.pid, signal.SIGHUP)
        starter.join(60)
        assert started.poll() is None, f"svirtd died of the SIGHUP:\n{proc.log_tail()}"
        wait_until(lambda: "configuration reloaded" in proc.log_text(), timeout=10, what="the reload, after the start")
    finally:
        proc.stop()
        clear_hook_env(libvirtd)


def test_helper_processes_do_not_inherit_the_channel_to_systemd(guests: GuestFactory, mounts: Mounts,
                                                               daemon: StartDaemon) -> None:
    """The storage prober (and the tree walker) must not be able to speak for svirtd to systemd. The
    disk is on FUSE: files proven local are read without asking a prober (local_proof.py)."""
    fuse = guests.image_dir / "fuse"
    mounts.bindfs(guests.image_dir / "fuse-src", fuse)
    guests.new(disk_specs=[Disk(make_disk(fuse / "disk.img"), "vda")])
    proc = daemon(env={"WATCHDOG_USEC": "30000000"})
    assert proc.proc is not None
    pid = proc.proc.pid

    def helpers() -> list[str]:
        return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()

    children = wait_until(helpers, what="a helper process of svirtd")
    assert isinstance(children, list)
    for child in children:
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        names = {item.split(b"=", 1)[0] for item in env}
        assert not names & {b"NOTIFY_SOCKET", b"WATCHDOG_USEC", b"WATCHDOG_PID"}, (child, names)
