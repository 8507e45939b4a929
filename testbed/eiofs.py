"""A FUSE view of a directory whose chosen operations fail with EIO: storage returning I/O errors.

    python -m testbed.eiofs SOURCE MOUNTPOINT CONTROL [--rw]

CONTROL is a file outside the mount, read at every operation: each line "OP /relative/path" (or
"OP *") makes that operation fail with EIO for that path (every path). OPs are fusepy's names:
getattr, getxattr, listxattr, readdir, open, read, write, fsync, statfs. A missing or empty CONTROL
fails nothing. No attribute or entry caching, so each lookup reaches this process. Read-only unless
--rw: read-only is all svirtd asks of storage it cannot label (FUSE). --rw serves as the backing file
of a loop device, so a labelable filesystem (ext4) sits on a disk whose writes can start failing.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

from fusepy import FUSE, FuseOSError, Operations  # Debian's python3-fusepy


class EioFs(Operations):  # type: ignore[misc]
    def __init__(self, source: str, control: str, writable: bool) -> None:
        self.source = source
        self.control = Path(control)
        self.writable = writable

    def _real(self, op: str, path: str) -> str:
        try:
            rules = self.control.read_text().split("\n")
        except FileNotFoundError:
            rules = []
        if f"{op} {path}" in rules or f"{op} *" in rules:
            raise FuseOSError(errno.EIO)
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.lstat(self._real("getattr", path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
                                            "st_mtime", "st_ctime", "st_ino", "st_dev")}

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return os.getxattr(self._real("getxattr", path), name, follow_symlinks=False)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from exc

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._real("listxattr", path), follow_symlinks=False)

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._real("readdir", path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._real("readlink", path))

    def open(self, path: str, flags: int) -> int:
        if not self.writable:
            flags &= ~(os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        return os.open(self._real("open", path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._real("read", path)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._real("write", path)
        return os.pwrite(fh, data, offset)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._real("fsync", path)
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real("statfs", path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}


def main() -> None:
    source, mountpoint, control = sys.argv[1:4]
    writable = sys.argv[4:] == ["--rw"]
    FUSE(EioFs(source, control, writable), mountpoint, foreground=True, nothreads=True, ro=not writable, fsname="eiofs",
         attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main()
