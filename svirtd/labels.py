"""The one door to file labels (edge adapter): safe opening, reading and writing ``security.selinux``.

Paths are opened component by component with O_PATH|O_NOFOLLOW from a directory fd, so a symlink
swapped in after the checks cannot redirect a write. A symlink on the way is followed only when nobody
but root can have put it there (see resolve()); labels are then read and written through
``/proc/self/fd/N`` (the magic link names exactly the inode we checked) with libselinux's ``*_raw``
calls, which never translate contexts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsafePath
from .models import ResourceKind
from .mount_table import TABLE
from .openat2 import open_no_symlinks
from .path_policy import check_path_text

XATTR = "security.selinux"
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# Filesystems that cannot hold per-file SELinux labels, and the boolean that grants guests access.
UNLABELABLE_FS: dict[str, str | None] = {
    "nfs": "virt_use_nfs",
    "nfs4": "virt_use_nfs",
    "cifs": "virt_use_samba",
    "smb3": "virt_use_samba",
    "fuse": "virt_use_fusefs",
    "fuseblk": "virt_use_fusefs",
    "9p": None,
    "vfat": None,
    "msdos": None,
    "exfat": None,
    "iso9660": None,
}


class LabelUnsupported(Exception):
    """The filesystem refuses SELinux labels (EOPNOTSUPP, EROFS, or a known unlabelable type)."""

    def __init__(self, path: str, fstype: str, reason: str, mount_point: str = "", sandboxed: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.fstype = fstype
        self.boolean = UNLABELABLE_FS.get(fstype.split(".", 1)[0])
        self.mount_point = mount_point
        # Read-only for svirtd only: a read-only bind mount (systemd's ProtectSystem= sandbox) of a
        # filesystem that is writable underneath.
        self.sandboxed = sandboxed


@dataclass
class Opened:
    """An O_PATH descriptor of a checked resource; close() it when done."""

    fd: int
    path: str  # the real path that was opened (symlinked parents resolved)
    st: os.stat_result

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_resource(path: str, kind: ResourceKind) -> Opened:
    """Open a resource for labeling, refusing anything but the expected kind of file.

    FileNotFoundError if it does not exist; UnsafePath if it is a symlink (block disks excepted:
    /dev/disk/by-* links are resolved to the node they name), the wrong file type, reached through a
    symlink an unprivileged user controls, or resolves into a place the caller's path policy must judge
    again (the returned .path says where).
    """
    check_path_text(path)
    fd, real, via_link = resolve(path, follow_last=kind is ResourceKind.BLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{path} is a symlink (to {os.readlink('', dir_fd=fd)}); name the real file in the "
                             "domain XML")
        if via_link and not real.startswith("/dev/"):
            raise UnsafePath(f"{path}: block disk link points outside /dev ({real})")
        _check_type(path, st, kind)
        if kind is ResourceKind.BLOCK:
            _refuse_mounted(path, fd, st)
    except BaseException:
        os.close(fd)
        raise
    return Opened(fd=fd, path=real, st=st)


MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)


def resolve(path: str, follow_last: bool = False) -> tuple[int, str, bool]:
    """(O_PATH fd, real path, whether the last component was a link followed) of an absolute path.

    A path with no symlink at all: one openat2 call that refuses any. Else one component at a time
    with O_NOFOLLOW. A symlink is followed only when root owns it AND the
    directory holding it is writable by nobody but root: otherwise whoever owns the link or can write
    its directory could point it elsewhere (another guest's files) between two relabels, or after the
    checks. UnsafePath names such a link and its owner. Never follows a magic link: targets are read
    as text and walked again under the same rule. The last component is returned as is (a symlink
    included) unless follow_last.
    """
    fd = None if follow_last else _open_plain(path)
    if fd is not None:
        return fd, path, False
    return _walk(path, follow_last)


def _walk(path: str, follow_last: bool) -> tuple[int, str, bool]:
    todo = [p for p in reversed(path.split("/")) if p]
    walked: list[tuple[str, int]] = []  # (name, O_PATH fd) from / down to the current directory
    root = os.open("/", _O_PATH | os.O_DIRECTORY)
    links = 0
    via_link = False
    try:
        while todo:
            part = todo.pop()
            if part == "." or (part == ".." and not walked):
                continue
            if part == "..":
                os.close(walked.pop()[1])
                continue
            parent = walked[-1][1] if walked else root
            fd = os.open(part, _O_PATH, dir_fd=parent)
            st = os.fstat(fd)
            last = not todo
            if stat.S_ISLNK(st.st_mode) and (not last or follow_last):
                try:
                    target = _trusted_link(parent, part, st, "/" + "/".join([*(n for n, _ in walked), part]))
                finally:
                    os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafePath(f"{path}: more than {MAX_SYMLINKS} symlinks on the way")
                if target.startswith("/"):
                    for _, held in walked:
                        os.close(held)
                    walked.clear()
                todo.extend(p for p in reversed(target.split("/")) if p)
                via_link = via_link or last
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise UnsafePath(f"{path}: component {part!r} is not a directory")
            walked.append((part, fd))
        if not walked:
            return os.dup(root), "/", via_link
        real = "/" + "/".join(n for n, _ in walked)
        return walked.pop()[1], real, via_link
    finally:
        for _, held in walked:
            os.close(held)
        os.close(root)


def _open_plain(path: str) -> int | None:
    """What resolve() ends with for a normalized path with no symlink anywhere on the way: the kernel's
    one-call lookup (openat2, refusing symlinks); None for any other path, or any failure (the walk
    then answers, with its own errors)."""
    if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
        return None
    try:
        return open_no_symlinks(path, _O_PATH)
    except OSError:
        return None


def _trusted_link(parent: int, name: str, st: os.stat_result, where: str) -> str:
    """The target of a symlink that only root can have made or replaced; UnsafePath otherwise."""
    holder = os.fstat(parent)
    if st.st_uid != 0:
        raise UnsafePath(f"{where} is a symlink owned by uid {st.st_uid} ({_user(st.st_uid)}): svirtd follows "
                         "only links root owns in directories only root can write; name the real path")
    if holder.st_uid != 0 or holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"{where} is a symlink in a directory writable by others (owner uid {holder.st_uid}, "
                         f"mode {stat.filemode(holder.st_mode)}): anyone who can write it can swap the link; "
                         "name the real path")
    # The directory is root's alone: the link read by name is the one just checked.
    return os.readlink(name, dir_fd=parent)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


def _refuse_mounted(path: str, fd: int, st: os.stat_result) -> None:
    """A block device the host uses is never handed to a guest: it would get the host's own data. Used:
    mounted (btrfs included: its mountinfo line names an anonymous 0:NN device, the source field the
    real one), held by a device-mapper/md/bcache device (LVM PV, dm-crypt, RAID member), swap, claimed
    exclusively by the kernel (all of these, and ZFS vdevs); or a whole disk one of whose partitions is."""
    why = _host_use(fd, st)
    if why:
        raise UnsafePath(f"{path}: the host uses it ({why}); a guest must never get one of the host's devices")


def _host_use(fd: int, st: os.stat_result) -> str:
    """How the host uses this block device (or one of its partitions), '' when it does not."""
    devices = block_devices(st)
    return _claimed(fd) or _held(devices) or _swap_use(devices) or _mount_use(devices)


def block_devices(st: os.stat_result) -> set[tuple[int, int]]:
    """(major, minor) of a block device and of each of its partitions."""
    devices = {(os.major(st.st_rdev), os.minor(st.st_rdev))}
    with contextlib.suppress(OSError):
        for part in Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}").iterdir():
            with contextlib.suppress(OSError, ValueError):
                number = (part / "dev").read_text().split(":")
                devices.add((int(number[0]), int(number[1])))
    return devices


def _claimed(fd: int) -> str:
    """The kernel's own answer: a mounted filesystem, a dm/md holder, swap or a ZFS pool claims the
    device exclusively, and an exclusive open then fails with EBUSY (closed at once: nothing is read)."""
    try:
        os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return "the kernel holds it: mounted, a device-mapper/RAID member, swap or a ZFS vdev"
    return ""


def _held(devices: set[tuple[int, int]]) -> str:
    for major, minor in sorted(devices):
        with contextlib.suppress(OSError):
            holders = sorted(os.listdir(f"/sys/dev/block/{major}:{minor}/holders"))
            if holders:
                return f"{major}:{minor} is held by {', '.join(holders)}"
    return ""


def _swap_use(devices: set[tuple[int, int]]) -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            if line and _rdev_of(line.split()[0]) in devices:
                return f"swap area {line.split()[0]}"
    return ""


def _mount_use(devices: set[tuple[int, int]]) -> str:
    """Mounted: by device number, or by the mount source (btrfs shows an anonymous 0:NN number)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            source = line.split(" - ", 1)[1].split()[1] if " - " in line else ""
            with contextlib.suppress(ValueError):
                mount_dev = tuple(int(n) for n in fields[2].split(":"))
                if mount_dev in devices or (source.startswith("/dev/") and _rdev_of(source) in devices):
                    return f"mounted on {fields[4]}"
    return ""


def _rdev_of(path: str) -> tuple[int, int] | None:
    """(major, minor) of a block device node, None when path is not one."""
    try:
        st = os.stat(path.replace("\\040", " "))
    except OSError:
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISBLK(st.st_mode) else None


LIBVIRT_REMEMBER = "trusted.libvirt.security.selinux"


def libvirt_remembers(opened: Opened) -> bool:
    """True when libvirt's own SELinux driver has remembered a label on this file, i.e. a guest under
    libvirt's sVirt uses it. (Reading trusted.* needs CAP_SYS_ADMIN; without it this says False.)"""
    try:
        os.getxattr(opened.proc_path, LIBVIRT_REMEMBER)
    except OSError:
        return False
    return True


CAP_SYS_ADMIN = 21


def can_read_trusted_xattrs() -> bool:
    """Is CAP_SYS_ADMIN effective? Without it trusted.* xattrs are invisible (reads say "no such
    attribute"), so libvirt_remembers() cannot see libvirt's records."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    return False


def _check_type(path: str, st: os.stat_result, kind: ResourceKind) -> None:
    mode = st.st_mode
    expected = {
        ResourceKind.FILE: (stat.S_ISREG, "a regular file"),
        ResourceKind.BLOCK: (stat.S_ISBLK, "a block device"),
        ResourceKind.SOCKET: (stat.S_ISSOCK, "a unix socket"),
        ResourceKind.TREE: (stat.S_ISDIR, "a directory"),
    }.get(kind)
    if expected is None:
        raise UnsafePath(f"{path}: resources of kind {kind.value} are never relabeled")
    check, what = expected
    if not check(mode):
        raise UnsafePath(f"{path}: expected {what}, found {_describe_mode(mode)}; refused")


def _describe_mode(mode: int) -> str:
    for check, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symlink")):
        if check(mode):
            return what
    return "an unknown file type"


def read_head(opened: Opened, size: int) -> bytes:
    """The first bytes of a regular file or block device, read through the checked descriptor."""
    fd = os.open(opened.proc_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# Labels are read and written with os.getxattr/os.setxattr, not libselinux's getfilecon_raw/setfilecon_raw:
# its Python binding keeps the GIL while the call waits in the kernel, so ONE worker thread reading a label
# on storage that died (a stopped FUSE server, a dead NFS server) froze every thread of svirtd, the event
# loop included (no D-Bus answers, libvirt's keepalive lapsed). os.* release the GIL around the syscall.
# The raw label is the xattr's value; libselinux stores it with a trailing NUL and so do we.


def get_label(opened: Opened) -> str | None:
    """The raw label, or None when the file carries none."""
    try:
        context = os.getxattr(opened.proc_path, XATTR).rstrip(b"\0").decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise LabelUnsupported(opened.path, fstype_of(opened.st), "filesystem does not support labels") from exc
        raise
    return context


def set_label(opened: Opened, context: str) -> None:
    try:
        os.setxattr(opened.proc_path, XATTR, context.encode() + b"\0")
    except OSError as exc:
        if exc.errno == errno.EROFS:
            mount_point, sandboxed = readonly_mount(opened.path, opened.st)
            raise LabelUnsupported(opened.path, fstype_of(opened.st), os.strerror(exc.errno), mount_point,
                                   sandboxed) from exc
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise LabelUnsupported(opened.path, fstype_of(opened.st), os.strerror(exc.errno)) from exc
        raise


def readonly_mount(path: str, st: os.stat_result) -> tuple[str, bool]:
    """(mount point, read-only only in this mount namespace) of the mount holding path. A bind mount
    made read-only over a writable superblock is what systemd's sandbox (ProtectSystem=strict without
    a ReadWritePaths= entry) looks like from inside."""
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    best = ("", False)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, rest = line.partition(" - ")
            mount = fields.split()
            tail = rest.split()
            if len(mount) < 6 or len(tail) < 3 or mount[2] != want:
                continue
            point = mount[4].replace("\\040", " ")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best[0]):
                best = (point, "ro" in mount[5].split(",") and "rw" in tail[2].split(","))
    return best


def remove_label(opened: Opened) -> None:
    """Drop the label entirely (restoring a file that had none)."""
    try:
        os.removexattr(opened.proc_path, XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise


def check_labelable(opened: Opened) -> None:
    """LabelUnsupported if the file's filesystem is of a type that cannot carry labels, or is mounted
    read-only here (for svirtd only, when its unit's sandbox keeps the directory read-only)."""
    fstype = fstype_of(opened.st)
    if fstype.split(".", 1)[0] in UNLABELABLE_FS:
        raise LabelUnsupported(opened.path, fstype, f"{fstype} filesystems cannot carry per-guest labels")
    if os.fstatvfs(opened.fd).f_flag & os.ST_RDONLY:
        mount_point, sandboxed = readonly_mount(opened.path, opened.st)
        raise LabelUnsupported(opened.path, fstype, "read-only file system", mount_point, sandboxed)


def fstype_of(st: os.stat_result) -> str:
    """Filesystem type of the mount holding st, or 'unknown' (the mount table, read again only when
    it changes: no read of /proc/self/mountinfo per resource)."""
    try:
        mount = TABLE.by_device(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    except OSError:
        return "unknown"
    return mount.fstype if mount is not None else "unknown"
