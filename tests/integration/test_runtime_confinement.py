"""Issue 12: confinement that holds while guests run -- hotplug, snapshots, block jobs, backing chains
nobody listed, define-then-start, transient guests, save/restore, per-disk opt-outs, every device class.

Real libvirtd (the private one), real qemu guests, real xattrs, svirtd as a subprocess. This host's
libvirt has no SELinux driver, so svirtd applies every label itself here (label_plan.py) and nothing
is enforced: these tests show the labels on disk; `make e2e` shows the kernel enforcing them where
libvirt's driver applies svirtd's pair.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.bus import PrivateBus
from testbed.client import CallFailed
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.libvirtd import Libvirtd
from testbed.mounts import Mounts
from tests.conftest import wait_until
from tests.helpers import call, labeled_by_svirtd, run, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
IMAGE = "system_u:object_r:svirt_image_t:"
CONTENT = "system_u:object_r:virt_content_t:s0"
VIRT_IMAGE = "system_u:object_r:virt_image_t:s0"
SCSI = "<controller type='scsi' model='virtio-scsi'/>"


def query(bus: PrivateBus, uuid: str) -> dict[str, Any] | None:
    try:
        report = run(call(bus, "Query", "s", uuid))
    except CallFailed:
        return None
    assert isinstance(report, dict)
    return report


def isolated(bus: PrivateBus, uuid: str) -> str | None:
    """The guest's level once everything svirtd labels carries its label."""
    report = query(bus, uuid)
    return str(report["level"]) if report and labeled_by_svirtd(report, also=("absent",)) else None


def setlabel(path: Path, label: str) -> None:
    os.setxattr(path, "security.selinux", label.encode())


def resource(report: dict[str, Any], path: Path | str) -> dict[str, Any]:
    found = [r for r in report["resources"] if r["path"] == str(path)]
    assert found, f"{path} not in {[r['path'] for r in report['resources']]}"
    return dict(found[0])


def test_a_hotplugged_disk_gets_the_guests_pair_and_its_label_back_on_unplug(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """RESULT hotplug_disk / hotunplug_restored, here: `virsh attach-disk --live` of a virtio-scsi disk
    (its unplug needs no help from the halted guest) into a running guest, and detach."""
    svirtd()
    g = guests.new(extra_devices=SCSI)
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    hot = make_disk(guests.image_dir / "hot.img")
    setlabel(hot, VIRT_IMAGE)
    guests.virsh("start", g.name)
    try:
        guests.virsh("attach-disk", g.name, str(hot), "sdb", "--targetbus", "scsi", "--live")
        t0 = time.monotonic()
        wait_until(lambda: xattr(hot) == IMAGE + str(level), what="the hotplugged disk labeled")
        print(f"hotplugged disk labeled {time.monotonic() - t0:.3f}s after attach-disk returned")
        report = query(bus, g.uuid)
        assert report is not None and resource(report, hot)["status"] == "labeled"
        guests.virsh("detach-disk", g.name, "sdb", "--live")
        wait_until(lambda: xattr(hot) == VIRT_IMAGE, what="the unplugged disk restored")
        assert xattr(g.disk) == IMAGE + str(level)  # the guest's own disk is untouched
    finally:
        guests.virsh("destroy", g.name)


def test_an_external_snapshot_overlay_is_private_and_the_old_top_stays_private_then_commit_back(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """RESULT snapshot_overlay / blockcommit, here. An external snapshot sends no libvirt event: svirtd
    finds the overlay by rescanning running guests (rescan_seconds). The old top, now a backing layer,
    keeps the guest's pair, as libvirt leaves it on the enforcing VM (read-only content would let every
    guest read it)."""
    svirtd(rescan_seconds=1)
    g = guests.new()
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    overlay = guests.image_dir / "overlay.qcow2"
    guests.virsh("start", g.name)
    try:
        guests.virsh("snapshot-create-as", g.name, "s1", "--disk-only", "--atomic", "--no-metadata",
                     "--diskspec", f"vda,file={overlay}")
        wait_until(lambda: xattr(overlay) == IMAGE + str(level), what="the overlay private")
        assert xattr(g.disk) == IMAGE + str(level)  # the old top: still the guest's only
        report = query(bus, g.uuid)
        assert report is not None
        assert resource(report, overlay)["class"] == "private" and resource(report, g.disk)["class"] == "private"
        assert "backing layer" in resource(report, g.disk)["device"]
        guests.virsh("blockcommit", g.name, "vda", "--active", "--pivot", "--wait")
        wait_until(lambda: xattr(g.disk) == IMAGE + str(level), what="the committed top private again")
        wait_until(lambda: xattr(overlay) is None, what="the overlay no longer in use: its original back")
    finally:
        guests.virsh("destroy", g.name)


def test_a_backing_file_the_definition_does_not_name_is_labeled_read_only_before_qemu_opens_it(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, libvirtd: Libvirtd, tmp_path: Path) -> None:
    """RESULT backing_chain_unlisted, here: a qcow2 top whose backing file is only in its header (no
    <backingStore>) starts and reads its base, which carries the read-only label from the hook on."""
    d = guests.image_dir
    base = make_disk(d / "base.img")
    top = d / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", str(top)], check=True,
                   cwd=d)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{top}'/>"
            "<target dev='vda' bus='virtio'/></disk>")
    g = guests.new(disk_specs=[], extra_devices=disk)
    log = tmp_path / "probe.log"
    probe = libvirtd.hooks_dir / "zz-base-label"
    probe.write_text(f"#!/bin/sh\ncat >/dev/null\n[ \"$2/$3\" = prepare/begin ] && getfattr --only-values -n "
                     f"security.selinux {base} >> {log} 2>/dev/null\nexit 0\n")
    probe.chmod(0o755)
    try:
        svirtd()
        level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
        assert xattr(top) == IMAGE + str(level) and xattr(base) == CONTENT
        report = query(bus, g.uuid)
        assert report is not None and "backing layer 1 (probed)" in resource(report, base)["device"]
        setlabel(base, VIRT_IMAGE)  # as a restored backup would be: the hook must label it again
        guests.virsh("start", g.name)
        guests.virsh("destroy", g.name)
        assert log.read_text().rstrip("\0") == CONTENT, "the base did not carry its label when qemu started"
        guests.virsh("undefine", g.name)
        wait_until(lambda: xattr(base) is None and xattr(top) is None, what="both restored after undefine")
    finally:
        probe.unlink(missing_ok=True)


def test_a_qcow2_header_pointing_at_a_system_file_is_refused(bus: PrivateBus, guests: GuestFactory,
                                                              svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    d.mkdir(parents=True, exist_ok=True)
    top = d / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(top), "1M"],
                   check=True)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{top}'/>"
            "<target dev='vda' bus='virtio'/></disk>")
    shadow = xattr("/etc/shadow")
    g = guests.new(disk_specs=[], extra_devices=disk)
    svirtd(default_confined=False)
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", g.uuid, ""))
    assert exc.value.name.endswith("UnsafePath") and "/etc/shadow" in exc.value.text
    assert xattr("/etc/shadow") == shadow and xattr(top) is None


def test_define_then_start_at_once_runs_with_the_pair_svirtd_records(bus: PrivateBus, guests: GuestFactory,
                                                                    svirtd: StartSvirtd) -> None:
    """RESULT define_then_start, here (no process labels on this host): virt-install defines and starts
    within milliseconds; the disk carries the pair svirtd records before qemu opens it."""
    svirtd()
    g = guests.new(define=False)
    t0 = time.monotonic()
    guests.define(g)
    guests.virsh("start", g.name)
    print(f"define + start took {time.monotonic() - t0:.3f}s")
    try:
        level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
        assert xattr(g.disk) == IMAGE + str(level)
        assert [row[2] for row in run(call(bus, "List")) if row[0] == g.uuid] == [level]
    finally:
        guests.virsh("destroy", g.name)


def test_a_transient_guest_is_confined_from_the_table_and_released_when_destroyed(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, tmp_path: Path) -> None:
    """RESULT transient_guest, here: `virsh create` (no definition, no define event)."""
    svirtd()
    g = guests.new(define=False)
    setlabel(g.disk, VIRT_IMAGE)
    xml = tmp_path / "transient.xml"
    xml.write_text(g.xml)
    guests.virsh("create", str(xml))
    try:
        level = wait_until(functools.partial(isolated, bus, g.uuid), what="transient guest isolated")
        assert xattr(g.disk) == IMAGE + str(level)
        assert any(row[0] == g.uuid and row[4] == "running" for row in run(call(bus, "List")))
    finally:
        guests.virsh("destroy", g.name)
    wait_until(lambda: query(bus, g.uuid) is None, what="the transient guest released once it is gone")
    assert xattr(g.disk) == VIRT_IMAGE


def test_save_and_restore_keep_the_pair(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """RESULT save_restore, here: `virsh save` + `virsh restore` (the restore hook runs)."""
    svirtd()
    g = guests.new()
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    saved = guests.image_dir / "saved.state"
    guests.virsh("start", g.name)
    guests.virsh("save", g.name, str(saved))
    try:
        assert "shut off" in guests.virsh("domstate", g.name).stdout
        guests.virsh("restore", str(saved))
        assert "running" in guests.virsh("domstate", g.name).stdout
        assert isolated(bus, g.uuid) == level and xattr(g.disk) == IMAGE + str(level)
    finally:
        guests.virsh("destroy", g.name, check=False)


def test_a_per_disk_relabel_no_is_honoured(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """RESULT per_disk_norelabel, here (this libvirt cannot START a guest with a per-disk selinux
    seclabel: no SELinux driver; svirtd's part is at define time)."""
    d = guests.image_dir
    keep = make_disk(d / "keep.img")
    setlabel(keep, VIRT_IMAGE)
    extra = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{keep}'>"
             "<seclabel model='selinux' relabel='no'/></source><target dev='vdb' bus='virtio'/></disk>")
    svirtd()
    g = guests.new(extra_devices=extra)
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    assert xattr(g.disk) == IMAGE + str(level) and xattr(keep) == VIRT_IMAGE
    report = query(bus, g.uuid)
    assert report is not None
    kept = resource(report, keep)
    assert kept["status"] == "not-relabeled" and "relabel='no'" in kept["note"]


def test_query_lists_every_device_with_its_label_or_the_reason(bus: PrivateBus, guests: GuestFactory,
                                                               svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    d.mkdir(parents=True, exist_ok=True)
    extra = ("<input type='evdev'><source dev='/dev/input/event0'/></input>"
             "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
             "<shmem name='svt-sh'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"
             f"<smartcard mode='passthrough' type='unix'><source mode='bind' path='{d}/sc.sock'/></smartcard>"
             "<interface type='vhostuser'><source type='unix' path='/run/vu.sock' mode='client'/>"
             "<model type='virtio'/></interface>")
    svirtd()
    g = guests.new(extra_devices=extra)
    wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    report = query(bus, g.uuid)
    assert report is not None
    devices = {r["device"]: r for r in report["resources"]}
    for device in ("input0 evdev", "rng0", "shmem0 svt-sh", "smartcard0 passthrough", "interface0 vhostuser",
                   "video0", "memballoon0", "disk vda"):
        assert device in devices, f"{device} missing from Query: {sorted(devices)}"
    for r in report["resources"]:
        if r["status"] == "not-relabeled":
            assert r["note"].startswith("not relabeled: ") and len(r["note"]) > 20, r
    assert "device node" in devices["input0 evdev"]["note"]
    assert devices["smartcard0 passthrough"]["status"] == "absent"  # qemu creates the socket: labeled then


def test_a_large_definition_reaches_svirtd_through_the_hook(bus: PrivateBus, guests: GuestFactory,
                                                           svirtd: StartSvirtd) -> None:
    """Issue 13, item 5: the hook passed the XML as one argument; over 128 KiB the start failed with
    "Argument list too long" (unconfined, or never with require_confined). It is spooled now."""
    svirtd(require_confined=True)
    big = "<metadata><app:blob xmlns:app='https://example.org/app'>" + "x" * 200_000 + "</app:blob></metadata>"
    g = guests.new(extra=big)
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    replacement = make_disk(g.disk.with_suffix(".new"))
    os.replace(replacement, g.disk)  # unlabeled: only the hook can label it before qemu opens it
    started = guests.virsh("start", g.name, check=False)
    try:
        assert started.returncode == 0, started.stderr
        assert xattr(g.disk) == IMAGE + str(level)
    finally:
        guests.virsh("destroy", g.name, check=False)


def test_release_takes_the_label_out_of_the_definition(bus: PrivateBus, guests: GuestFactory,
                                                       svirtd: StartSvirtd, tmp_path: Path) -> None:
    """Issue 13, item 3: after Release the definition kept svirtd's binding, and a guest defined from a
    copy of it got the very same pair."""
    svirtd()
    g = guests.new()
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    wait_until(lambda: "svirtd.org" in guests.virsh("dumpxml", "--inactive", g.name).stdout, what="identity written")
    run(call(bus, "Release", "s", g.uuid))
    wait_until(lambda: "svirtd.org" not in guests.virsh("dumpxml", "--inactive", g.name).stdout,
               what="svirtd's binding gone from the released guest's definition")
    copy = guests.virsh("dumpxml", "--inactive", g.name).stdout
    new_uuid = str(uuidlib.uuid4())
    copy = copy.replace(g.uuid, new_uuid).replace(f"<name>{g.name}</name>", f"<name>{g.name}-copy</name>")
    disk2 = make_disk(guests.image_dir / "copy.img")
    copy = copy.replace(str(g.disk), str(disk2))
    path = tmp_path / "copy.xml"
    path.write_text(copy)
    guests.virsh("define", str(path))
    copied_level = wait_until(functools.partial(isolated, bus, new_uuid), what="the copy isolated")
    assert copied_level != level


def test_reserved_categories_are_never_adopted_from_a_disk(bus: PrivateBus, guests: GuestFactory,
                                                           svirtd: StartSvirtd) -> None:
    """Issue 13, item 9: a disk already labeled s0:c1000,c1001 was given that pair despite the
    reservation."""
    disk = make_disk(guests.image_dir / "pre.img")
    setlabel(disk, IMAGE + "s0:c1000,c1001")
    svirtd(reserved_categories="c1000.c1023")
    g = guests.new(disk_specs=[Disk(disk, "vda")])
    level = str(wait_until(functools.partial(isolated, bus, g.uuid), what="isolated"))
    cats = [int(c[1:]) for c in level.split(":")[1].split(",")]
    assert all(c < 1000 for c in cats), level
    report = query(bus, g.uuid)
    assert report is not None and "outside the categories" in report["note"]


def test_a_file_svirtds_sandbox_keeps_read_only_is_reported_with_the_fix_and_the_guest_stays_isolated(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, mounts: Mounts) -> None:
    """Issue 13, item 6: an image outside the unit's ReadWritePaths= failed with EROFS and the whole
    guest was rolled back. Here a read-only bind mount of a writable directory plays the sandbox."""
    d = guests.image_dir
    mounts.bind_read_only(d / "rw", d / "ro")
    make_disk(d / "rw" / "data.img")
    svirtd()
    g = guests.new(disk_specs=[Disk(make_disk(d / "boot.img"), "vda"), Disk(d / "ro" / "data.img", "vdb")],
                   extra_devices="<serial type='file'><source path='/etc/svt-serial.log'/><target port='0'/></serial>")
    report = wait_until(lambda: (r := query(bus, g.uuid)) and labeled_by_svirtd(r, ("unlabelable", "not-relabeled"))
                        and r, what="isolated in spite of the read-only file")
    assert isinstance(report, dict)
    level = report["level"]
    assert xattr(d / "boot.img") == IMAGE + str(level)
    ro = resource(report, d / "ro" / "data.img")
    assert ro["status"] == "unlabelable" and "systemctl edit svirtd" in ro["note"]
    assert f"ReadWritePaths=-{d / 'ro'}" in ro["note"]
    serial = resource(report, "/etc/svt-serial.log")  # optional, refused: reported, not fatal
    assert serial["status"] == "not-relabeled" and "system tree /etc" in serial["note"]


def test_a_running_guests_disk_whose_label_drifted_gets_it_back_and_keeps_its_original(
        bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    """RESULT restorecon_repaired, here: `restorecon -R` over the images directory while a guest runs
    resets its disk's type (the level stays): the guest's qemu would lose its own disk. The rescan of
    running guests puts the label back, and the original svirtd recorded is still what Release restores."""
    svirtd(rescan_seconds=1)
    g = guests.new(define=False)
    original = xattr(g.disk)
    guests.define(g)
    level = wait_until(functools.partial(isolated, bus, g.uuid), what="isolated")
    guests.virsh("start", g.name)
    try:
        for drifted in ("system_u:object_r:virt_image_t:" + str(level), VIRT_IMAGE):  # restorecon, then -F
            setlabel(g.disk, drifted)
            wait_until(lambda: xattr(g.disk) == IMAGE + str(level), what=f"{drifted} put right")
    finally:
        guests.virsh("destroy", g.name)
    run(call(bus, "Release", "s", g.uuid))
    assert xattr(g.disk) == original
