"""A real libvirtd (+ virtlogd) for tests and the demo: reuse a running one, else start our own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .process import stop_process

URI = "qemu:///system"
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")


def answers(uri: str = URI, timeout: float = 5.0) -> bool:
    try:
        return subprocess.run(["virsh", "-c", uri, "version"], capture_output=True,
                              timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def listening(path: Path) -> bool:
    """Does a process accept connections on this unix socket (not merely: does the file exist)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def fix_kvm_permissions() -> None:
    """qemu runs as libvirt-qemu (group kvm): without this every libvirtd start re-probes qemu (~12 s)."""
    kvm = Path("/dev/kvm")
    if kvm.exists():
        shutil.chown(kvm, group="kvm")
        kvm.chmod(0o660)


class Libvirtd:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.virtlogd: subprocess.Popen[bytes] | None = None
        self.libvirtd: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        return self.libvirtd is not None

    def ensure(self, timeout: float = 60.0) -> Libvirtd:
        """virtlogd and libvirtd, each checked on its own: a running libvirtd cannot start guests without virtlogd."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.ensure_virtlogd()
        if answers():
            return self
        fix_kvm_permissions()
        self.start_libvirtd(timeout)
        return self

    def ensure_virtlogd(self) -> None:
        if not listening(VIRTLOGD_SOCKET):
            # A socket file left by a virtlogd that died (or a snapshot of /run) refuses connections:
            # every guest start would then fail with "Connection refused".
            VIRTLOGD_SOCKET.unlink(missing_ok=True)
            self.virtlogd = subprocess.Popen(["virtlogd"], stdout=subprocess.DEVNULL,
                                             stderr=(self.logdir / "virtlogd.log").open("wb"))
            _wait_for(lambda: listening(VIRTLOGD_SOCKET), 10, "virtlogd to accept connections")

    def start_libvirtd(self, timeout: float = 60.0) -> None:
        self.libvirtd = subprocess.Popen(
            [sys.executable, "-m", "testbed.subreaper", "libvirtd"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL, stderr=(self.logdir / "libvirtd.log").open("ab"),
            start_new_session=True,
        )
        _wait_for(answers, timeout, "libvirtd to answer virsh version")

    def restart_libvirtd(self, timeout: float = 60.0) -> None:
        """Stop whichever libvirtd runs (ours or not) and start ours: e.g. so that it sees a new hook."""
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
        _wait_for(lambda: not answers(timeout=1), 30, "libvirtd to stop")
        self.start_libvirtd(timeout)

    def kill_libvirtd(self) -> None:
        """SIGKILL libvirtd (not its guests), as a crash would."""
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not answers(timeout=1), 10, "libvirtd to die")

    def stop(self) -> None:
        for proc in (self.libvirtd, self.virtlogd):
            stop_process(proc, 20)
        self.libvirtd = self.virtlogd = None


def _wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
