"""The kernel tells Query's cache when what it read may have changed (real inotify, real xattrs, real
renames): a label set behind svirtd's back, a file replaced under its name, a directory on the way
moved, a missing file created; a sibling's change is not the file's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.file_watch import FileWatch

pytestmark = pytest.mark.integration

XATTR = "security.selinux"


@pytest.fixture
def watch() -> Iterator[FileWatch]:
    w = FileWatch()
    yield w
    w.close()


def disk_in(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    disk = images / "disk.img"
    disk.write_bytes(b"x")
    return disk


def watched(watch: FileWatch, *paths: Path) -> int:
    token = watch.watch("g", [str(p) for p in paths])
    assert token is not None
    assert watch.unchanged("g", token)
    return token


def test_a_label_set_behind_the_watchers_back_is_a_change(watch: FileWatch, tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    token = watched(watch, disk)
    (disk.parent / "other.img").write_bytes(b"y")  # a sibling appearing, and changing
    os.setxattr(disk.parent / "other.img", XATTR, b"system_u:object_r:virt_image_t:s0\0")
    with disk.open("ab") as f:
        f.write(b"data")  # content: not what a report reads
    assert watch.unchanged("g", token)
    os.setxattr(disk, XATTR, b"system_u:object_r:virt_image_t:s0\0")
    assert not watch.unchanged("g", token)
    assert not watch.unchanged("g", token)  # and stays changed until watched again
    assert watch.unchanged("g", watched(watch, disk))


def test_a_file_replaced_under_its_name_is_a_change(watch: FileWatch, tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    token = watched(watch, disk)
    new = disk.with_name("new.img")
    new.write_bytes(b"z")
    assert watch.unchanged("g", token)
    os.replace(new, disk)
    assert not watch.unchanged("g", token)


def test_a_directory_on_the_way_moved_is_a_change(watch: FileWatch, tmp_path: Path) -> None:
    disk = disk_in(tmp_path)
    token = watched(watch, disk)
    os.rename(disk.parent, tmp_path / "moved")
    assert not watch.unchanged("g", token)


def test_a_missing_file_that_appears_is_a_change(watch: FileWatch, tmp_path: Path) -> None:
    missing = tmp_path / "later" / "nvram.fd"
    token = watched(watch, missing)
    missing.parent.mkdir()
    assert not watch.unchanged("g", token)
    token = watched(watch, missing)
    missing.write_bytes(b"")
    assert not watch.unchanged("g", token)


def test_keys_are_told_apart(watch: FileWatch, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    token_a, token_b = watch.watch("a", [str(a)]), watch.watch("b", [str(b)])
    assert token_a is not None and token_b is not None
    os.setxattr(b, XATTR, b"system_u:object_r:virt_image_t:s0\0")
    assert watch.unchanged("a", token_a) and not watch.unchanged("b", token_b)
    watch.forget("a")
    assert not watch.unchanged("a", token_a)  # nothing is kept for a key no longer watched


def test_a_change_queued_before_a_key_is_watched_is_not_that_keys(watch: FileWatch, tmp_path: Path) -> None:
    """Events still queued when a key starts watching are changes made before it reads anything."""
    disk = disk_in(tmp_path)
    assert watch.watch("before", [str(disk)]) is not None
    os.setxattr(disk, XATTR, b"system_u:object_r:virt_image_t:s0\0")  # queued, not read yet
    token = watch.watch("after", [str(disk)])
    assert token is not None and watch.unchanged("after", token)
