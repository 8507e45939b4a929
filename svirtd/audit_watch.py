"""The audit edge: AVC records in (kernel netlink multicast, or audit.log), VIRT_* records out.

Live source: the kernel's audit netlink multicast group (AUDIT_NLGRP_READLOG), readable by root with
CAP_AUDIT_READ and needing no auditd. Under systemd the socket comes from svirtd-audit.socket (it must
be opened in the host's network namespace; svirtd runs with PrivateNetwork=yes); otherwise svirtd
opens it itself. Fallback: follow /var/log/audit/audit.log (audit_source = "file:/path").

Records are parsed with auparse. Reading is bounded: at most BATCH records per loop turn, so a flood
never starves the D-Bus side; anything unparsable is counted, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import audit
import auparse

from .denials import AvcRecord, MalformedRecord, avc_from_fields
from .models import Assignment

log = logging.getLogger(__name__)

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AVC_TYPES = {audit.AUDIT_AVC: "AVC", audit.AUDIT_USER_AVC: "USER_AVC"}
BATCH = 8  # records per loop turn: a Query waits at most a few such turns
_NLMSG = struct.Struct("=IHHII")


class AuditCounters:
    def __init__(self) -> None:
        self.received = 0  # AVC / USER_AVC records seen
        self.malformed = 0  # unparsable or incomplete: counted and skipped
        self.lost = 0  # the kernel dropped records for us (socket buffer overrun)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def parse_avc(kind: str, payload: str) -> AvcRecord:
    """One AVC/USER_AVC record (payload as netlink delivers it, or an audit.log line's body)."""
    text = payload if payload.startswith("type=") else f"type={kind} msg={payload}"
    fields: dict[str, str] = {}
    try:
        parser = auparse.AuParser(auparse.AUSOURCE_BUFFER, text if text.endswith("\n") else text + "\n")
        if not parser.first_record():
            raise MalformedRecord("auparse found no record")
        while True:
            name = parser.get_field_name()
            if name is not None:
                fields[name] = parser.get_field_str() or ""
            if not parser.next_field():
                break
    except (OSError, RuntimeError, TypeError) as exc:
        raise MalformedRecord(str(exc)) from exc
    return avc_from_fields(kind, text, fields)


OnRecord = Callable[[AvcRecord], None]


def adopted_netlink_socket() -> socket.socket | None:
    """The audit socket systemd passed (svirtd-audit.socket), if any (sd_listen_fds protocol)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=fd)
            if sock.family == socket.AF_NETLINK:
                return sock
            sock.detach()
    return None


class NetlinkAuditSource:
    def __init__(self, on_record: OnRecord, counters: AuditCounters) -> None:
        self._on_record = on_record
        self.counters = counters
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = adopted_netlink_socket()
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
            with contextlib.suppress(OSError):  # root: a big buffer rides out floods
                sock.setsockopt(socket.SOL_SOCKET, 33, 8 * 1024 * 1024)  # SO_RCVBUFFORCE
            log.info("watching the kernel audit multicast for AVC denials")
        else:
            log.info("watching the kernel audit multicast (socket from svirtd-audit.socket)")
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._sock is not None
        for _ in range(BATCH):  # bounded per turn: the loop stays responsive under a flood
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.counters.lost += 1
                    continue
                log.error("audit socket failed: %s", exc)
                return
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        if len(data) < _NLMSG.size:
            self.counters.malformed += 1
            return
        length, msg_type, _flags, _seq, _pid = _NLMSG.unpack_from(data)
        kind = AVC_TYPES.get(msg_type)
        if kind is None:
            return
        self.counters.received += 1
        payload = data[_NLMSG.size:min(length, len(data))].rstrip(b"\0").decode("utf-8", "replace")
        try:
            record = parse_avc(kind, payload)
        except MalformedRecord:
            self.counters.malformed += 1
            return
        self._on_record(record)

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


class FileAuditSource:
    """Follows an audit.log (the documented fallback where netlink is not available), rotation-aware."""

    def __init__(self, path: Path, on_record: OnRecord, counters: AuditCounters, interval: float = 0.2) -> None:
        self.path = path
        self._on_record = on_record
        self.counters = counters
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow())
        log.info("following %s for AVC denials", self.path)

    async def _follow(self) -> None:
        fh = None
        inode = None
        buffer = ""
        while True:
            try:
                st = self.path.stat()
                if fh is None or st.st_ino != inode or st.st_size < fh.tell():
                    if fh is not None:
                        fh.close()
                    fh = self.path.open("r", errors="replace")
                    if inode is None:
                        fh.seek(0, os.SEEK_END)  # only what comes after svirtd started
                    inode = st.st_ino
                buffer += fh.read(1 << 20)
            except OSError:
                await asyncio.sleep(self._interval)
                continue
            *lines, buffer = buffer.split("\n")
            for index, line in enumerate(lines, 1):
                self._line(line)
                if index % BATCH == 0:
                    await asyncio.sleep(0)  # a big backlog must not starve the D-Bus side
            await asyncio.sleep(self._interval)

    def _line(self, line: str) -> None:
        kind = "USER_AVC" if line.startswith("type=USER_AVC ") else "AVC" if line.startswith("type=AVC ") else None
        if kind is None:
            return
        self.counters.received += 1
        try:
            self._on_record(parse_avc(kind, line))
        except MalformedRecord:
            self.counters.malformed += 1

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class MachineIdEmitter:
    """svirtd's audit trail, in libvirt's record types (src/conf/domain_audit.c), so that
    `ausearch -m VIRT_MACHINE_ID,VIRT_CONTROL` finds svirtd's work next to libvirt's (a manager
    Listener and FailureListener):
    - VIRT_MACHINE_ID per new label binding, as libvirt writes it for the labels it gives;
    - VIRT_CONTROL op=release when a guest gives its pair up (no VIRT_MACHINE_ID: readers of that
      type take every record for a binding);
    - VIRT_CONTROL op=isolate res=failed reason=<error> when an isolation is refused or fails.
    A record that cannot be sent (no CAP_AUDIT_WRITE, audit not compiled in) costs a debug line."""

    def __init__(self, process_label: Callable[[Assignment], str], image_label: Callable[[Assignment], str]) -> None:
        self._process_label = process_label
        self._image_label = image_label
        self._fd: int | None = None

    def isolated(self, assignment: Assignment) -> None:
        self._send(audit.AUDIT_VIRT_MACHINE_ID, assignment.uuid, assignment.name,
                   f"vm-ctx={self._process_label(assignment)} img-ctx={self._image_label(assignment)} model=selinux")

    def released(self, uuid: str, name: str) -> None:
        self._send(audit.AUDIT_VIRT_CONTROL, uuid, name, "model=selinux", op="release")

    def isolation_failed(self, uuid: str, name: str, reason: str) -> None:
        self._send(audit.AUDIT_VIRT_CONTROL, uuid, name, "model=selinux", op="isolate", reason=reason, success=False)

    def _send(self, record_type: int, uuid: str, name: str, tail: str, op: str = "", reason: str = "",
              success: bool = True) -> None:
        # libvirt's field order: virt, op, reason, vm, uuid; the guest's name is untrusted (encoded).
        head = " ".join(f for f in ("virt=kvm", op and f"op={op}", reason and f"reason={reason}") if f)
        try:
            if self._fd is None:
                self._fd = audit.audit_open()
            vm = audit.audit_encode_nv_string("vm", name, 0)
            audit.audit_log_user_message(self._fd, record_type, f"{head} {vm} uuid={uuid} {tail}",
                                         None, None, None, int(success))
        except OSError as exc:
            log.debug("audit record %d not sent: %s", record_type, exc)
