"""Domain XML -> resources with their classes (pure)."""

from __future__ import annotations

import pytest

from svirtd.errors import InvalidArgument
from svirtd.models import ResourceClass, ResourceKind
from svirtd.resources import SVIRT_XMLNS, parse_domain

UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"

XML = f"""<domain type='kvm'>
  <name>web01</name><uuid>{UUID}</uuid>
  <metadata><svirt:isolation xmlns:svirt='{SVIRT_XMLNS}' level='s0:c1,c2' profile='default'/></metadata>
  <os><type>hvm</type><kernel>/srv/boot/vmlinuz</kernel><initrd>/srv/boot/initrd</initrd>
      <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
      <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram></os>
  <seclabel type='static' model='selinux' relabel='no'><label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>
  <devices>
    <disk type='file' device='disk'><source file='/img/top.qcow2'/><target dev='vda'/>
      <backingStore type='file'><source file='/img/base.qcow2'/>
        <backingStore type='file'><source file='/img/base0.qcow2'/><backingStore/></backingStore>
      </backingStore></disk>
    <disk type='file' device='disk'><source file='/img/shared.img'/><target dev='vdb'/><shareable/></disk>
    <disk type='file' device='disk'><source file='/img/ro.img'/><target dev='vdc'/><readonly/></disk>
    <disk type='file' device='cdrom'><source file='/iso/install.iso'/><target dev='sda'/></disk>
    <disk type='file' device='cdrom'><target dev='sdb'/></disk>
    <disk type='block' device='disk'><source dev='/dev/vg/web01'/><target dev='vdd'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vde'/></disk>
    <serial type='file'><source path='/var/log/web01.serial'/><target port='0'/></serial>
    <console type='file'><source path='/var/log/web01.serial'/></console>
    <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/web01.agent'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <filesystem type='mount'><source dir='/srv/share/web01'/><target dir='share'/></filesystem>
    <filesystem type='mount'><source dir='/srv/share/ro'/><target dir='ro'/><readonly/></filesystem>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <hostdev mode='subsystem' type='pci'>
      <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>"""


def by_path(xml: str = XML) -> dict[str, tuple[ResourceClass, ResourceKind]]:
    spec = parse_domain(xml)
    return {r.path: (r.rclass, r.kind) for r in spec.resources}


def test_classes_follow_svirt() -> None:
    got = by_path()
    assert got["/img/top.qcow2"] == (ResourceClass.PRIVATE, ResourceKind.FILE)
    assert got["/img/base.qcow2"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/img/base0.qcow2"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/img/shared.img"] == (ResourceClass.SHARED, ResourceKind.FILE)
    assert got["/img/ro.img"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/iso/install.iso"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/dev/vg/web01"] == (ResourceClass.PRIVATE, ResourceKind.BLOCK)
    assert got["/srv/boot/vmlinuz"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/srv/boot/initrd"] == (ResourceClass.READONLY, ResourceKind.FILE)
    assert got["/var/lib/libvirt/qemu/nvram/web01_VARS.fd"] == (ResourceClass.PRIVATE, ResourceKind.FILE)
    assert got["/var/log/web01.serial"] == (ResourceClass.PRIVATE, ResourceKind.FILE)
    assert got["/var/lib/libvirt/qemu/web01.agent"] == (ResourceClass.PRIVATE, ResourceKind.SOCKET)
    assert got["/srv/share/web01"] == (ResourceClass.PRIVATE, ResourceKind.TREE)
    assert got["/srv/share/ro"] == (ResourceClass.READONLY, ResourceKind.TREE)
    assert got[f"/var/lib/libvirt/swtpm/{UUID}"] == (ResourceClass.PRIVATE, ResourceKind.TREE)


def test_unhandled_resources_are_listed_with_a_reason() -> None:
    spec = parse_domain(XML)
    unhandled = {r.device: r.note for r in spec.resources if r.rclass is ResourceClass.UNHANDLED}
    assert "rbd" in unhandled["disk vde"]
    assert "firmware" in unhandled["loader"]
    # A host device node: libvirt's to label, never svirtd's.
    hostdev = next(r for r in spec.resources if r.device == "hostdev pci")
    assert hostdev.kind is ResourceKind.CHAR and not hostdev.svirtd_labels and hostdev.libvirt_labels
    assert "never relabels device nodes" in hostdev.note
    assert "/usr/share/OVMF/OVMF_VARS.fd" not in by_path()  # the NVRAM template is never touched


def test_one_entry_per_path_and_most_private_wins() -> None:
    xml = f"""<domain type='qemu'><name>a</name><uuid>{UUID}</uuid><devices>
      <disk type='file' device='cdrom'><source file='/img/x.img'/><target dev='sda'/></disk>
      <disk type='file' device='disk'><source file='/img/x.img'/><target dev='vda'/></disk>
    </devices></domain>"""
    resources = [r for r in parse_domain(xml).resources if r.path == "/img/x.img"]
    assert len(resources) == 1 and resources[0].rclass is ResourceClass.PRIVATE


def test_identity_metadata_and_seclabels() -> None:
    spec = parse_domain(XML)
    assert (spec.uuid, spec.name, spec.virt_type, spec.is_tcg) == (UUID, "web01", "kvm", False)
    assert spec.svirt_metadata == {"level": "s0:c1,c2", "profile": "default"}
    assert spec.seclabels[0].type == "static" and spec.seclabels[0].label.endswith("s0:c1,c2")  # type: ignore[union-attr]
    assert spec.interfaces == ("network",)


@pytest.mark.parametrize("xml", ["", "<domain>", "<network/>", "<domain><name>x</name></domain>",
                                 "<domain><name>x</name><uuid>nope</uuid></domain>"])
def test_not_a_domain_is_invalid_argument(xml: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_domain(xml)
