"""openat2(2) with RESOLVE_NO_SYMLINKS (edge; Python's os module has no openat2).

One system call that looks a path up and refuses (ELOOP) at the first symlink on the way, before
following it, instead of a walk of one openat() per component: where a path has no symlink at all,
that is what svirtd's own careful walk (labels.resolve) would end with, for a fraction of its cost.
"""

from __future__ import annotations

import ctypes
import os

_SYS_OPENAT2 = 437  # the same number on every architecture (Linux 5.6, after the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
O_PATH = getattr(os, "O_PATH", 0o10000000)
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long
_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_HOWS: dict[int, _OpenHow] = {}


def open_no_symlinks(path: str, flags: int) -> int:
    """An fd of path opened with flags (O_CLOEXEC added), no symlink followed on the way (with
    O_PATH|O_NOFOLLOW a symlink as the last component is opened itself, as openat does); OSError
    otherwise: ELOOP at a symlink, ENOSYS on a kernel without openat2."""
    how = _HOWS.get(flags)
    if how is None:
        how = _HOWS[flags] = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), ctypes.byref(how), _SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)
