"""Issue 5: confinement that cannot be skipped. Real libvirtd running svirtd's hook, real qemu guests."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.bus import PrivateBus
from testbed.client import CallFailed
from testbed.daemon import SvirtdProcess
from testbed.guests import Guest, GuestFactory, make_disk
from testbed.libvirtd import Libvirtd
from tests.conftest import wait_until
from tests.helpers import call, labeled_by_svirtd, run, xattr

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
IMAGE = "system_u:object_r:svirt_image_t:"








def table(bus: PrivateBus) -> dict[str, str]:
    return {row[0]: row[2] for row in run(call(bus, "List"))}


def labeled_level(bus: PrivateBus, g: Guest) -> str | None:
    try:
        report = run(call(bus, "Query", "s", g.uuid))
    except CallFailed:
        return None
    ok = labeled_by_svirtd(report, also=("absent",))
    return str(report["level"]) if ok and xattr(g.disk) == IMAGE + report["level"] else None


@pytest.fixture
def probe_hook(tmp_path: Path, libvirtd: Libvirtd) -> Iterator[Path]:
    """A second hook, run after svirtd's (hooks run in name order): records the disk's label right
    after `prepare begin`, and at `started begin` the label seen through qemu's own open file."""
    log = tmp_path / "probe.log"
    probe = libvirtd.hooks_dir / "zz-svirtd-probe"
    probe.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        xml=$(cat)
        disk=$(printf '%s' "$xml" | sed -n "s/.*<source file='\\([^']*\\.img\\)'.*/\\1/p" | head -n 1)
        case "$2/$3" in
        prepare/begin)
            label=$(getfattr --absolute-names --only-values -n security.selinux "$disk" 2>/dev/null)
            echo "prepare $label" >> {log} ;;
        started/begin)
            pid=$(cat /run/libvirt/qemu/$1.pid)
            for fd in /proc/$pid/fd/*; do
                if [ "$(readlink "$fd")" = "$disk" ]; then
                    echo "qemu-fd $(getfattr --only-values -n security.selinux "$fd" 2>/dev/null)" >> {log}
                fi
            done ;;
        esac
        exit 0
        """))
    probe.chmod(0o755)
    yield log
    probe.unlink(missing_ok=True)


def test_the_disk_carries_its_label_when_qemu_starts(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                    probe_hook: Path) -> None:
    svirtd()
    g = guests.new()
    level = wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    # Replace the image (a new inode without a label, as a restored backup would be) right before the
    # start: only the synchronous hook can label it before qemu opens it.
    replacement = g.disk.with_suffix(".new")
    make_disk(replacement)
    os.replace(replacement, g.disk)
    assert xattr(g.disk) is None
    guests.virsh("start", g.name)
    try:
        lines = dict(line.split(" ", 1) for line in probe_hook.read_text().splitlines())
        assert lines["prepare"].rstrip("\0") == IMAGE + str(level)
        assert lines["qemu-fd"].rstrip("\0") == IMAGE + str(level), "qemu opened its disk unlabeled"
    finally:
        guests.virsh("destroy", g.name)


def test_require_confined_aborts_the_start_while_svirtd_is_down(bus: PrivateBus, guests: GuestFactory,
                                                               svirtd: StartSvirtd) -> None:
    proc = svirtd(require_confined=True)
    g = guests.new()
    wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    proc.stop()
    failed = guests.virsh("start", g.name, check=False)
    assert failed.returncode != 0
    assert "svirtd: not starting" in failed.stderr and "require_confined = true" in failed.stderr
    assert re.search(r"org\.svirt\.Manager|not activatable|not connect|No such file", failed.stderr), failed.stderr
    svirtd(require_confined=True)
    started = guests.virsh("start", g.name, check=False)
    assert started.returncode == 0, started.stderr
    guests.virsh("destroy", g.name)
    # A guest an admin released is not started either.
    run(call(bus, "Release", "s", g.uuid))
    refused = guests.virsh("start", g.name, check=False)
    assert refused.returncode != 0 and "released by an admin" in refused.stderr


def test_without_require_confined_an_unreachable_svirtd_is_reported(bus: PrivateBus, guests: GuestFactory,
                                                                   svirtd: StartSvirtd) -> None:
    proc = svirtd()
    g = guests.new()
    wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    proc.stop()
    started = guests.virsh("start", g.name, check=False)
    try:
        assert started.returncode == 0, started.stderr
        svirtd()
        note = wait_until(lambda: "UNCONFINED" in run(call(bus, "Query", "s", g.uuid))["note"]
                          and run(call(bus, "Query", "s", g.uuid))["note"], what="reported unconfined")
        assert "restart the guest" in str(note)
    finally:
        guests.virsh("destroy", g.name)
    wait_until(lambda: "UNCONFINED" not in run(call(bus, "Query", "s", g.uuid))["note"], what="note cleared")


def test_libvirtd_killed_while_definitions_change(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                                 libvirtd: Libvirtd) -> None:
    svirtd()
    g1, g2 = guests.new(), guests.new()
    for g in (g1, g2):
        wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    libvirtd.kill_libvirtd()
    # While libvirtd is down: one definition appears, one disappears (libvirtd reads them at start).
    g3 = guests.new(define=False)
    (libvirtd.definitions_dir / f"{g3.name}.xml").write_text(g3.xml)
    (libvirtd.definitions_dir / f"{g2.name}.xml").unlink()
    libvirtd.start_libvirtd()
    back = time.monotonic()
    # And right after it is back, before svirtd may have reconnected: a start and a definition.
    guests.virsh("start", g1.name)
    g4 = guests.new()
    try:
        def agree() -> bool:
            t = table(bus)
            return (set(t) == {g1.uuid, g3.uuid, g4.uuid} and xattr(g2.disk) is None
                    and all(labeled_level(bus, g) == t[g.uuid] for g in (g1, g3, g4)))

        wait_until(agree, interval=0.05, what="table, labels and libvirt to agree")
        print(f"converged {time.monotonic() - back:.2f}s after libvirtd returned")
        assert run(call(bus, "Query", "s", g1.uuid))["state"] == "running"
    finally:
        guests.virsh("destroy", g1.name)


def test_svirtd_killed_while_definitions_change(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    proc = svirtd()
    g1, g2 = guests.new(), guests.new()
    for g in (g1, g2):
        wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    proc.kill()
    guests.virsh("undefine", g2.name)
    g3 = guests.new()
    guests.virsh("start", g1.name)  # no svirtd: the hook lets it start and leaves a marker
    try:
        t0 = time.monotonic()
        svirtd()
        wait_until(lambda: set(table(bus)) == {g1.uuid, g3.uuid} and xattr(g2.disk) is None
                   and labeled_level(bus, g3) is not None, what="agreement after restart")
        print(f"converged {time.monotonic() - t0:.2f}s after svirtd restarted")
    finally:
        guests.virsh("destroy", g1.name)


def test_identity_travels_with_the_definition(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd,
                                              tmp_path: Path) -> None:
    svirtd()
    g = guests.new()
    level = wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    dumped = wait_until(lambda: (x := guests.virsh("dumpxml", "--inactive", g.name).stdout) and
                        "svirtd.org/xmlns" in x and x, what="metadata written")
    assert f"level=\"{level}\"" in str(dumped) and f"uuid=\"{g.uuid}\"" in str(dumped)
    saved = tmp_path / "g.xml"
    saved.write_text(str(dumped))
    # A migration/restore: undefined (released, pair freed), defined again from the dump.
    guests.virsh("undefine", g.name)
    wait_until(lambda: g.uuid not in table(bus) and xattr(g.disk) is None, what="released")
    guests.virsh("define", str(saved))
    assert wait_until(functools.partial(labeled_level, bus, g), what="back") == level
    # Undefined again; meanwhile another guest arrives carrying the same identity block (copied XML).
    guests.virsh("undefine", g.name)
    wait_until(lambda: g.uuid not in table(bus), what="released")
    other = guests.new(define=False)
    block = re.search(r"<metadata[ >].*</metadata>", str(dumped), re.S)  # libvirt puts xmlns on <metadata>
    assert block is not None
    other.xml = other.xml.replace("<devices>", block.group(0) + "<devices>", 1)
    guests.define(other)
    assert wait_until(functools.partial(labeled_level, bus, other), what="other isolated") == level
    guests.virsh("define", str(saved))
    new_level = wait_until(functools.partial(labeled_level, bus, g), what="re-mapped")
    assert new_level != level
    report = run(call(bus, "Query", "s", g.uuid))
    assert "re-mapped" in report["note"] and other.name in report["note"]
    assert xattr(g.disk) == IMAGE + str(new_level)  # its disk followed


SECLABEL_PROBE = textwrap.dedent("""
    import asyncio, json, sys, time, uuid as uuidlib
    from pathlib import Path
    import libvirt
    import selinux
    from svirtd.config import Config
    from svirtd.service import Daemon

    def domain(name, uuid, disk):
        return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>1024</memory>"
                f"<os><type>hvm</type></os><devices><disk type='file' device='disk'><source file='{disk}'/>"
                "<target dev='vda'/></disk></devices></domain>")

    async def identity_written(dom):
        deadline = time.monotonic() + 30
        while "svirtd.org" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
            assert time.monotonic() < deadline, "no identity written within 30 s"
            await asyncio.sleep(0.02)
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    async def main(bus, state, disk, disk2, uuid, selinuxfs, write):
        if selinuxfs:
            # libselinux is told where selinuxfs is (a directory with enforce=0, policyvers): from now on it
            # answers "SELinux enabled, permissive" to everything in this process, svirtd's start included.
            selinux.set_selinuxmnt(selinuxfs)
        config = Config(state_dir=Path(state), bus_address=bus, libvirt_uri="test:///default",
                        setrans_file="", hook_env_file="", audit_source="none", write_seclabels=write,
                        auto_confine_names=["svt-seclabel-*"])
        daemon = Daemon(config)
        await daemon.start()
        conn = libvirt.open("test:///default")
        dom = conn.defineXML(domain("svt-seclabel-1", uuid, disk))
        first = await identity_written(dom)
        # A domain defined later: once its identity is written, the event of the first one's
        # redefinition (earlier) has been delivered; drain() waits for its handler. It must change nothing.
        later = conn.defineXML(domain("svt-seclabel-2", str(uuidlib.uuid4()), disk2))
        await identity_written(later)
        await daemon.manager.drain()
        report = await daemon.manager.query(uuid)
        print(json.dumps({"enabled": daemon.manager.selinux_enabled, "driver": daemon.manager.libvirt_driver,
                          "xml": first,
                          "xml_after": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "label": report.process_label,
                          "level": str(report.assignment.level), "disk": report.resources[0].actual}))
        await daemon.stop()

    asyncio.run(main(*sys.argv[1:]))
""")


@pytest.mark.parametrize(("selinux_enabled", "write", "written"), [
    (True, "auto", False),
    (False, "auto", False),
    (True, "always", True),
], ids=["selinux-enabled-auto", "selinux-off-auto", "always"])
def test_the_static_seclabel_follows_libvirts_selinux_driver(bus: PrivateBus, tmp_path: Path, as_root: None,
                                                             selinux_enabled: bool, write: str, written: bool) -> None:
    """write_seclabels = "auto" (the default) writes the static relabel='yes' seclabel exactly where
    libvirt's SELinux driver is active (libvirt refuses to start a guest with one where it is not), and
    the metadata everywhere. svirtd runs in-process against the test driver, whose security model is
    'testSecurity': even with libselinux saying SELinux is enabled (a selinuxfs stand-in: this kernel has
    no active SELinux), "auto" writes none; "always" does. The e2e run shows "auto" writing it where
    libvirt's SELinux driver is real (RESULT static_seclabel)."""
    disk, disk2 = make_disk(tmp_path / "disk.img"), make_disk(tmp_path / "disk2.img")
    uuid = str(uuidlib.uuid4())
    selinuxfs = ""
    if selinux_enabled:
        fake = tmp_path / "selinuxfs"
        fake.mkdir()
        (fake / "enforce").write_text("0")
        (fake / "policyvers").write_text("33")
        selinuxfs = str(fake)
    out = subprocess.run([sys.executable, "-c", SECLABEL_PROBE, bus.address, str(tmp_path / "state"), str(disk),
                          str(disk2), uuid, selinuxfs, write], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["enabled"] is selinux_enabled  # what svirtd's start learned from libselinux
    assert result["driver"] is False  # what libvirt's capabilities say: no selinux model
    label, level, xml = result["label"], result["level"], result["xml"]
    assert label == f"system_u:system_r:svirt_t:{level}"
    assert re.search(rf'isolation[^>]*level="{re.escape(level)}"', xml) and f'uuid="{uuid}"' in xml
    if written:
        assert re.search(rf"<seclabel type=.static. model=.selinux. relabel=.yes.>\s*<label>{re.escape(label)}"
                         "</label>", xml), xml
        assert xml.count("<seclabel") == 1
    else:
        assert "<seclabel" not in xml, xml
    assert result["xml_after"] == xml  # the redefinition's own event changed nothing more
    assert result["disk"] == IMAGE + level  # no driver to label it: svirtd does


def test_real_libvirtd_gets_no_seclabel_where_selinux_is_off(bus: PrivateBus, guests: GuestFactory,
                                                            svirtd: StartSvirtd) -> None:
    svirtd()
    g = guests.new()
    wait_until(functools.partial(labeled_level, bus, g), what="isolated")
    xml = wait_until(lambda: (x := guests.virsh("dumpxml", "--inactive", g.name).stdout) and "svirtd.org" in x and x,
                     what="metadata")
    assert "model='selinux'" not in str(xml)  # libvirt would refuse to start it here
    guests.virsh("start", g.name)
    guests.virsh("destroy", g.name)


def test_nosmtp_profile_filters_tcp_25_on_a_real_interface(bus: PrivateBus, guests: GuestFactory,
                                                          svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g = guests.new(extra_devices="<interface type='ethernet'><model type='virtio'/></interface>")
    report = run(call(bus, "Isolate", "ss", g.uuid, "nosmtp"))
    assert report["profile"] == "nosmtp"
    wait_until(lambda: "filterref filter='svirtd-nosmtp'" in guests.virsh("dumpxml", "--inactive", g.name).stdout,
               what="filter attached")
    guests.virsh("start", g.name)
    try:
        dev = re.search(r"<target dev='(vnet\d+)'", guests.virsh("dumpxml", g.name).stdout)
        assert dev is not None
        bindings = guests.virsh("nwfilter-binding-list").stdout
        assert re.search(rf"{dev.group(1)}\s+svirtd-nosmtp", bindings), bindings
        rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert re.search(rf"-A \S+-{dev.group(1)} -p tcp -m tcp --dport 25 -j DROP", rules), rules
    finally:
        guests.virsh("destroy", g.name)


def test_nonet_profile_refuses_network_interfaces(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    wired = guests.new(extra_devices="<interface type='ethernet'><model type='virtio'/></interface>")
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "Isolate", "ss", wired.uuid, "nonet"))
    assert exc.value.name == "org.svirt.Manager1.Error.InvalidArgument" and "network interface" in exc.value.text
    assert xattr(wired.disk) is None
    quiet = guests.new()
    assert run(call(bus, "Isolate", "ss", quiet.uuid, "nonet"))["profile"] == "nonet"


def test_profiles_are_listed_in_the_error_for_an_unknown_one(bus: PrivateBus, guests: GuestFactory,
                                                             svirtd: StartSvirtd) -> None:
    svirtd(default_confined=False)
    g = guests.new()
    with pytest.raises(CallFailed, match="known profiles: default, nonet, nosmtp"):
        run(call(bus, "Isolate", "ss", g.uuid, "noSMTP"))
