"""Is the libvirt daemon already running? Asked without connecting to it.

svirtd is ordered before libvirtd.service and virtqemud.service, so that the hook of a guest libvirt
autostarts at boot finds svirtd on the bus. A connect to their socket-activated sockets at that moment
would start a daemon whose start waits for svirtd's readiness: svirtd would wait for libvirt while
libvirt waits for svirtd. So svirtd reports ready before the first reconcile only when no libvirt
daemon runs (no guest runs either then, nothing to reconcile yet); when one runs, `systemctl start
svirtd` returns once libvirt's guests are confined.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

# Written by the monolithic and the modular QEMU daemon while they run.
PIDFILES: tuple[tuple[str, str], ...] = (
    ("/run/libvirt/libvirtd.pid", "libvirtd"),
    ("/run/libvirt/virtqemud.pid", "virtqemud"),
)


def _alive(pidfile: str, comm: str) -> bool:
    try:
        with open(pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip() or "0")
        with open(f"/proc/{pid}/comm", encoding="utf-8") as fh:
            return pid > 0 and fh.read().strip() == comm  # not a stale file naming a reused pid
    except (OSError, ValueError):
        return False


def daemon_running(uri: str, pidfiles: Sequence[tuple[str, str]] = PIDFILES) -> bool:
    """False only when uri is the host's own qemu:///system and none of its daemons runs; any other
    URI (a remote host, an explicit socket, a session daemon) cannot be judged from here: True."""
    parts = urlsplit(uri)
    local_system = (parts.scheme in ("qemu", "qemu+unix") and parts.netloc == "" and parts.path == "/system"
                    and "socket" not in parse_qs(parts.query))
    if not local_system:
        return True
    return any(_alive(pidfile, comm) for pidfile, comm in pidfiles)
