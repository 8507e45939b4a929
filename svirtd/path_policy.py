"""Which paths svirtd may relabel at all (pure, judged on the text before anything is opened).

The filesystem-side checks (symlinks, file types, mount points) are made on file descriptors by
labels.py; this module refuses what is wrong whatever the filesystem says: relative paths, '..'
tricks, system trees, and directory trees so large that relabeling them would wreck the host.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable

from .errors import UnsafePath
from .models import Resource, ResourceKind

# Nothing inside these trees is ever relabeled (device nodes are judged separately).
SYSTEM_TREES: tuple[str, ...] = (
    "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin", "/sys", "/usr",
    "/var/lib/selinux", "/var/lib/dpkg", "/var/lib/rpm", "/var/log",
)
# Inside a system tree, files (never trees) svirtd may label: libvirt keeps guests' chardev logs here,
# and the unit lists it in ReadWritePaths= (a test keeps the two in agreement).
GUEST_FILES_IN_SYSTEM_TREES: tuple[str, ...] = ("/var/log/libvirt/qemu",)
# These directories must never be the root of a relabeled tree, nor lie inside one.
# (S108: a deny list, not temporary-file use.)
NEVER_TREE_ROOTS: tuple[str, ...] = (
    "/", "/dev", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var", "/var/lib",  # noqa: S108
    "/var/lib/libvirt", "/var/lib/libvirt/images", "/var/lib/libvirt/qemu", "/var/tmp",  # noqa: S108
)
MAX_PATH = 4096


def check_path_text(path: str) -> None:
    """Refuse paths that are not absolute, normalized, printable text."""
    if not path:
        raise UnsafePath("empty path")
    if len(path) > MAX_PATH:
        raise UnsafePath(f"path longer than {MAX_PATH} characters")
    if "\0" in path or any(ord(c) < 32 for c in path):
        raise UnsafePath(f"{path!r}: control characters in path")
    if not path.startswith("/"):
        raise UnsafePath(f"{path!r}: not an absolute path")
    parts = path.split("/")
    if ".." in parts or "." in parts:
        raise UnsafePath(f"{path!r}: '.' or '..' components are refused; give the real path")
    if posixpath.normpath(path) != path and path != "//":
        raise UnsafePath(f"{path!r}: not a normalized path (repeated or trailing '/')")


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def check_resource_path(res: Resource, extra_denied: Iterable[str] = ()) -> None:
    """UnsafePath if the resource's path may not be relabeled, whatever is on disk."""
    path = res.path
    check_path_text(path)
    guest_file = res.kind is not ResourceKind.TREE and any(
        _inside(path, d) and path != d for d in GUEST_FILES_IN_SYSTEM_TREES)
    for tree in (*SYSTEM_TREES, *extra_denied):
        if _inside(path, tree) and not (guest_file and tree in SYSTEM_TREES):
            raise UnsafePath(f"{path}: inside the system tree {tree}, which svirtd never relabels")
    if _inside(path, "/dev") and res.kind is not ResourceKind.BLOCK:
        raise UnsafePath(f"{path}: device nodes are relabeled only when the domain declares a block disk")
    if res.kind is ResourceKind.TREE:
        check_tree_root(path, extra_denied)


def check_tree_root(path: str, extra_denied: Iterable[str] = ()) -> None:
    for root in (*NEVER_TREE_ROOTS, *SYSTEM_TREES, *extra_denied):
        if path == root or _inside(root, path):
            raise UnsafePath(f"{path}: relabeling this directory tree would take over {root}; share a "
                             "dedicated directory with the guest instead")
    parent = posixpath.dirname(path)
    if parent == "/home":
        raise UnsafePath(f"{path}: a home directory is never relabeled as a whole; share a subdirectory")


class Nesting(enum.Enum):
    NONE = "none"
    INSIDE = "inside"  # the resource lies inside the other's directory tree
    CONTAINS = "contains"  # the resource is a directory tree holding the other


def nesting(path: str, is_tree: bool, other: str, other_is_tree: bool) -> Nesting:
    """How two resources overlap. Both paths are real (symlinks resolved). The very same path is
    not nesting: the shared/private inode rules decide that case."""
    if path == other:
        return Nesting.NONE
    if other_is_tree and _inside(path, other):
        return Nesting.INSIDE
    if is_tree and _inside(other, path):
        return Nesting.CONTAINS
    return Nesting.NONE
