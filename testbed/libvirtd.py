"""A private libvirtd (+ virtlogd) for tests, benches and the demo: never the host's.

It runs the host's libvirt binaries and qemu.conf, inside its own mount namespace where these are
bind-mounted over by directories of its work dir:

- /etc/libvirt: a copy of the host's, with no domain definitions, no hooks but svirtd's (pointing at
  this run's hook.env) and no nwfilters svirtd defined (so svirtd-* filters never outlive the run);
- /run/libvirt: sockets (libvirt-sock, virtlogd-sock) and qemu runtime state;
- /var/lib/libvirt/qemu, /var/log/libvirt/qemu: guest state and logs.

The host's libvirtd, its guests, its hooks and its filters are never touched, and two runs side by side
do not see each other's guests. Clients reach it with `uri` (qemu:///system?socket=...). Guests are
ordinary qemu processes on the host; their images live wherever the test puts them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import libvirt

from .process import stop_process

REPO = Path(__file__).resolve().parent.parent
HOOK_TEMPLATE = REPO / "data" / "libvirt" / "svirtd-hook.sh"
HOOK_NAME = "svirtd"
# Bind-mounted over inside the namespace: (host path, name of the private directory).
PRIVATE_DIRS = (
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt/qemu", "lib-qemu"),
    ("/var/log/libvirt/qemu", "log-qemu"),
)


def answers(uri: str, timeout: float = 5.0) -> bool:
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
    """One private libvirtd; start() it, use .uri, stop() it (destroys every guest it runs)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hook_env = workdir / "hook.env"  # where this run's svirtd tells the hook how to reach it
        self._procs: list[subprocess.Popen[bytes]] = []  # every namespace launched (old ones reap orphans)

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.runtime_dir / 'libvirt-sock'}"

    @property
    def runtime_dir(self) -> Path:
        """Its /run/libvirt as seen from the host (qemu pid files under qemu/)."""
        return self.workdir / "run"

    @property
    def hooks_dir(self) -> Path:
        """Its /etc/libvirt/hooks/qemu.d as seen from the host."""
        return self.workdir / "etc" / "hooks" / "qemu.d"

    @property
    def definitions_dir(self) -> Path:
        """Its /etc/libvirt/qemu (persistent domain definitions) as seen from the host."""
        return self.workdir / "etc" / "qemu"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "libvirtd.pid"

    def start(self, timeout: float = 60.0) -> Libvirtd:
        self._prepare()
        fix_kvm_permissions()
        self.start_libvirtd(timeout)
        return self

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # qemu (libvirt-qemu) and unprivileged test callers pass through it
        etc = self.workdir / "etc"
        if not etc.exists():
            shutil.copytree("/etc/libvirt", etc, symlinks=True)
            for sub in ("qemu", "hooks", "storage", "secrets"):
                shutil.rmtree(etc / sub, ignore_errors=True)
            (etc / "qemu" / "networks").mkdir(parents=True)
            for custom in (etc / "nwfilter").glob("svirtd*"):
                custom.unlink()
        for _host, name in PRIVATE_DIRS[1:]:
            (self.workdir / name).mkdir(exist_ok=True)
        shutil.chown(self.workdir / "lib-qemu", "libvirt-qemu", "libvirt-qemu")
        (self.workdir / "lib-qemu").chmod(0o750)
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        # The hook first: libvirtd only discovers hooks when it starts.
        hook = self.hooks_dir / HOOK_NAME
        hook.write_text(HOOK_TEMPLATE.read_text().replace("@HOOK_ENV@", str(self.hook_env)))
        hook.chmod(0o755)

    def start_libvirtd(self, timeout: float = 60.0) -> None:
        """(Re)start libvirtd in a new namespace over the same directories (guests keep running)."""
        mounts = " && ".join(f"mount --bind {self.workdir / name} {host}" for host, name in PRIVATE_DIRS)
        virtlogd_sock = self.runtime_dir / "virtlogd-sock"
        start_virtlogd = ""
        if not listening(virtlogd_sock):
            virtlogd_sock.unlink(missing_ok=True)
            start_virtlogd = f"virtlogd --daemon --pid-file {self.workdir / 'virtlogd.pid'} && "
        script = (f"{mounts} && {start_virtlogd}"
                  f"exec {sys.executable} -m testbed.subreaper libvirtd --pid-file {self.pid_file}")
        log = (self.workdir / "libvirtd.log").open("ab")
        self._procs.append(subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                            start_new_session=True))
        _wait_for(lambda: answers(self.uri, timeout=2), timeout, "the private libvirtd to answer")

    def ensure_running(self) -> None:
        """Start libvirtd again if a test killed it and failed before bringing it back."""
        if not answers(self.uri, timeout=5):
            self.start_libvirtd()

    def libvirtd_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def restart_libvirtd(self, timeout: float = 60.0) -> None:
        os.kill(self.libvirtd_pid(), signal.SIGTERM)
        _wait_for(lambda: not answers(self.uri, timeout=1), 30, "libvirtd to stop")
        self.start_libvirtd(timeout)

    def kill_libvirtd(self) -> None:
        """SIGKILL libvirtd (not its guests), as a crash would."""
        os.kill(self.libvirtd_pid(), signal.SIGKILL)
        _wait_for(lambda: not answers(self.uri, timeout=1), 10, "libvirtd to die")

    def qemu_pids(self) -> list[int]:
        """qemu processes of this libvirtd's guests (its pid files)."""
        pids = []
        for pid_file in (self.runtime_dir / "qemu").glob("*.pid"):
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (OSError, ValueError):
                continue
            pids.append(pid)
        return pids

    def destroy_all(self) -> None:
        remove_domains(self.uri, lambda _name: True)

    def stop(self) -> None:
        """Destroy every guest, stop libvirtd and virtlogd; nothing of this run keeps running."""
        if answers(self.uri, timeout=5):
            self.destroy_all()
        for pid in self.qemu_pids():  # a guest libvirtd could not destroy (it was dead, say)
            with _gone():
                os.kill(pid, signal.SIGKILL)
        with _gone():
            os.kill(self.libvirtd_pid(), signal.SIGTERM)
        for proc in self._procs:
            stop_process(proc, 20)
        self._procs.clear()
        virtlogd_pid = self.workdir / "virtlogd.pid"
        with _gone():
            pid = int(virtlogd_pid.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            _wait_for(lambda: not _alive(pid), 10, "virtlogd to stop")


def _gone() -> contextlib.suppress:
    """What signalling a process that is gone (or never wrote its pid file) raises."""
    return contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it only waits for its parent (PID 1 here, slow) to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def remove_domains(uri: str, wanted: object) -> None:
    """Destroy and undefine every domain whose name `wanted(name)` accepts."""
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains(0):
            if callable(wanted) and wanted(dom.name()):
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                                          | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
                except libvirt.libvirtError:
                    pass
    finally:
        conn.close()


def _wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
