"""Path text judged before anything is opened (pure)."""

from __future__ import annotations

import pytest

from svirtd.errors import UnsafePath
from svirtd.models import Resource, ResourceClass, ResourceKind
from svirtd.path_policy import Nesting, check_resource_path, nesting


def res(path: str, kind: ResourceKind = ResourceKind.FILE) -> Resource:
    return Resource(path=path, device="disk vda", kind=kind, rclass=ResourceClass.PRIVATE)


@pytest.mark.parametrize("path", [
    "/var/lib/libvirt/images/../../../etc/passwd",  # '..' trick
    "/var/lib/libvirt/images/./a.img",
    "images/a.img",  # relative
    "/etc/shadow", "/usr/bin/qemu", "/boot/vmlinuz", "/proc/1/mem", "/sys/kernel/x",
    "/var/lib/selinux/default/active/x", "/var/log/syslog",
    "/dev/sda",  # a device node named as a file disk
    "/var/lib/libvirt/images//a.img", "/var/lib/libvirt/images/a.img/",
    "/var/lib/libvirt/images/a\nb.img", "",
])
def test_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_resource_path(res(path))


@pytest.mark.parametrize("path", ["/", "/home", "/home/alice", "/root", "/var", "/var/lib", "/var/lib/libvirt/images",
                                  "/tmp", "/srv", "/etc/x"])
def test_tree_roots_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_resource_path(res(path, ResourceKind.TREE))


@pytest.mark.parametrize("path,kind", [
    ("/var/lib/libvirt/images/a.img", ResourceKind.FILE),
    ("/home/alice/vms/a.img", ResourceKind.FILE),
    ("/dev/vg0/web01", ResourceKind.BLOCK),
    ("/srv/share/web01", ResourceKind.TREE),
    ("/home/alice/shares/web01", ResourceKind.TREE),
])
def test_allowed(path: str, kind: ResourceKind) -> None:
    check_resource_path(res(path, kind))


def test_extra_denied_trees() -> None:
    with pytest.raises(UnsafePath, match="/var/lib/svirtd"):
        check_resource_path(res("/var/lib/svirtd/state.db"), ["/var/lib/svirtd"])


@pytest.mark.parametrize(("path", "is_tree", "other", "other_is_tree", "expected"), [
    ("/srv/a/disk.img", False, "/srv/a", True, Nesting.INSIDE),
    ("/srv/a/deep/er/disk.img", False, "/srv/a", True, Nesting.INSIDE),
    ("/srv/a", True, "/srv/a/disk.img", False, Nesting.CONTAINS),
    ("/srv/a", True, "/srv/a/sub", True, Nesting.CONTAINS),
    ("/srv/a/sub", True, "/srv/a", True, Nesting.INSIDE),
    ("/srv/ab/disk.img", False, "/srv/a", True, Nesting.NONE),  # a sibling with a common prefix
    ("/srv/a/disk.img", False, "/srv/a", False, Nesting.NONE),  # the other is a file, not a tree
    ("/srv/a", True, "/srv/a", True, Nesting.NONE),  # the same tree: inode rules decide
    ("/srv/a/x.img", False, "/srv/a/y.img", False, Nesting.NONE),
])
def test_nesting(path: str, is_tree: bool, other: str, other_is_tree: bool, expected: Nesting) -> None:
    assert nesting(path, is_tree, other, other_is_tree) is expected


def test_libvirts_guest_log_directory_is_labelable_but_nothing_else_of_var_log() -> None:
    """Issue 13, item 6: a serial log in /var/log/libvirt/qemu used to fail the whole plan."""
    check_resource_path(res("/var/log/libvirt/qemu/web01-serial0.log"))
    for refused in ("/var/log/libvirt/qemu", "/var/log/libvirt/libvirtd.log", "/var/log/messages"):
        with pytest.raises(UnsafePath):
            check_resource_path(res(refused))
    with pytest.raises(UnsafePath):  # never as a tree
        check_resource_path(res("/var/log/libvirt/qemu/dir", ResourceKind.TREE))


def test_the_units_writable_paths_and_the_path_policy_agree() -> None:
    """Every directory the unit lets svirtd write (ReadWritePaths=) holds files the path policy lets it
    label; a place the policy allows but the unit keeps read-only is reported as sandboxed at run time."""
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[2] / "systemd" / "svirtd.service").read_text()
    writable = [w.lstrip("-") for line in unit.splitlines() if line.startswith("ReadWritePaths=")
                for w in line.split("=", 1)[1].split()]
    assert "/var/log/libvirt/qemu" in writable
    for directory in writable:
        check_resource_path(res(f"{directory}/guest-file"))
