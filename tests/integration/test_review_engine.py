"""Review of issue 13: the relabeling engine's findings, each against the real parts.

Real loop devices (swap, btrfs), real files and xattrs, the real tree helper and svirtd as a real
process on the private bus and libvirtd. Every device, mount and swap area made here is undone in a
fixture, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from svirtd import labels, relabel
from svirtd.errors import RelabelFailed, UnsafePath
from svirtd.models import Level, Resource, ResourceClass, ResourceKind
from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.mounts import Mounts, mounted
from tests.helpers import call, run, tree_labels, xattr
from tests.integration.test_relabel import setlabel

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]

IMAGE = "system_u:object_r:svirt_image_t:"
CONTENT = "system_u:object_r:virt_content_t:s0"
TARGET = IMAGE + "s0:c11,c12"
DEVICE_LABEL = "system_u:object_r:fixed_disk_device_t:s0"




def treewalk(*args: str, **popen: Any) -> dict[str, Any]:
    """Run the tree helper as svirtd does; its summary."""
    out = subprocess.run([sys.executable, "-m", "svirtd.treewalk", *args], capture_output=True, text=True, **popen)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict), out
    return result


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """chattr +i: even root's setxattr fails (EPERM) on them until the block ends."""
    subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def probed(*resources: tuple[Path, ResourceKind, ResourceClass]) -> relabel.ProbeResult:
    """svirtd's own probe of these resources for a guest at s0:c11,c12 (close() it)."""
    items = tuple(relabel.PlannedResource(Resource(path=str(path), device=f"test {kind.value}", kind=kind,
                                                   rclass=rclass), TARGET) for path, kind, rclass in resources)
    plan = relabel.RelabelPlan(uuid="review", level=Level(low=11, high=12), items=items, unhandled=())
    return relabel.probe(plan)


def make_specials(where: Path) -> list[Path]:
    """A block and a character device node, a FIFO and a socket, each carrying a label of its own."""
    nodes = [where / "sda", where / "mem", where / "fifo", where / "sock"]
    os.mknod(nodes[0], 0o600 | stat.S_IFBLK, os.makedev(8, 0))
    os.mknod(nodes[1], 0o600 | stat.S_IFCHR, os.makedev(1, 1))
    os.mkfifo(nodes[2])
    os.mknod(nodes[3], 0o600 | stat.S_IFSOCK)
    for node in nodes:
        setlabel(node, DEVICE_LABEL)
    return nodes


# -- finding 11: block devices the host uses --------------------------------------------------------


@pytest.fixture
def swap_device(tmp_path: Path, mounts: Mounts) -> Iterator[str]:
    """A loop device the host uses as swap (swapoff'ed before `mounts` detaches it)."""
    dev = mounts.loop_device(tmp_path / "swap.img", 4 * 1024 * 1024)
    subprocess.run(["mkswap", dev], capture_output=True, check=True)
    subprocess.run(["swapon", dev], capture_output=True, check=True)
    try:
        yield dev
    finally:
        subprocess.run(["swapoff", dev], capture_output=True)
    assert dev not in Path("/proc/swaps").read_text(), f"{dev} is still in use as swap"


@pytest.fixture
def btrfs_device(tmp_path: Path, mounts: Mounts) -> Iterator[str]:
    """A loop device holding a mounted btrfs (its mountinfo line names an anonymous 0:NN device)."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.fail("mkfs.btrfs is missing: scripts/install-deps.sh installs btrfs-progs")
    dev = mounts.loop_device(tmp_path / "btrfs.img", 128 * 1024 * 1024)
    subprocess.run(["mkfs.btrfs", "-q", dev], capture_output=True, check=True)
    target = tmp_path / "btrfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "btrfs", dev, str(target)], capture_output=True, check=True)
    try:
        yield dev
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert not mounted(target), f"{target} is still mounted"


def test_a_block_device_the_host_uses_as_swap_is_refused(swap_device: str) -> None:
    with pytest.raises(UnsafePath, match="the host uses it"):
        labels.open_resource(swap_device, ResourceKind.BLOCK)


def test_a_block_device_holding_a_mounted_btrfs_is_refused(btrfs_device: str) -> None:
    with pytest.raises(UnsafePath, match="the host uses it"):
        labels.open_resource(btrfs_device, ResourceKind.BLOCK)


def test_a_block_device_nobody_uses_is_accepted(tmp_path: Path, mounts: Mounts) -> None:
    dev = mounts.loop_device(tmp_path / "free.img")
    with labels.open_resource(dev, ResourceKind.BLOCK) as opened:
        assert opened.path == dev



def test_each_check_sees_the_host_use_on_its_own(swap_device: str, btrfs_device: str) -> None:
    """Defense in depth: the exclusive-open probe answers first, so the other checks are asked directly."""
    for dev, check in ((swap_device, labels._swap_use), (btrfs_device, labels._mount_use)):
        devices = labels.block_devices(os.stat(dev))
        assert check(devices), (dev, check.__name__)
        fd = os.open(dev, os.O_PATH | os.O_CLOEXEC)
        try:
            assert "the kernel holds it" in labels._claimed(fd)
        finally:
            os.close(fd)


# -- finding 8: symlinked parents an unprivileged user controls -------------------------------------

NOBODY = 65534


def test_a_directory_link_a_user_owns_does_not_redirect_a_relabel(tmp_path: Path) -> None:
    """A user who owns a directory on A's disk path points it at B's directory: refused, naming the link
    and its owner, and B's disk is never reached."""
    base = tmp_path / "images"
    (base / "b").mkdir(parents=True)
    b_disk = base / "b" / "disk.img"
    b_disk.write_bytes(b"B")
    user_dir = base / "u"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)
    link = user_dir / "sub"
    link.symlink_to(base / "b")
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(UnsafePath) as exc:
        labels.open_resource(str(link / "disk.img"), ResourceKind.FILE)
    assert str(link) in str(exc.value) and f"uid {NOBODY}" in str(exc.value)


def test_a_root_owned_link_in_a_directory_others_can_write_is_not_followed(tmp_path: Path) -> None:
    """The link is root's, but whoever can write its directory can swap it for their own at any time."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "disk.img").write_bytes(b"x")
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    (drop / "images").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath, match="writable by others"):
        labels.open_resource(str(drop / "images" / "disk.img"), ResourceKind.FILE)


def test_an_admins_link_in_a_root_only_directory_is_followed(tmp_path: Path) -> None:
    """/var/lib/libvirt/images -> /srv/images keeps working: root's link, in a directory only root writes."""
    (tmp_path / "srv" / "images").mkdir(parents=True)
    disk = tmp_path / "srv" / "images" / "disk.img"
    disk.write_bytes(b"x")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "images").symlink_to("../srv/images")  # relative, with '..'
    with labels.open_resource(str(tmp_path / "lib" / "images" / "disk.img"), ResourceKind.FILE) as opened:
        assert opened.path == str(disk) and opened.st.st_ino == disk.stat().st_ino


def test_a_guest_cannot_be_handed_another_guests_disk_through_a_users_link(bus: PrivateBus, guests: GuestFactory,
                                                                          svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    b_disk = make_disk(d / "b" / "b.img")
    user_dir = d / "u"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, NOBODY)
    (user_dir / "sub").symlink_to(d / "b")
    os.chown(user_dir / "sub", NOBODY, NOBODY, follow_symlinks=False)
    svirtd(default_confined=False)
    a = guests.new(disk_specs=[Disk(user_dir / "sub" / "b.img", "vda")])
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", a.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.UnsafePath", exc.value
    assert str(user_dir / "sub") in exc.value.text
    assert xattr(b_disk) is None and run(call(bus, "List")) == []


# -- finding 2: device nodes, FIFOs and sockets inside trees ----------------------------------------


def test_device_nodes_fifos_and_sockets_in_a_tree_are_never_labeled(tmp_path: Path, as_root: None) -> None:
    root = tmp_path / "share"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file").write_bytes(b"x")
    nodes = make_specials(root / "sub")
    journal = str(tmp_path / "journals" / "t")
    result = treewalk("label", "--root", str(root), "--target", TARGET, "--journal", journal)
    assert {str(n): xattr(n) for n in nodes} == {str(n): DEVICE_LABEL for n in nodes}
    assert (result["specials"], result["errors"]) == (4, 0), result
    assert xattr(root / "sub" / "file") == TARGET
    check = treewalk("check", "--root", str(root), "--target", TARGET)
    assert (check["entries"], check["off_target"]) == (2, 0), check  # sub and file; the root is not counted
    treewalk("restore", "--root", str(root), "--target", TARGET, "--journal", journal)
    assert xattr(root / "sub" / "file") is None
    assert {str(n): xattr(n) for n in nodes} == {str(n): DEVICE_LABEL for n in nodes}


def test_svirtd_says_how_many_special_files_a_share_holds(bus: PrivateBus, guests: GuestFactory,
                                                           svirtd: StartSvirtd) -> None:
    share = guests.image_dir / "share"
    share.mkdir(parents=True)
    nodes = make_specials(share)
    proc = svirtd(default_confined=False)
    g = guests.new(extra_devices=f"<filesystem type='mount'><source dir='{share}'/><target dir='s'/></filesystem>")
    run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert (xattr(share) or "").startswith(IMAGE)
    assert all(xattr(n) == DEVICE_LABEL for n in nodes)
    assert "4 device nodes, FIFOs or sockets" in proc.log_text()


# -- finding 4: a journal that cannot be written fully ----------------------------------------------

ORIGINAL = "system_u:object_r:user_tmp_t:s0"


def test_a_journal_cut_short_stops_the_relabel_before_an_unjournaled_change(tmp_path: Path, as_root: None) -> None:
    """A full disk, played by RLIMIT_FSIZE on the helper: each journal holds ~500 of 3,000 records.
    Nothing may be labeled whose original is not durably journaled, and a torn last record must not
    turn into a label."""
    import resource

    root = tmp_path / "share"
    for i in range(3000):
        f = root / f"d{i % 10}" / f"f{i:04d}"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
        setlabel(f, ORIGINAL)
    before = tree_labels(root)
    journal = str(tmp_path / "journals" / "t")
    limit = 500 * len(f"d0/f0000\0{ORIGINAL}\0")

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = treewalk("label", "--root", str(root), "--target", TARGET, "--journal", journal,
                      preexec_fn=small_disk)
    labeled = sum(1 for v in tree_labels(root).values() if v == TARGET)
    restored = treewalk("restore", "--root", str(root), "--target", TARGET, "--journal", journal)
    after = tree_labels(root)
    wrong = {p: after[p] for p in before if before[p] != after[p]}
    assert not wrong, f"{len(wrong)} entries not restored, e.g. {sorted(wrong.items())[:3]}"
    assert restored["errors"] == 0, restored
    assert result.get("fatal") or result["errors"], result  # it said it could not do its job
    assert 0 < labeled < 3000, labeled  # it stopped part-way: the test proves something


# The helper on a disk that fills up and frees again: in a forked worker, the first journal write is
# cut short (half its bytes), the next fails with ENOSPC, and every later one succeeds.
FILLING_DISK_HELPER = """
import errno, os, sys
from svirtd import treewalk
parent, real_write, calls = os.getpid(), os.write, []
def write(fd, data):
    if os.getpid() == parent:
        return real_write(fd, data)
    calls.append(len(data))
    if len(calls) == 1:
        return real_write(fd, bytes(data)[: len(data) // 2])
    if len(calls) == 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)
os.write = write
sys.exit(treewalk.main(sys.argv[1:]))
"""


def test_nothing_is_appended_to_a_journal_after_a_torn_batch(tmp_path: Path, as_root: None) -> None:
    """Space that comes back after a failed journal write must not let the run go on: the records it
    would append behind the torn one could not be read back, and their files would keep the target."""
    root = tmp_path / "media"
    for i in range(70):  # more directories than a batch holds: several journal writes per worker
        (root / f"d{i}").mkdir(parents=True)
        (root / f"d{i}" / "f").write_bytes(b"x")
        setlabel(root / f"d{i}" / "f", ORIGINAL)
    before = tree_labels(root)
    journal = str(tmp_path / "journals" / "t")
    out = subprocess.run([sys.executable, "-c", FILLING_DISK_HELPER, "label", "--root", str(root), "--target",
                          CONTENT, "--journal", journal, "--workers", "1"], capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    treewalk("restore", "--root", str(root), "--target", CONTENT, "--journal", journal)
    after = tree_labels(root)
    wrong = {p: after[p] for p in before if before[p] != after[p]}
    assert not wrong, f"{len(wrong)} entries not restored, e.g. {sorted(wrong.items())[:3]}"
    assert result["errors"] and "No space left" in result["first_error"], result


# -- finding 10: restoring a shared or read-only tree ------------------------------------------------


@pytest.mark.parametrize("mode", ["readonly", "private"])
def test_only_a_private_tree_loses_the_target_on_entries_svirtd_never_touched(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, mode: str) -> None:
    """An ISO the admin had labeled virt_content_t:s0 in a read-only share already carries the target, so
    svirtd journals nothing for it and must leave it as it is. In a private tree an entry carrying the
    guest's label without a record (created later, inheriting it) must lose it."""
    share = guests.image_dir / "media"
    share.mkdir(parents=True)
    iso, plain = share / "tools.iso", share / "notes.txt"
    iso.write_bytes(b"iso")
    plain.write_bytes(b"x")
    svirtd(default_confined=False)
    flag = "<readonly/>" if mode == "readonly" else ""
    g = guests.new(extra_devices=f"<filesystem type='mount'><source dir='{share}'/><target dir='m'/>{flag}"
                                 "</filesystem>")
    if mode == "readonly":
        setlabel(iso, CONTENT)
    run(call(bus, "Isolate", "ss", g.uuid, ""))
    target = xattr(share)
    assert target == CONTENT if mode == "readonly" else (target or "").startswith(IMAGE)
    assert target is not None and xattr(plain) == target
    later = share / "later.bin"  # created by the guest after the labeling: it inherited the target
    later.write_bytes(b"x")
    setlabel(later, target)
    run(call(bus, "Release", "s", g.uuid))
    assert xattr(plain) is None and xattr(share) is None
    if mode == "readonly":
        assert xattr(iso) == CONTENT and xattr(later) == CONTENT  # nothing svirtd did not journal is touched
    else:
        assert xattr(iso) is None and xattr(later) != target  # the guest's pair is gone (policy default)


# -- finding 15: the helper works on the very directory svirtd checked -------------------------------


def test_a_rollback_restores_the_directory_it_labeled_not_what_its_path_names_now(tmp_path: Path,
                                                                                  as_root: None) -> None:
    """A tree is labeled, the next resource fails, and between the two the tree's path is made to name
    another directory: the rollback must still restore the labeled one."""
    tree = tmp_path / "a-share"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"x")
    disk = tmp_path / "b.img"
    disk.write_bytes(b"x")
    moved = tmp_path / "a-share.moved"
    calls: list[relabel.Probed] = []

    def journal_for(item: relabel.Probed) -> Path:
        calls.append(item)
        if len(calls) == 2:  # the rollback asks again: swap the directory under its path first
            tree.rename(moved)
            tree.mkdir()
        return tmp_path / "journals" / "t"

    result = probed((tree, ResourceKind.TREE, ResourceClass.PRIVATE), (disk, ResourceKind.FILE, ResourceClass.PRIVATE))
    try:
        with immutable(disk), pytest.raises(RelabelFailed):
            relabel.apply_probed(result.present, journal_for)
    finally:
        result.close()
    assert len(calls) == 2, "the rollback did not happen: the test proves nothing"
    assert tree_labels(moved) == dict.fromkeys(tree_labels(moved))  # every label back to none


# -- finding 17: journals of a rolled-back tree relabel ----------------------------------------------

ADMIN = "system_u:object_r:public_content_t:s0"


@pytest.mark.parametrize("rclass", ["private", "readonly"])
def test_a_rolled_back_tree_relabel_leaves_no_journal_that_outvotes_a_later_change(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, rclass: str) -> None:
    """Isolate fails after the tree was labeled (the disk after it cannot be labeled) and is rolled back;
    the admin then labels a file of the tree; the next Isolate journals that label, and Release must put
    it back, not the one a stale journal of the rolled-back run remembers."""
    d = guests.image_dir
    share = d / "a-share"
    share.mkdir(parents=True)
    f = share / "file"
    f.write_bytes(b"x")
    disk = make_disk(d / "z.img")
    proc = svirtd(default_confined=False)
    flag = "<readonly/>" if rclass == "readonly" else ""
    fs = f"<filesystem type='mount'><source dir='{share}'/><target dir='s'/>{flag}</filesystem>"
    g = guests.new(disk_specs=[Disk(disk, "vda")], extra_devices=fs)
    with immutable(disk), pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert exc.value.name == "org.svirt.Manager1.Error.RelabelFailed", exc.value
    assert xattr(f) is None and xattr(share) is None  # rolled back
    setlabel(f, ADMIN)
    run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert xattr(f) != ADMIN
    run(call(bus, "Release", "s", g.uuid))
    assert xattr(f) == ADMIN and xattr(share) is None
    assert not list((proc.state_dir / "trees").iterdir())


def test_a_rolled_back_relabel_of_a_shared_tree_leaves_the_other_guests_labels(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """A read-only tree has ONE journal whoever labels it. B's relabel is rolled back while A uses the
    tree: the rollback restores what B's run changed (nothing), never the originals A's run journaled."""
    d = guests.image_dir
    share = d / "a-share"
    share.mkdir(parents=True)
    f = share / "file"
    f.write_bytes(b"x")
    fs = f"<filesystem type='mount'><source dir='{share}'/><target dir='s'/><readonly/></filesystem>"
    svirtd(default_confined=False)
    a = guests.new(extra_devices=fs)
    run(call(bus, "Isolate", "ss", a.uuid, ""))
    assert xattr(f) == CONTENT
    disk = make_disk(d / "z.img")
    b = guests.new(disk_specs=[Disk(disk, "vda")], extra_devices=fs)
    with immutable(disk), pytest.raises(CallFailed):
        run(call(bus, "Isolate", "ss", b.uuid, ""))
    assert xattr(f) == CONTENT and xattr(share) == CONTENT  # A still uses it
    run(call(bus, "Release", "s", a.uuid))
    assert xattr(f) is None and xattr(share) is None  # A's journal was kept for this


# -- finding 7: a name swapped for a hard link between scan and label --------------------------------

ETC = "system_u:object_r:etc_t:s0"
SWAPPER = """
import os, sys
outside, victims = sys.argv[1], sys.argv[2:]
while True:
    for v in victims:
        os.link(outside, v + ".ln")
        os.rename(v + ".ln", v)          # the name: a hard link to the file outside the tree
        with open(v + ".new", "wb") as fh:
            fh.write(b"x")
        os.rename(v + ".new", v)         # the name: a regular file of the tree again
"""


def test_a_name_swapped_for_a_hard_link_to_an_outside_file_is_never_labeled(tmp_path: Path, as_root: None) -> None:
    """A writer inside the tree swaps names between a file of its own and a hard link to a file outside
    the tree, while the helper labels the tree, 20 times: the outside file must never get the label."""
    outside = tmp_path / "passwd"
    outside.write_bytes(b"root:x:0:0")
    setlabel(outside, ETC)
    root = tmp_path / "share"
    for i in range(2000):
        (root / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 20}" / f"f{i}").write_bytes(b"x")
    victims = [str(root / f"d{i}" / "victim") for i in range(20)]
    for v in victims:
        Path(v).write_bytes(b"x")
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(outside), *victims])
    hits, raced = 0, 0
    try:
        for attempt in range(20):
            journal = str(tmp_path / "journals" / f"t{attempt}")
            result = treewalk("label", "--root", str(root), "--target", TARGET, "--journal", journal)
            raced += int(result.get("raced", 0))
            if xattr(outside) != ETC:
                hits += 1
                setlabel(outside, ETC)
            treewalk("restore", "--root", str(root), "--target", TARGET, "--journal", journal, "--sweep")
    finally:
        swapper.kill()
        swapper.wait()
    assert hits == 0, f"the file outside the tree got the guest's label in {hits} of 20 runs"
    assert raced > 0, "no swap landed between a scan and its label: the test proved nothing"


def test_restore_never_writes_through_a_hard_link_to_a_file_outside_the_tree(tmp_path: Path, as_root: None) -> None:
    """A read-only tree's journaled file is replaced by a hard link to an ISO outside the tree that
    carries the same (shared) target: the restore must not give that ISO the file's original."""
    root = tmp_path / "media"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    journal = str(tmp_path / "journals" / "t")
    treewalk("label", "--root", str(root), "--target", CONTENT, "--journal", journal)
    assert xattr(root / "f") == CONTENT
    iso = tmp_path / "other.iso"
    iso.write_bytes(b"iso")
    setlabel(iso, CONTENT)
    (root / "f").unlink()
    os.link(iso, root / "f")
    treewalk("restore", "--root", str(root), "--target", CONTENT, "--journal", journal)
    assert xattr(iso) == CONTENT and xattr(root) is None


# -- finding 1: a release that could not restore everything keeps the pair --------------------------


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Processes started inside (svirtd, and its tree helpers) get the default soft limit of 1,024 files."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def share_xml(share: Path) -> str:
    return f"<filesystem type='mount' accessmode='passthrough'><source dir='{share}'/><target dir='s'/></filesystem>"


def carrying(root: Path, label: str) -> list[str]:
    return sorted(p for p, v in tree_labels(root).items() if v == label)


async def free_pairs(bus: PrivateBus) -> int:
    async with SvirtClient(bus.address) as client:
        free = await client.prop("CategoriesFree")
    assert isinstance(free, int)
    return free


def test_a_share_of_1500_directories_is_restored_under_the_default_open_files_limit(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    share = guests.image_dir / "share"
    for i in range(1500):
        (share / f"d{i}").mkdir(parents=True)
        (share / f"d{i}" / "f").write_bytes(b"x")
    with open_files_limit(1024):
        svirtd(default_confined=False)
    g = guests.new(extra_devices=share_xml(share))
    report = run(call(bus, "Isolate", "ss", g.uuid, ""))
    private = IMAGE + report["level"]
    assert len(carrying(share, private)) == 3001
    run(call(bus, "Release", "s", g.uuid))
    assert carrying(share, private) == []
    assert run(call(bus, "List")) == []


def test_a_file_the_guest_renamed_to_a_name_that_is_not_utf8_is_restored(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    share = guests.image_dir / "share"
    share.mkdir(parents=True)
    (share / "f").write_bytes(b"x")
    svirtd(default_confined=False)
    g = guests.new(extra_devices=share_xml(share))
    report = run(call(bus, "Isolate", "ss", g.uuid, ""))
    private = IMAGE + report["level"]
    evil = os.path.join(os.fsencode(share), b"evil\xff")
    os.rename(os.fsencode(share / "f"), evil)  # mv f $'evil\xff', inside the guest
    assert xattr(os.fsdecode(evil)) == private
    run(call(bus, "Release", "s", g.uuid))
    assert xattr(os.fsdecode(evil)) != private and xattr(share) is None
    assert run(call(bus, "List")) == []


@pytest.mark.parametrize("retry_by", ["release", "restart"])
def test_a_release_that_cannot_restore_a_file_keeps_the_pair_until_it_can(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, retry_by: str) -> None:
    """A file of the share cannot be restored (immutable: setxattr fails): Release fails, the guest stays
    listed with a note saying what failed and how to retry, its pair stays reserved (a restart keeps it
    so); once the file can be restored, Release again or svirtd's start finishes the release."""
    share = guests.image_dir / "share"
    (share / "sub").mkdir(parents=True)
    stuck = share / "sub" / "stuck"
    stuck.write_bytes(b"x")
    (share / "other").write_bytes(b"x")
    first = svirtd(default_confined=False)
    g = guests.new(extra_devices=share_xml(share))
    report = run(call(bus, "Isolate", "ss", g.uuid, ""))
    private = IMAGE + report["level"]
    free = run(free_pairs(bus))
    with immutable(stuck):
        with pytest.raises(CallFailed) as exc:
            run(call(bus, "Release", "s", g.uuid))
        assert exc.value.name == "org.svirt.Manager1.Error.RelabelFailed", exc.value
        assert str(share) in exc.value.text and "svirtctl release" in exc.value.text
        assert [r[0] for r in run(call(bus, "List"))] == [g.uuid]
        assert run(free_pairs(bus)) == free  # the pair is not handed out again
        note = run(call(bus, "Query", "s", g.uuid))["note"]
        assert "release incomplete" in note and str(share) in note and "svirtctl release" in note
        assert carrying(share, private) == [str(stuck)]  # everything else was restored
        first.stop()
        proc = svirtd(default_confined=False)  # a restart: the pair is still reserved, svirtd still starts
        assert [r[0] for r in run(call(bus, "List"))] == [g.uuid]
        assert run(free_pairs(bus)) == free
        assert carrying(share, private) == [str(stuck)]  # not labeled again by the reconcile at the start
    if retry_by == "release":
        run(call(bus, "Release", "s", g.uuid))
    else:
        proc.stop()
        svirtd(default_confined=False)
    assert carrying(share, private) == []
    assert run(call(bus, "List")) == []
    assert run(free_pairs(bus)) == free + 1


def test_a_tree_1200_directories_deep_is_labeled_checked_and_restored_within_1024_open_files(
        tmp_path: Path, as_root: None) -> None:
    import resource

    root = tmp_path / "share"
    deepest = root
    root.mkdir()
    for _ in range(1200):
        deepest = deepest / "d"
        deepest.mkdir()
    (deepest / "f").write_bytes(b"x")

    def default_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    journal = str(tmp_path / "journals" / "t")
    try:
        labeled = treewalk("label", "--root", str(root), "--target", TARGET, "--journal", journal,
                           preexec_fn=default_limit)
        assert (labeled.get("fatal"), labeled.get("errors"), labeled.get("changed")) == (None, 0, 1202), labeled
        check = treewalk("check", "--root", str(root), "--target", TARGET, preexec_fn=default_limit)
        assert (check.get("errors"), check.get("off_target")) == (0, 0), check
        restored = treewalk("restore", "--root", str(root), "--target", TARGET, "--journal", journal, "--sweep",
                            preexec_fn=default_limit)
        assert (restored.get("errors"), restored.get("changed")) == (0, 1202), restored
        assert xattr(deepest / "f") is None and xattr(root) is None
    finally:  # bottom up: shutil.rmtree (pytest's clean-up of old temp dirs) recurses once per level
        (deepest / "f").unlink()
        while deepest != root:
            deepest.rmdir()
            deepest = deepest.parent
