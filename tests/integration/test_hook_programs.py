"""What svirtd's libvirt hook runs at each phase of a real guest start and stop (issue 15).

Every program the hook starts is paid by every guest start; the time itself is measured by
bench/start_overhead.py, not asserted here. Here: the programs, as strace sees them when the real
libvirtd runs the real hook for a real qemu guest -- prepare begin spools the definition with one
`cat` and asks svirtd with one `dbus-send`, the other phases of a start run nothing on a host whose
libvirt has no SELinux driver (this one) -- and that the hook still relays svirtd's answers.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory, make_disk
from testbed.libvirtd import HOOK_NAME, Libvirtd
from tests.conftest import wait_until
from tests.helpers import call, run, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
IMAGE = "system_u:object_r:svirt_image_t:"
# libvirtd's hook environment (testbed/libvirtd.py: libvirtd runs with this PATH).
HOOK_ENV = {"HOME": "/root", "LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def isolated_level(bus: PrivateBus, uuid: str) -> str | None:
    try:
        report = run(call(bus, "Query", "s", uuid))
    except Exception:
        return None
    return str(report["level"]) if report.get("level") else None


@pytest.fixture
def traced_hook(libvirtd: Libvirtd, tmp_path: Path) -> Iterator[Path]:
    """svirtd's hook as libvirtd runs it, under strace: one log per invocation (LOG.PHASE.PID)."""
    hook = libvirtd.hooks_dir / HOOK_NAME
    original = hook.read_text()
    real = tmp_path / "svirtd-hook"
    real.write_text(original)
    real.chmod(0o755)
    logs = tmp_path / "strace"
    logs.mkdir()
    hook.write_text(f'#!/bin/sh\nexec strace -f -qq -e trace=execve -e signal=none -o "{logs}/$2.$$" {real} "$@"\n')
    try:
        yield logs
    finally:
        hook.write_text(original)
        hook.chmod(0o755)


def programs(logs: Path) -> dict[str, list[str]]:
    """Per phase, the programs that were executed (the hook itself first), over every invocation."""
    ran: dict[str, list[str]] = defaultdict(list)
    for log in sorted(logs.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        phase = log.name.rsplit(".", 1)[0]
        for line in log.read_text().splitlines():
            done = re.match(r'\d+\s+execve\("([^"]+)",.*\)\s+= 0$', line)
            if done:
                ran[phase].append(os.path.basename(done.group(1)))
    return dict(ran)


def test_a_start_runs_one_cat_and_one_dbus_send(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                libvirtd: Libvirtd, traced_hook: Path) -> None:
    svirtd(require_confined=True)
    g = guests.new()
    level = wait_until(functools.partial(isolated_level, bus, g.uuid), what="isolated")
    os.replace(make_disk(g.disk.with_suffix(".new")), g.disk)  # unlabeled: only prepare begin can label it
    spool = libvirtd.hook_env.parent / "hook"
    guests.virsh("start", g.name)
    try:
        assert xattr(g.disk) == IMAGE + str(level), "the hook did not have the disk labeled before qemu"
        started = programs(traced_hook)
        print(f"\nprograms per phase of the start: {started}")
        assert started["prepare"] == ["svirtd-hook", "cat", "dbus-send"], started
        # No SELinux driver here: no label to check at start begin, nothing spooled, nothing asked.
        assert started["start"] == ["svirtd-hook", "mawk"], started
        assert started["started"] == ["svirtd-hook"], started
        # The definition stays spooled while the guest runs (overwritten at its next start): no rm per start.
        assert sorted(p.name for p in spool.iterdir()) == [f"guest-{g.name}.xml"]
    finally:
        guests.virsh("destroy", g.name)
    stopped = programs(traced_hook)
    print(f"programs per phase, start and stop: {stopped}")
    assert stopped["stopped"] == ["svirtd-hook"], stopped
    assert stopped["release"] == ["svirtd-hook", "rm", "dbus-send"], stopped  # the spooled file, then svirtd
    assert not [p for p in spool.iterdir() if p.name.startswith("guest-")], "the spooled definition was left"
    assert all("busctl" not in ran for ran in stopped.values()), stopped
    assert run(call(bus, "Query", "s", g.uuid))["state"] == "shutoff"  # GuestStopped was answered before exit


def test_a_refusal_at_start_begin_reaches_virsh_in_words(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                         libvirtd: Libvirtd) -> None:
    """The hook reads svirtd's (proceed, message) answer from dbus-send's output: a start in another
    guest's pair is refused with svirtd's reason. libvirt here has no SELinux driver, so libvirtd
    cannot start such a guest: the hook is run as libvirtd runs it, with the definition on stdin."""
    svirtd()
    a, b = guests.new(), guests.new()
    level_a = wait_until(functools.partial(isolated_level, bus, a.uuid), what=f"{a.name} isolated")
    wait_until(functools.partial(isolated_level, bus, b.uuid), what=f"{b.name} isolated")
    seclabel = (f"<seclabel type='static' model='selinux' relabel='yes'>"
                f"<label>system_u:system_r:svirt_t:{level_a}</label></seclabel>")
    xml = guests.virsh("dumpxml", b.name).stdout.replace("</domain>", f"{seclabel}</domain>")
    hook = libvirtd.hooks_dir / HOOK_NAME
    refused = subprocess.run([str(hook), b.name, "start", "begin", "-"], input=xml, capture_output=True, text=True,
                             env=HOOK_ENV, cwd="/")
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith(f"svirtd: not starting {b.name}: {b.name} would run with {level_a}"), refused
    assert refused.stderr.rstrip().endswith("own label into its definition first (`svirtctl isolate`)"), refused
    assert not (libvirtd.hook_env.parent / "hook" / f"guest-{b.name}.xml").exists()
    # The same start in the guest's own pair proceeds (and its definition stays spooled, as for prepare).
    own = xml.replace(str(level_a), str(isolated_level(bus, b.uuid)))
    ok = subprocess.run([str(hook), b.name, "start", "begin", "-"], input=own, capture_output=True, text=True,
                        env=HOOK_ENV, cwd="/")
    assert ok.returncode == 0 and ok.stderr == "", ok
    spooled = libvirtd.hook_env.parent / "hook" / f"guest-{b.name}.xml"
    assert spooled.read_text() == own
    released = subprocess.run([str(hook), b.name, "release", "end", "-"], capture_output=True, text=True,
                              env=HOOK_ENV, cwd="/")
    assert released.returncode == 0 and not spooled.exists(), released
