"""Is the libvirt daemon already running? Asked without connecting to it.

svirtd is ordered before libvirtd.service and virtqemud.service, so that the hook of a guest libvirt
autostarts at boot finds svirtd on the bus. A connect to their socket-activated sockets at that moment
would start a daemon whose start waits for svirtd's readiness: svirtd would wait for libvirt while
libvirt waits for svirtd. So svirtd reports ready before the first reconcile only when no libvirt
daemon runs (no guest runs either then, nothing to reconcile yet); when one runs, `systemctl start
svirtd` returns once libvirt's guests are confined.

A running daemon holds a write lock on its pidfile (libvirt's virPidFileAcquire), so the question is
asked with F_GETLK: no /proc lookup of another domain's process, no signal, nothing a stale file or a
reused pid can fool, and nothing taken that the daemon itself could then not take.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

# Where the monolithic and the modular QEMU daemon write their pid (RUNSTATEDIR/<daemon>.pid, as
# `libvirtd --help` says), labeled virt_runtime_t (svirtd's policy: virt_read_runtime_files).
PIDFILES: tuple[str, ...] = ("/run/libvirtd.pid", "/run/virtqemud.pid")
# struct flock on Linux x86_64/aarch64: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid, padded to 32 bytes.
_FLOCK = "hhqqi4x"


def locked_by_another_process(path: str) -> bool:
    """Does some other process hold a lock on the file (F_GETLK: asked, nothing taken)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        return bool(struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK)
    except OSError:
        return False
    finally:
        os.close(fd)


def daemon_running(uri: str, pidfiles: Sequence[str] = PIDFILES) -> bool:
    """False only when uri is the host's own qemu:///system and none of its daemons runs; any other
    URI (a remote host, an explicit socket, a session daemon) cannot be judged from here: True."""
    parts = urlsplit(uri)
    local_system = (parts.scheme in ("qemu", "qemu+unix") and parts.netloc == "" and parts.path == "/system"
                    and "socket" not in parse_qs(parts.query))
    if not local_system:
        return True
    return any(locked_by_another_process(path) for path in pidfiles)
