"""Readiness does not wait for a libvirt that is not running: judged by the lock a running daemon holds
on its pidfile (real files, a real lock held by another process)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svirtd.libvirt_presence import PIDFILES, daemon_running, locked_by_another_process

HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)  # as libvirt's virPidFileAcquire: byte 0\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")


def test_a_pidfile_locked_by_a_running_daemon_means_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "libvirtd.pid"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(pidfile)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert locked_by_another_process(str(pidfile))
        assert daemon_running("qemu:///system", [str(tmp_path / "absent.pid"), str(pidfile)])
    finally:
        holder.kill()
        holder.wait()
    # The daemon is gone, its file stays (a crash): not running.
    assert pidfile.exists() and not daemon_running("qemu:///system", [str(pidfile)])


def test_no_pidfile_or_an_unlocked_one_means_not_running(tmp_path: Path) -> None:
    stale = tmp_path / "virtqemud.pid"
    stale.write_text("1\n")  # names a live process, but nobody holds the lock
    assert not daemon_running("qemu:///system", [str(tmp_path / "absent.pid"), str(stale)])
    assert not daemon_running("qemu+unix:///system", [])


def test_uris_that_cannot_be_judged_without_connecting_count_as_running() -> None:
    for uri in ("qemu:///system?socket=/tmp/x/libvirt-sock", "qemu+ssh://host/system", "qemu:///session",
                "test:///default"):
        assert daemon_running(uri, []), uri


def test_the_pidfiles_are_where_libvirt_writes_them() -> None:
    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd is not installed (make deps installs it)")
    done = subprocess.run(["libvirtd", "--help"], capture_output=True, text=True)
    out = done.stdout + done.stderr
    written = re.search(r"PID file \(unless overridden by -p\):\s*\n\s*(\S+)", out)
    assert written is not None, out
    assert written.group(1) in PIDFILES
