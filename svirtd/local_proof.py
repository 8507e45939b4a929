"""Is a path's lookup provably confined to filesystems that have no server to wait for? (edge)

The storage gate asks a killable helper before svirtd's threads touch files on storage that may hang
(NFS, FUSE...). For files on the host's own block devices or memory that question is pure cost: the
helper's statx there is answered from the inode cache, not from a server. But a path's TEXT does not
say where its lookup goes: `images/remote -> /mnt/nfs` makes `images/remote/disk.img` look local (the
reason an earlier shortcut was reverted). So the proof is two steps, both of which stop before
anything non-local is touched:

1. every mount on the path's text (each prefix that is a mount point, over-mounted ones included) is
   of a local type, from the cached mount table;
2. the kernel resolves the path with openat2(RESOLVE_NO_SYMLINKS): it refuses (ELOOP) at the first
   symlink, before following it. A path with no symlink is looked up exactly along its text, i.e.
   across exactly the mounts of step 1.

A path that is not proven is simply asked the slow way. Run step 2 in a worker thread: a local disk
that stops answering costs that thread, as any read there would.
"""

from __future__ import annotations

import errno
import os
import posixpath

from .mount_table import MountTable
from .openat2 import O_PATH, open_no_symlinks

# Filesystems on this host's block devices or in memory: their statx never waits on a server.
# Left out on purpose: network and cluster filesystems, FUSE, overlay (its layers may be anything),
# images of files (squashfs, iso9660, erofs: usually a loop device on some other filesystem), zfs.
LOCAL_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "bcachefs", "vfat", "exfat",
                           "tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})

def text_is_local(path: str, table: MountTable) -> bool:
    """Step 1: an absolute, normalized path all of whose mounts (by its text) are of local types."""
    if not path.startswith("/") or "\0" in path or posixpath.normpath(path) != path or path.startswith("//"):
        return False  # '.', '..', '//' make the text and the walk differ
    mounts = table.along(path)
    return bool(mounts) and all(m.fstype in LOCAL_FSTYPES for m in mounts)


def resolves_without_links(path: str) -> bool:
    """Step 2: the kernel looks the path up without meeting a symlink (a missing file counts: its
    lookup stopped in a directory of step 1). False on ELOOP, on any other failure, and where the
    kernel has no openat2 (nothing proven then)."""
    try:
        os.close(open_no_symlinks(path, O_PATH))
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)
    return True


def provably_local(path: str, table: MountTable) -> bool:
    return text_is_local(path, table) and resolves_without_links(path)
