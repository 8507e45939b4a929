"""Cheap real guests: TCG, 64 MiB, no graphics, booting a 1 MiB disk that halts at once."""

from __future__ import annotations

import shutil
import subprocess
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import libvirt

from .libvirtd import remove_domains

IMAGE_ROOT = Path("/var/lib/libvirt/images")
# cli; hlt; jmp $-2 -- then the boot signature.
BOOT_SECTOR = bytes([0xFA, 0xF4, 0xEB, 0xFD]) + bytes(506) + bytes([0x55, 0xAA])


def make_disk(path: Path, size: int = 1024 * 1024) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(BOOT_SECTOR)
        fh.truncate(size)
    path.chmod(0o644)
    return path


@dataclass
class Disk:
    path: Path
    dev: str
    device: str = "disk"  # disk | cdrom
    readonly: bool = False
    shareable: bool = False
    dtype: str = "file"  # file | block


def disk_xml(d: Disk) -> str:
    attr = "dev" if d.dtype == "block" else "file"
    flags = ("<readonly/>" if d.readonly else "") + ("<shareable/>" if d.shareable else "")
    bus = "sata" if d.device == "cdrom" else "virtio"
    return (f"<disk type='{d.dtype}' device='{d.device}'><driver name='qemu' type='raw'/>"
            f"<source {attr}={quoteattr(str(d.path))}/><target dev='{d.dev}' bus='{bus}'/>{flags}</disk>")


def domain_xml(name: str, uuid: str, disks: list[Disk], extra_devices: str = "", virt_type: str = "qemu",
               extra: str = "") -> str:
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    {''.join(disk_xml(d) for d in disks)}
    <video><model type='none'/></video>
    <memballoon model='none'/>
    {extra_devices}
  </devices>
  {extra}
</domain>"""


def define_diskless(uri: str, prefix: str, count: int, start: int = 0) -> list[str]:
    """Define count guests without disks, named prefix-start...; their UUIDs (benches at scale)."""
    conn = libvirt.open(uri)
    try:
        uuids = []
        for i in range(start, start + count):
            uid = str(uuidlib.uuid4())
            conn.defineXML(domain_xml(f"{prefix}-{i}", uid, []))
            uuids.append(uid)
        return uuids
    finally:
        conn.close()


@dataclass
class Guest:
    name: str
    uuid: str
    disks: list[Disk]
    xml: str

    @property
    def disk(self) -> Path:
        return self.disks[0].path


@dataclass
class GuestFactory:
    """Defines guests with unique names under `prefix` and removes them (and their images) after."""

    prefix: str
    uri: str  # the private libvirtd's (testbed.libvirtd.Libvirtd.uri)
    image_root: Path = IMAGE_ROOT
    guests: list[Guest] = field(default_factory=list)
    _count: int = 0

    @property
    def image_dir(self) -> Path:
        return self.image_root / self.prefix

    def new(self, disks: int = 1, define: bool = True, name: str | None = None,
            disk_specs: list[Disk] | None = None, extra_devices: str = "", extra: str = "") -> Guest:
        self._count += 1
        name = name or f"{self.prefix}-{self._count}"
        uid = str(uuidlib.uuid4())
        if disk_specs is None:
            disk_specs = [Disk(make_disk(self.image_dir / f"{name}-{i}.img"), f"vd{chr(ord('a') + i)}")
                          for i in range(disks)]
        guest = Guest(name=name, uuid=uid, disks=disk_specs,
                      xml=domain_xml(name, uid, disk_specs, extra_devices=extra_devices, extra=extra))
        self.guests.append(guest)
        if define:
            self.define(guest)
        return guest

    def define(self, guest: Guest) -> None:
        conn = libvirt.open(self.uri)
        try:
            conn.defineXML(guest.xml)
        finally:
            conn.close()

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, check=check,
                              timeout=60)

    def cleanup(self) -> None:
        remove_domains(self.uri, lambda name: name.startswith(self.prefix))
        shutil.rmtree(self.image_dir, ignore_errors=True)
