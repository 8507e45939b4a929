"""Issue 4: every guest resource labeled by class and restored exactly; hostile input refused.

Real files on real filesystems (ext4, devtmpfs, ramfs, a FUSE mount), a real loop block device, real
libvirt definitions, svirtd as a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from svirtd.service import IO_THREADS
from svirtd.storage_gate import THREADS_PER_MOUNT
from testbed.bus import PrivateBus
from testbed.client import CallFailed
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.mounts import Mounts
from tests.conftest import wait_until
from tests.helpers import call, labeled_by_svirtd, run, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]

IMAGE = "system_u:object_r:svirt_image_t:"
SHARED = "system_u:object_r:svirt_image_t:s0"
CONTENT = "system_u:object_r:virt_content_t:s0"


def setlabel(path: Path | str, label: str | None) -> None:
    if label is None:
        with contextlib.suppress(OSError):
            os.removexattr(path, "security.selinux", follow_symlinks=False)
    else:
        os.setxattr(path, "security.selinux", label.encode(), follow_symlinks=False)


def snapshot(*roots: Path | str) -> dict[str, str | None]:
    """Every label under the given roots (symlinks themselves, never followed)."""
    found: dict[str, str | None] = {}
    for top in roots:
        root = str(top)
        found[root] = xattr(root)
        if os.path.isdir(root) and not os.path.islink(root):
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    full = os.path.join(dirpath, name)
                    # Listed, then gone (another process's file in /etc): not in the snapshot. A root
                    # that is gone raises (xattr), never reads as "no label".
                    with contextlib.suppress(FileNotFoundError):
                        found[full] = xattr(full)
    return found






def labeled(bus: PrivateBus, uuid: str) -> dict[str, Any] | None:
    try:
        report = run(call(bus, "Query", "s", uuid))
    except CallFailed:
        return None
    ok = labeled_by_svirtd(report, also=("not-relabeled", "absent", "unlabelable"))
    return report if ok else None


@pytest.fixture
def loopdev(tmp_path: Path, mounts: Mounts) -> Iterator[str]:
    dev = mounts.loop_device(tmp_path / "block.img")
    original = xattr(dev)
    yield dev
    setlabel(dev, original)


def make_tree(root: Path, files: int, rng: random.Random, labels: list[str | None]) -> None:
    for i in range(files):
        sub = root / f"d{i % 7}" / f"e{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        f = sub / f"f{i}"
        f.write_bytes(b"x")
        setlabel(f, rng.choice(labels))
    (root / "link-to-passwd").symlink_to("/etc/passwd")  # never followed


def test_every_resource_class_is_labeled_and_restored_exactly(bus: PrivateBus, guests: GuestFactory,
                                                             svirtd: StartSvirtd, loopdev: str) -> None:
    d = guests.image_dir
    rng = random.Random(7)
    originals = [None, "system_u:object_r:virt_image_t:s0", "system_u:object_r:user_tmp_t:s0"]
    files = {name: make_disk(d / name) for name in ("top.img", "base.img", "shared.img", "ro.img", "install.iso",
                                                    "vmlinuz", "initrd", "vars.fd", "serial.log", "code.fd")}
    for f in files.values():
        setlabel(f, rng.choice(originals))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "agent.sock"))
    make_tree(d / "share", 300, rng, originals)
    make_tree(d / "share-ro", 50, rng, originals)
    swtpm = d / "swtpm"
    extra_devices = f"""
      <disk type='block' device='disk'><source dev='{loopdev}'/><target dev='vdz' bus='virtio'/></disk>
      <serial type='file'><source path='{d}/serial.log'/><target port='0'/></serial>
      <channel type='unix'><source mode='bind' path='{d}/agent.sock'/>
        <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
      <filesystem type='mount' accessmode='passthrough'><source dir='{d}/share'/><target dir='share'/></filesystem>
      <filesystem type='mount' accessmode='passthrough'><source dir='{d}/share-ro'/><target dir='ro'/>
        <readonly/></filesystem>
      <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
      <hostdev mode='subsystem' type='pci' managed='yes'>
        <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev>"""
    top = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{d}/top.img'/>"
           f"<backingStore type='file'><format type='raw'/><source file='{d}/base.img'/><backingStore/>"
           "</backingStore><target dev='vda' bus='virtio'/></disk>")
    g = guests.new(define=False, disk_specs=[
        Disk(files["shared.img"], "vdb", shareable=True),
        Disk(files["ro.img"], "vdc", readonly=True),
        Disk(files["install.iso"], "sda", device="cdrom"),
    ], extra_devices=top + extra_devices)
    g.xml = g.xml.replace("<os>", "<features><acpi/></features><os>").replace(
        "<boot dev='hd'/>",
        f"<loader readonly='yes' type='pflash'>{d}/code.fd</loader><nvram>{d}/vars.fd</nvram>"
        f"<kernel>{d}/vmlinuz</kernel><initrd>{d}/initrd</initrd>")
    tpm_state = swtpm / g.uuid
    make_tree(tpm_state, 20, rng, originals)
    everything: list[Path | str] = [d, loopdev]
    before = snapshot(*everything)

    svirtd(swtpm_dir=str(swtpm))
    guests.define(g)
    report = wait_until(lambda: labeled(bus, g.uuid), what="all resources labeled")
    assert isinstance(report, dict)
    level = report["level"]
    private = IMAGE + level
    expect = {
        f"{d}/top.img": private, loopdev: private, f"{d}/vars.fd": private, f"{d}/serial.log": private,
        f"{d}/agent.sock": private,
        f"{d}/shared.img": SHARED,
        f"{d}/ro.img": CONTENT, f"{d}/install.iso": CONTENT, f"{d}/base.img": CONTENT,
        f"{d}/vmlinuz": CONTENT, f"{d}/initrd": CONTENT,
    }
    for path, label in expect.items():
        assert xattr(path) == label, path
    trees = {f"{d}/share": private, f"{d}/share-ro": CONTENT, str(tpm_state): private}
    for root, label in trees.items():
        labels = {p: v for p, v in snapshot(root).items() if not os.path.islink(p)}
        assert set(labels.values()) == {label}, root
    assert xattr(f"{d}/code.fd") == before[f"{d}/code.fd"]  # firmware code: never touched
    assert xattr("/etc/passwd") != private  # the symlink inside the tree was not followed
    by_path = {r["path"]: r for r in report["resources"]}
    assert by_path[f"{d}/share"]["kind"] == "tree" and by_path[f"{d}/share"]["status"] == "labeled"
    hostdev = [r for r in report["resources"] if r["device"] == "hostdev pci"]
    # A host device node: libvirt's SELinux driver labels it (none here), svirtd never does.
    assert hostdev and hostdev[0]["status"] == "not-relabeled" and hostdev[0]["applier"] == "nobody"
    assert "device node" in hostdev[0]["note"] and "no SELinux driver" in hostdev[0]["note"]
    loader = [r for r in report["resources"] if r["device"] == "loader"]
    assert loader and loader[0]["status"] == "not-relabeled"

    run(call(bus, "Release", "s", g.uuid))
    after = snapshot(*everything)
    changed = {p: (before.get(p), after.get(p)) for p in after if before.get(p) != after.get(p)}
    assert not changed, f"not restored exactly: {changed}"
    sock.close()


def test_shared_image_and_iso_between_two_guests(bus: PrivateBus, guests: GuestFactory,
                                                 svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    shared, iso = make_disk(d / "shared.img"), make_disk(d / "tools.iso")
    setlabel(shared, "system_u:object_r:virt_image_t:s0")
    svirtd()

    def guest() -> Any:
        own = make_disk(d / f"own-{len(guests.guests)}.img")
        return guests.new(disk_specs=[Disk(own, "vda"), Disk(shared, "vdb", shareable=True),
                                      Disk(iso, "sdb", device="cdrom")])

    a, b = guest(), guest()
    for g in (a, b):
        wait_until(functools.partial(labeled, bus, g.uuid), what=f"{g.name} labeled")
    assert xattr(shared) == SHARED and xattr(iso) == CONTENT
    # Both start, in either order, against the same shared files.
    for first, second in ((a, b), (b, a)):
        guests.virsh("start", first.name)
        guests.virsh("start", second.name)
        guests.virsh("destroy", first.name)
        guests.virsh("destroy", second.name)
    run(call(bus, "Release", "s", a.uuid))
    assert xattr(a.disk) is None  # a's private disk restored
    assert xattr(shared) == SHARED and xattr(iso) == CONTENT  # b still uses them: untouched
    guests.virsh("start", b.name)
    guests.virsh("destroy", b.name)
    run(call(bus, "Release", "s", b.uuid))
    # The last user gone: the originals come back.
    assert xattr(shared) == "system_u:object_r:virt_image_t:s0" and xattr(iso) is None


@pytest.mark.parametrize("restore_shared", [True, False])
def test_shared_files_and_trees_after_the_last_user(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                    restore_shared: bool) -> None:
    """Two guests share an image, an ISO and a read-only tree. The tree's originals come from the first
    guest's walk (the second finds them labeled already), yet the last one out restores them; with
    restore_shared = false (shared storage across hosts) everything shared stays as it is."""
    d = guests.image_dir
    shared, iso = make_disk(d / "shared.img"), make_disk(d / "tools.iso")
    (d / "ro-tree" / "sub").mkdir(parents=True)
    (d / "ro-tree" / "sub" / "f").write_bytes(b"x")
    setlabel(shared, "system_u:object_r:virt_image_t:s0")
    proc = svirtd(restore_shared=restore_shared)
    gs = [guests.new(disk_specs=[Disk(shared, "vdb", shareable=True), Disk(iso, "sdb", device="cdrom")],
                     extra_devices=f"<filesystem type='mount'><source dir='{d}/ro-tree'/><target dir='ro'/><readonly/>"
                                   "</filesystem>") for _ in range(2)]
    for g in gs:
        wait_until(functools.partial(labeled, bus, g.uuid), what=f"{g.name} labeled")
    assert xattr(d / "ro-tree" / "sub" / "f") == CONTENT
    run(call(bus, "Release", "s", gs[0].uuid))
    assert xattr(shared) == SHARED and xattr(iso) == CONTENT  # the other one still uses them
    run(call(bus, "Release", "s", gs[1].uuid))
    if restore_shared:
        assert xattr(shared) == "system_u:object_r:virt_image_t:s0" and xattr(iso) is None
        assert xattr(d / "ro-tree" / "sub" / "f") is None
    else:
        assert xattr(shared) == SHARED and xattr(iso) == CONTENT
        assert xattr(d / "ro-tree" / "sub" / "f") == CONTENT
    assert not list((proc.state_dir / "trees").iterdir())  # no journal outlives the last user


def test_hostile_definitions_are_refused_and_nothing_changes(bus: PrivateBus, guests: GuestFactory,
                                                            svirtd: StartSvirtd, loopdev: str, tmp_path: Path,
                                                            mounts: Mounts) -> None:
    d = guests.image_dir
    # A block device the host has mounted, made here: the case runs whatever / is on.
    host_mounted = mounts.mounted_block_device(tmp_path / "hostfs.img", tmp_path / "hostfs")
    svirtd(default_confined=False)
    victim = guests.new()
    run(call(bus, "Isolate", "ss", victim.uuid, ""))
    (d / "shadow.img").symlink_to("/etc/shadow")
    (d / "sub").mkdir()
    cases: list[tuple[str, list[Disk], str, str]] = [
        ("symlink to /etc/shadow", [Disk(d / "shadow.img", "vda")], "", "UnsafePath"),
        ("dot-dot", [Disk(Path(f"{d}/sub/../../../../etc/passwd"), "vda")], "", "UnsafePath"),
        ("device node as a file disk", [Disk(Path(loopdev), "vda")], "", "UnsafePath"),
        ("char device as a block disk", [Disk(Path("/dev/null"), "vda", dtype="block")], "", "UnsafePath"),
        ("another guest's private disk", [Disk(victim.disk, "vda")], "", "ResourceConflict"),
        ("the home tree", [], "<filesystem type='mount'><source dir='/home'/><target dir='h'/></filesystem>",
         "UnsafePath"),
        ("the root tree", [], "<filesystem type='mount'><source dir='/'/><target dir='r'/></filesystem>", "UnsafePath"),
        ("a tree holding another guest's disk", [],
         f"<filesystem type='mount'><source dir='{d}'/><target dir='t'/></filesystem>", "ResourceConflict"),
        ("a block device the host has mounted", [Disk(Path(host_mounted), "vda", dtype="block")], "", "UnsafePath"),
    ]
    watched: list[Path | str] = ["/etc", d, loopdev, "/dev/null", host_mounted]
    before = snapshot(*watched)
    for what, disks, extra, error in cases:
        g = guests.new(disk_specs=disks, extra_devices=extra)
        with pytest.raises(CallFailed) as exc:
            run(call(bus, "Isolate", "ss", g.uuid, ""))
        assert exc.value.name == f"org.svirt.Manager1.Error.{error}", (what, exc.value)
        assert len(exc.value.text) > 30, what
        if what.startswith("a block device the host has mounted"):
            assert "the host uses it" in exc.value.text, exc.value.text
        if error == "ResourceConflict":
            assert victim.name in exc.value.text
    after = snapshot(*watched)
    assert {p: after.get(p) for p in before} == before  # not one existing label changed
    new = {p: v for p, v in after.items() if p not in before}  # e.g. libvirt's own /etc/libvirt/qemu/*.xml
    assert not [p for p, v in new.items() if v and "svirt" in v]
    rows = run(call(bus, "List"))
    assert [r[0] for r in rows] == [victim.uuid]


def test_a_tree_holding_a_disk_another_guest_reaches_through_a_symlink_is_refused(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """The disk's owner named it through a symlinked directory: the tree is judged against where it
    really lives (recorded when it was claimed), not against the name in the owner's XML."""
    d = guests.image_dir
    pool = d / "pool"
    pool.mkdir(parents=True)
    disk = make_disk(pool / "x.img")
    (d / "via").symlink_to(pool)
    svirtd(default_confined=False)
    owner = guests.new(disk_specs=[Disk(d / "via" / "x.img", "vda")])
    run(call(bus, "Isolate", "ss", owner.uuid, ""))
    before = snapshot(d)
    taker = guests.new(disk_specs=[], extra_devices=f"<filesystem type='mount'><source dir='{pool}'/>"
                                                    "<target dir='pool'/></filesystem>")
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", taker.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.ResourceConflict"
    assert owner.name in exc.value.text and "contains" in exc.value.text
    assert snapshot(d) == before and (xattr(disk) or "").startswith(IMAGE)


def test_a_file_shared_by_one_guest_and_read_only_for_another_is_refused(bus: PrivateBus, guests: GuestFactory,
                                                                          svirtd: StartSvirtd) -> None:
    """Shared wants svirt_image_t:s0, read-only virt_content_t:s0: one label would cut the other guest off."""
    shared = make_disk(guests.image_dir / "both.img")
    svirtd(default_confined=False)
    writer = guests.new(disk_specs=[Disk(shared, "vdb", shareable=True)])
    run(call(bus, "Isolate", "ss", writer.uuid, ""))
    reader = guests.new(disk_specs=[Disk(shared, "vdb", readonly=True)])
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", reader.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.ResourceConflict"
    assert writer.name in exc.value.text and "[shared]" in exc.value.text
    assert xattr(shared) == SHARED


def test_a_disk_inside_another_guests_tree_is_refused(bus: PrivateBus, guests: GuestFactory,
                                                      svirtd: StartSvirtd) -> None:
    """The reverse of "a tree holding another guest's disk": the tree came first. The disk is
    reached through a symlinked parent, so only the resolved path gives the overlap away."""
    d = guests.image_dir
    svirtd(default_confined=False)
    tree = d / "owner-share"
    tree.mkdir(parents=True)
    inner = make_disk(tree / "inner.img")
    (d / "alias").symlink_to(tree)
    owner = guests.new(extra_devices=f"<filesystem type='mount' accessmode='passthrough'><source dir='{tree}'/>"
                                     "<target dir='share'/></filesystem>")
    run(call(bus, "Isolate", "ss", owner.uuid, ""))
    before = snapshot(d)
    assert before[str(inner)] is not None and before[str(inner)] == before[str(tree)]  # the owner's label
    intruder = guests.new(disk_specs=[Disk(d / "alias" / "inner.img", "vda")])
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", intruder.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.ResourceConflict"
    assert owner.name in exc.value.text and str(tree) in exc.value.text and "move it out" in exc.value.text
    assert snapshot(d) == before
    assert [r[0] for r in run(call(bus, "List"))] == [owner.uuid]


def test_unlabelable_storage_is_reported_with_the_boolean(bus: PrivateBus, guests: GuestFactory,
                                                        svirtd: StartSvirtd, tmp_path: Path, mounts: Mounts) -> None:
    d = guests.image_dir
    fuse = d / "fuse"
    ram = d / "ram"
    mounts.bindfs(tmp_path / "fuse-src", fuse, "--xattr-none")
    mounts.fs("ramfs", ram)
    g = guests.new(disk_specs=[Disk(make_disk(d / "ok.img"), "vda"), Disk(make_disk(fuse / "nfs-like.img"), "vdb"),
                               Disk(make_disk(ram / "ram.img"), "vdc")])
    svirtd()
    report = wait_until(lambda: labeled(bus, g.uuid), what="isolated")
    assert isinstance(report, dict)
    by_path = {r["path"]: r for r in report["resources"]}
    fuse_res, ram_res = by_path[str(fuse / "nfs-like.img")], by_path[str(ram / "ram.img")]
    assert fuse_res["status"] == "unlabelable" and "isolation lost" in fuse_res["note"]
    assert "setsebool -P virt_use_fusefs 1" in fuse_res["note"]  # named by the policy itself
    assert ram_res["status"] == "unlabelable" and "no SELinux boolean" in ram_res["note"]
    assert by_path[str(d / "ok.img")]["status"] == "labeled"


def fuse_waiters(pid: int) -> int:
    """Threads of pid waiting for a FUSE daemon's answer (kernel wait channel request_wait_answer)."""
    count = 0
    for wchan in Path(f"/proc/{pid}/task").glob("*/wchan"):
        with contextlib.suppress(OSError):
            count += wchan.read_text().strip() == "request_wait_answer"
    return count


def test_guests_whose_storage_hangs_do_not_hold_up_the_others(bus: PrivateBus, guests: GuestFactory,
                                                              svirtd: StartSvirtd, tmp_path: Path,
                                                              mounts: Mounts) -> None:
    """A dead NFS server, played by a stopped FUSE daemon: every lookup on it waits. With more guests on
    it than svirtd has I/O threads, svirtd must go on confining the others (libvirt's hook waits on
    svirtd before each start), answer each stuck guest's request within a bounded time, keep no thread
    waiting on the storage, refuse a start through the hook (require_confined), and confine the stuck
    guests once the storage answers again."""
    d = guests.image_dir
    src, hung = tmp_path / "hang-src", d / "hang"
    daemon = mounts.bindfs(src, hung, "--xattr-none")
    stuck_count = IO_THREADS + 16
    for i in range(stuck_count):
        make_disk(src / f"{i}.img")
    proc = svirtd(io_timeout_seconds=2, require_confined=True)
    assert proc.proc is not None
    pid = proc.proc.pid
    # Isolated while the storage answers (its files are unlabelable: no xattrs on this FUSE mount).
    hung_guests = [guests.new(disk_specs=[Disk(hung / f"{i}.img", "vda")]) for i in range(stuck_count)]
    wait_until(lambda: all(labeled(bus, g.uuid) for g in hung_guests), what="every guest isolated")
    b, c = guests.new(define=False), guests.new(define=False)
    os.kill(daemon.pid, signal.SIGSTOP)
    stuck: list[subprocess.Popen[bytes]] = []
    try:
        t0 = time.monotonic()
        stuck = [subprocess.Popen(["busctl", f"--address={bus.address}", "--timeout=120", "call",
                                   "org.svirt.Manager", "/org/svirt/Manager", "org.svirt.Manager1", "Isolate", "ss",
                                   g.uuid, ""], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for g in hung_guests]
        for g in (b, c):  # meanwhile, guests elsewhere are defined, isolated and released
            guests.define(g)
            run(asyncio.wait_for(call(bus, "Isolate", "ss", g.uuid, ""), 60))
            assert (xattr(g.disk) or "").startswith(IMAGE)
        run(asyncio.wait_for(call(bus, "Release", "s", b.uuid), 60))
        assert xattr(b.disk) is None
        for p in stuck:  # each stuck request is answered: its storage does not respond
            assert p.wait(60) != 0
            err = p.stderr.read().decode() if p.stderr else ""
            assert "not answered" in err and str(hung) in err, err
        print(f"{stuck_count} requests on hung storage answered within {time.monotonic() - t0:.1f}s")
        # No request made after the server stopped left a thread in the storage. Work already in flight
        # when it stopped (a converge after svirtd wrote a guest's identity into its definition) may stay
        # in the kernel, uninterruptibly: the gate bounds that per mount.
        assert fuse_waiters(pid) <= THREADS_PER_MOUNT, "more svirtd threads wait on the hung storage than its cap"
        # Through the hook: the start of a stuck guest is refused, not left hanging.
        started = guests.virsh("start", hung_guests[0].name, check=False)
        assert started.returncode != 0 and "not answered" in started.stderr, started.stderr
        report = run(call(bus, "Query", "s", hung_guests[1].uuid))  # Query answers, and says why
        assert report["resources"][0]["status"] == "not-responding"
        os.kill(daemon.pid, signal.SIGCONT)
        # Asked again after the retry interval: confined like any other once its storage answers.
        wait_until(lambda: run(call(bus, "Isolate", "ss", hung_guests[0].uuid, "")), timeout=60,
                   what="the stuck guest isolated once its storage answers")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        for p in stuck:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_guests_that_share_nothing_relabel_in_parallel(bus: PrivateBus, guests: GuestFactory,
                                                        svirtd: StartSvirtd) -> None:
    """A's tree walk is frozen mid-way (SIGSTOP on its helper) while it holds A's resource locks:
    B, which shares nothing with A, is isolated and released meanwhile; C, which shares A's disk,
    waits for A."""
    d = guests.image_dir
    make_tree(d / "big", 30_000, random.Random(3), [None])
    shared = make_disk(d / "shared.img")
    svirtd(default_confined=False)
    a = guests.new(disk_specs=[Disk(shared, "vdb", shareable=True)],
                   extra_devices=f"<filesystem type='mount'><source dir='{d}/big'/><target dir='big'/></filesystem>")
    b = guests.new()
    c = guests.new(disk_specs=[Disk(shared, "vdb", shareable=True)])
    walking = subprocess.Popen(["busctl", f"--address={bus.address}", "--timeout=120", "call", "org.svirt.Manager",
                                "/org/svirt/Manager", "org.svirt.Manager1", "Isolate", "ss", a.uuid, ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    frozen: list[int] = []
    waiting: subprocess.Popen[bytes] | None = None
    try:
        found = wait_until(lambda: treewalk_pids(d / "big"), interval=0.002, what="A's tree helper")
        assert isinstance(found, list)
        frozen = found
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        assert frozen and walking.poll() is None, "A's walk ended before it could be frozen: the test proves nothing"
        waiting = subprocess.Popen(["busctl", f"--address={bus.address}", "--timeout=120", "call", "org.svirt.Manager",
                                    "/org/svirt/Manager", "org.svirt.Manager1", "Isolate", "ss", c.uuid, ""],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # C's transaction has begun: its pair is committed, and in the same step (no await between)
        # svirtd goes on to lock C's paths, the shared disk among them.
        wait_until(lambda: c.uuid in [row[0] for row in run(call(bus, "List"))], what="C's pair committed")
        # B, sharing nothing with A, is isolated and released meanwhile (generous bounds: with one
        # global lock B would wait for A's frozen walk forever).
        run(asyncio.wait_for(call(bus, "Isolate", "ss", b.uuid, ""), 60))
        assert (xattr(b.disk) or "").startswith(IMAGE)
        run(asyncio.wait_for(call(bus, "Release", "s", b.uuid), 60))
        assert xattr(b.disk) is None
        # B's whole isolation and release went through after C asked for its locks: C is still
        # waiting for the shared disk A's transaction holds.
        assert waiting.poll() is None, "C relabeled A's shared disk while A's transaction held it"
        assert walking.poll() is None
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert walking.wait(60) == 0, walking.stderr.read() if walking.stderr else ""
    assert waiting is not None and waiting.wait(60) == 0, waiting.stderr.read() if waiting.stderr else ""
    assert xattr(shared) == SHARED


def test_refuse_unlabelable_refuses_the_guest(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                              tmp_path: Path, mounts: Mounts) -> None:
    d = guests.image_dir
    fuse = d / "fuse"
    mounts.bindfs(tmp_path / "fuse-src", fuse, "--xattr-none")
    ok = make_disk(d / "ok.img")
    g = guests.new(disk_specs=[Disk(ok, "vda"), Disk(make_disk(fuse / "x.img"), "vdb")])
    svirtd(refuse_unlabelable=True, default_confined=False)
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.Unlabelable"
    assert "virt_use_fusefs" in exc.value.text and "refuse_unlabelable" in exc.value.text
    assert xattr(ok) is None and run(call(bus, "List")) == []


def treewalk(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "svirtd.treewalk", *args], capture_output=True, text=True)
    result = json.loads(out.stdout)
    assert isinstance(result, dict)
    return result


def test_tree_walk_never_follows_symlinks_crosses_mounts_or_touches_hard_links(tmp_path: Path, as_root: None,
                                                                               mounts: Mounts) -> None:
    root = tmp_path / "share"
    (root / "a").mkdir(parents=True)
    (root / "a" / "weird\nname").write_text("x")
    (root / "to-etc").symlink_to("/etc")
    outside = tmp_path / "outside.img"
    outside.write_text("secret")
    os.link(outside, root / "a" / "hardlink")
    mounts.fs("tmpfs", root / "mnt")
    (root / "mnt" / "other-fs").write_text("x")
    before = snapshot("/etc", outside, root / "mnt")
    target = IMAGE + "s0:c1,c2"
    result = treewalk("label", "--root", str(root), "--target", target, "--journal", str(tmp_path / "j" / "t"))
    assert (result["symlinks"], result["mounts"], result["hardlinks"], result["errors"]) == (1, 1, 1, 0)
    assert xattr(root / "a" / "weird\nname") == target and xattr(root) == target
    assert snapshot("/etc", outside, root / "mnt") == before
    result = treewalk("restore", "--root", str(root), "--target", target, "--journal", str(tmp_path / "j" / "t"))
    assert xattr(root / "a" / "weird\nname") is None and xattr(root) is None
    # The root swapped for another directory after svirtd checked it: refused.
    bad = treewalk("label", "--root", str(root), "--target", target, "--inode", "1:1",
                   "--journal", str(tmp_path / "j" / "u"))
    assert "no longer the directory" in bad["fatal"]


def test_tree_walk_never_crosses_a_bind_mount_of_its_own_filesystem(tmp_path: Path, as_root: None,
                                                                   mounts: Mounts) -> None:
    """A file and a directory bind-mounted into the tree from elsewhere on the same filesystem (same
    st_dev: only the dirent's inode number tells the mount point) are counted as mount points and keep
    their labels, as does what the directory holds; check agrees."""
    root, elsewhere = tmp_path / "share", tmp_path / "elsewhere"
    (root / "dir").mkdir(parents=True)
    (root / "file").write_text("x")
    (root / "own").write_text("x")
    (elsewhere / "dir").mkdir(parents=True)
    (elsewhere / "dir" / "inner").write_text("secret")
    (elsewhere / "file").write_text("secret")
    mounts.bind(elsewhere / "file", root / "file")
    mounts.bind(elsewhere / "dir", root / "dir")
    before = snapshot(elsewhere)
    target = IMAGE + "s0:c3,c4"
    result = treewalk("label", "--root", str(root), "--target", target, "--journal", str(tmp_path / "j" / "t"))
    assert (result["mounts"], result["changed"], result["errors"]) == (2, 2, 0), result  # root and own
    assert xattr(root / "own") == target and snapshot(elsewhere) == before
    check = treewalk("check", "--root", str(root), "--target", target)
    assert (check["entries"], check["off_target"]) == (1, 0), check


def worker_journaled(trees: Path, root: Path) -> str:
    """pids of the tree helpers labeling root ('' until a worker has journaled a batch of originals)."""
    if not any(j.stat().st_size for j in trees.glob("*.*.*") if not j.name.endswith(".root")):
        return ""
    return " ".join(str(pid) for pid in treewalk_pids(root)) or "gone"


def treewalk_pids(root: Path) -> list[int]:
    """The tree helpers (and their forked workers) labeling root: this run's only, never another's."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"svirtd.treewalk" in args and b"label" in args and os.fsencode(root) in args:
                pids.append(int(cmdline.parent.name))
    return pids


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def test_sigkill_during_a_10000_file_tree_relabel(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    rng = random.Random(11)
    originals = [None, "system_u:object_r:virt_image_t:s0", "system_u:object_r:user_tmp_t:s0"]
    make_tree(d / "share", 10_000, rng, originals)
    before = snapshot(d / "share")
    extra = f"<filesystem type='mount'><source dir='{d}/share'/><target dir='share'/></filesystem>"
    g = guests.new(define=False, extra_devices=extra)
    midway = 0
    for attempt in range(8):
        proc = svirtd(default_confined=False)
        if attempt == 0:
            guests.define(g)
        # Isolate in the background; SIGKILL svirtd as soon as its tree helper has journaled a first batch
        # of originals (it labels that batch right after): the crash lands in the middle of the walk.
        caller = subprocess.Popen(["busctl", f"--address={bus.address}", "call", "org.svirt.Manager",
                                   "/org/svirt/Manager", "org.svirt.Manager1", "Isolate", "ss", g.uuid, ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journaled = wait_until(functools.partial(worker_journaled, proc.state_dir / "trees", d / "share"),
                               timeout=60, interval=0,
                               what="the tree helper's first journaled batch")
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.kill()
        caller.wait(10)
        for pid in str(journaled).split():
            if pid.isdigit():
                wait_until(functools.partial(lambda p: not alive(p), int(pid)), what="the helper to die with svirtd")
        labels = snapshot(d / "share")
        done = sum(1 for p, v in labels.items() if v is not None and v.startswith(IMAGE) and not os.path.islink(p))
        if done < 10_000:
            midway += 1
        # Restart: the interrupted relabel is finished (rolled forward).
        restarted = svirtd(default_confined=False)
        report = wait_until(lambda: labeled(bus, g.uuid), what="relabel finished after restart")
        assert isinstance(report, dict)
        result = treewalk("check", "--root", str(d / "share"), "--target", IMAGE + report["level"])
        assert result["off_target"] == 0, result
        run(call(bus, "Release", "s", g.uuid))
        assert snapshot(d / "share") == before, "not fully restored"
        restarted.stop()
    print(f"kills landing mid-relabel: {midway} of 8")
    assert midway >= 1, "no kill landed in the middle of a relabel: the test proved nothing"


def test_a_file_libvirts_own_driver_manages_is_not_fought_over(bus: PrivateBus, guests: GuestFactory,
                                                                svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g = guests.new()
    os.setxattr(g.disk, "trusted.libvirt.security.selinux", b"system_u:object_r:virt_image_t:s0")
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.ResourceConflict"
    assert "libvirt's own SELinux driver" in exc.value.text and str(g.disk) in exc.value.text
    assert xattr(g.disk) is None and run(call(bus, "List")) == []


def test_svirtd_knows_when_libvirts_remembered_labels_are_invisible_to_it(as_root: None, tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN a trusted.* xattr reads as absent: svirtd must know it cannot see them."""
    f = tmp_path / "img"
    f.write_bytes(b"x")
    os.setxattr(f, "trusted.libvirt.security.selinux", b"system_u:object_r:virt_image_t:s0")
    probe = ("import sys; from svirtd import labels; from svirtd.models import ResourceKind; "
             "o = labels.open_resource(sys.argv[1], ResourceKind.FILE); "
             "print(labels.can_read_trusted_xattrs(), labels.libvirt_remembers(o))")
    full = subprocess.run([sys.executable, "-c", probe, str(f)], capture_output=True, text=True, check=True)
    assert full.stdout.split() == ["True", "True"]
    dropped = subprocess.run(["setpriv", "--bounding-set=-sys_admin", sys.executable, "-c", probe, str(f)],
                             capture_output=True, text=True, check=True)
    assert dropped.stdout.split() == ["False", "False"]  # blind, and it knows it
