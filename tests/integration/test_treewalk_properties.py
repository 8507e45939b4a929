"""Review of issue 13: properties of the tree walker and the path policy on generated trees.

Real files, real xattrs, the real helper process. Generated: directories, files with any bytes in their
names (non-UTF-8 included), symlinks (out of the tree, into it, dangling), hard links (to files outside
the tree and inside it), block and character device nodes, FIFOs, sockets; and names swapped for a hard
link to a file outside the tree between the scan and the label (injected into the helper right before it
labels its first entry). Whatever the tree: no file outside it and no node other than a directory or a
regular file with one link ever gets the guest's label, and restore brings back every original.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svirtd import labels
from svirtd.errors import UnsafePath
from svirtd.models import ResourceKind

pytestmark = pytest.mark.integration

TARGET = b"system_u:object_r:svirt_image_t:s0:c21,c22"
ORIGINALS = [None, b"system_u:object_r:user_tmp_t:s0", b"system_u:object_r:public_content_t:s0"]
OUTSIDE_LABEL = b"system_u:object_r:etc_t:s0"
NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]

# The helper, with one fault injected: right before it labels its first entry (everything is scanned and
# journaled by then), the given names are swapped for hard links to a file outside the tree.
SWAPPING_HELPER = """
import json, os, sys
from svirtd import treewalk
swaps = [(bytes.fromhex(victim), bytes.fromhex(outside)) for victim, outside in json.loads(sys.argv[1])]
real_label = treewalk.Labeler._label
done = []
def label(self, *args):  # (..., name, ident, original)
    if not done and args[-3] != ".":
        done.append(True)
        for victim, outside in swaps:
            os.link(outside, victim + b".swap")
            os.rename(victim + b".swap", victim)
    return real_label(self, *args)
treewalk.Labeler._label = label
sys.exit(treewalk.main(sys.argv[2:]))
"""

KINDS = ["dir", "file", "symlink-out", "symlink-in", "symlink-dangling", "hardlink-out", "hardlink-in",
         "block", "char", "fifo", "socket"]
names = st.binary(min_size=1, max_size=6).filter(lambda n: b"/" not in n and b"\0" not in n
                                                  and n not in (b".", b"..") and not n.endswith(b".swap"))


@dataclass(frozen=True)
class Node:
    kind: str
    name: bytes
    parent: int  # index into the directories made so far (0: the root)
    label: bytes | None
    swap: bool  # a file swapped for a hard link to an outside file between scan and label


nodes = st.builds(Node, kind=st.sampled_from(KINDS), name=names, parent=st.integers(0, 30),
                  label=st.sampled_from(ORIGINALS), swap=st.booleans())


def lget(path: bytes) -> bytes | None:
    try:
        return os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0")
    except OSError:
        return None


def lset(path: bytes, label: bytes | None) -> None:
    if label is not None:
        os.setxattr(path, "security.selinux", label, follow_symlinks=False)


def everything(top: bytes) -> dict[bytes, tuple[bytes | None, os.stat_result]]:
    """Label and lstat of every path below top (top included), never following a symlink."""
    found = {top: (lget(top), os.lstat(top))}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[path] = (lget(path), os.lstat(path))
    return found


@contextlib.contextmanager
def scratch() -> Iterator[bytes]:
    with tempfile.TemporaryDirectory(prefix="svirtd-props-") as tmp:
        yield os.fsencode(tmp)


SPECIAL_NODES = {"block": stat.S_IFBLK | 0o600, "char": stat.S_IFCHR | 0o600, "socket": stat.S_IFSOCK | 0o600}
DEVICES = {"block": os.makedev(8, 0), "char": os.makedev(1, 3), "socket": 0}


def build(base: bytes, spec: list[Node]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The tree (root, and the swaps to inject) plus the outside files, under base."""
    outside = [os.path.join(base, b"outside-%d" % i) for i in range(2)]
    for f in outside:
        with open(f, "wb") as fh:
            fh.write(b"secret")
        lset(f, OUTSIDE_LABEL)
    root = os.path.join(base, b"root")
    os.mkdir(root)
    dirs, files, swaps = [root], [], []
    for i, node in enumerate(spec):
        path = os.path.join(dirs[node.parent % len(dirs)], node.name + b"-%d" % i)
        kind, other = node.kind, outside[i % 2]
        if kind == "dir":
            os.mkdir(path)
            dirs.append(path)
        elif kind == "file":
            with open(path, "wb") as fh:
                fh.write(b"x")
            files.append(path)
            swaps += [(path, other)] if node.swap else []
        elif kind.startswith("symlink"):
            os.symlink({"symlink-out": other, "symlink-in": dirs[-1]}.get(kind, b"/nonexistent/x"), path)
        elif kind == "hardlink-out" or (kind == "hardlink-in" and files):
            os.link(other if kind == "hardlink-out" else files[-1], path)
            swaps = [(v, o) for v, o in swaps if kind != "hardlink-in" or v != files[-1]]
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind in SPECIAL_NODES:
            os.mknod(path, SPECIAL_NODES[kind], DEVICES[kind])
        if not kind.startswith(("symlink", "hardlink")):
            lset(path, node.label)
    return root, swaps


def helper(*args: bytes | str, swaps: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    prefix: list[str | bytes] = [sys.executable, "-m", "svirtd.treewalk"]
    if swaps is not None:
        prefix = [sys.executable, "-c", SWAPPING_HELPER, json.dumps([(v.hex(), o.hex()) for v, o in swaps])]
    out = subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=REPO)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict), out.stderr
    return result


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(nodes, min_size=1, max_size=30))
def test_no_outside_file_and_no_special_node_ever_gets_the_label_and_every_original_comes_back(
        spec: list[Node], as_root_session: None) -> None:
    with scratch() as base:
        root, swaps = build(base, spec)
        before = everything(base)
        journal = os.path.join(base, b"journals", b"t")
        result = helper("label", b"--root=" + root, b"--target=" + TARGET, b"--journal=" + journal, "--workers=1",
                        swaps=swaps)
        assert result.get("fatal") is None and result["errors"] == 0, result
        swapped = {v for v, _ in swaps}
        after = everything(base)
        for path, (label, st_) in after.items():
            inside = path.startswith(root + b"/") or path == root
            if not inside or path.startswith(os.path.join(base, b"journals")):
                if path in before:
                    assert label == before[path][0], ("outside the tree", path)
                continue
            may_carry = stat.S_ISDIR(st_.st_mode) or (stat.S_ISREG(st_.st_mode) and st_.st_nlink == 1)
            if label == TARGET:
                assert may_carry and path not in swapped, ("labeled, must never be", path, stat.filemode(st_.st_mode))
            elif may_carry:
                assert path in swapped, ("left unlabeled", path)
        check = helper("check", b"--root=" + root, b"--target=" + TARGET)
        assert (check["errors"], check["off_target"]) == (0, 0), check
        restored = helper("restore", b"--root=" + root, b"--target=" + TARGET, b"--journal=" + journal, "--sweep")
        assert restored["errors"] == 0, restored
        final = everything(base)
        for path, (label, _) in before.items():
            if path in swapped:  # the name is the outside file now: its label is the outside file's
                assert final[path][0] == OUTSIDE_LABEL, path
            else:
                assert final[path][0] == label, ("not restored", path, label, final[path][0])


# -- the path policy: links an unprivileged user controls never redirect a resource ------------------


@dataclass(frozen=True)
class Step:
    link: bool  # this component is a symlink to a directory (else a directory)
    owner: int  # of the symlink
    holder_writable: bool  # the directory holding it is writable by others


steps = st.builds(Step, link=st.booleans(), owner=st.sampled_from([0, NOBODY]), holder_writable=st.booleans())


@settings(max_examples=40, deadline=None)
@given(path_spec=st.lists(steps, min_size=1, max_size=5))
def test_a_path_is_followed_only_through_links_root_alone_controls(path_spec: list[Step],
                                                                   as_root_session: None) -> None:
    with scratch() as base:
        real_base = os.fsdecode(base)
        cur = real_base
        parts: list[str] = []
        trusted = True
        for i, s in enumerate(path_spec):
            os.chmod(cur, 0o777 if s.holder_writable else 0o755)
            if s.link:
                target = os.path.join(real_base, f"t{i}")
                os.mkdir(target)
                os.symlink(target, os.path.join(cur, f"c{i}"))
                os.chown(os.path.join(cur, f"c{i}"), s.owner, s.owner, follow_symlinks=False)
                trusted = trusted and s.owner == 0 and not s.holder_writable
                cur = target
            else:
                os.mkdir(os.path.join(cur, f"c{i}"))
                cur = os.path.join(cur, f"c{i}")
            parts.append(f"c{i}")
        disk = os.path.join(cur, "disk.img")
        with open(disk, "wb") as fh:
            fh.write(b"x")
        given_path = os.path.join(real_base, *parts, "disk.img")
        if trusted:
            with labels.open_resource(given_path, ResourceKind.FILE) as opened:
                assert opened.path == disk and opened.st.st_ino == os.stat(disk).st_ino
        else:
            with pytest.raises(UnsafePath, match="symlink"):
                labels.open_resource(given_path, ResourceKind.FILE)


@pytest.fixture(scope="session")
def as_root_session(as_root: None) -> None:
    """Session-scoped (hypothesis runs many examples per test function)."""
