"""Readiness does not wait for a libvirt that is not running (pure judgement on real files)."""

from __future__ import annotations

import os
from pathlib import Path

from svirtd.libvirt_presence import daemon_running


def _comm() -> str:
    return Path(f"/proc/{os.getpid()}/comm").read_text().strip()


def test_a_running_daemon_is_seen_through_its_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "virtqemud.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    assert daemon_running("qemu:///system", [(str(pidfile), _comm())])


def test_no_pidfile_a_stale_one_or_a_reused_pid_mean_not_running(tmp_path: Path) -> None:
    stale = tmp_path / "libvirtd.pid"
    stale.write_text("999999999\n")
    reused = tmp_path / "virtqemud.pid"
    reused.write_text(f"{os.getpid()}\n")  # alive, but not a libvirt daemon
    assert not daemon_running("qemu:///system", [(str(tmp_path / "absent.pid"), "libvirtd"),
                                                  (str(stale), "libvirtd"), (str(reused), "virtqemud")])
    assert not daemon_running("qemu+unix:///system", [])


def test_uris_that_cannot_be_judged_without_connecting_count_as_running() -> None:
    for uri in ("qemu:///system?socket=/tmp/x/libvirt-sock", "qemu+ssh://host/system", "qemu:///session",
                "test:///default"):
        assert daemon_running(uri, []), uri
