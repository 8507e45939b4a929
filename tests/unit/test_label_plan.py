"""Every device class of libvirt's domain XML -> the resource svirtd derives, its label and who applies
it, on a host whose libvirt has an SELinux driver ("libvirt") and on one without ("svirtd"). Pure."""

from __future__ import annotations

import pytest

from svirtd.errors import InvalidArgument
from svirtd.label_plan import decide_labels
from svirtd.models import Applier, Level, ResourceClass, ResourceKind
from svirtd.policy import LabelSpec
from svirtd.resources import parse_domain

SPEC = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\n",
                                    "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")
UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
LEVEL = Level(low=4, high=9)
PRIVATE = "system_u:object_r:svirt_image_t:s0:c4,c9"
SHARED = "system_u:object_r:svirt_image_t:s0"
CONTENT = "system_u:object_r:virt_content_t:s0"
S, L, N = Applier.SVIRTD, Applier.LIBVIRT, Applier.NOBODY
F, B, SO, T, C, X = (ResourceKind.FILE, ResourceKind.BLOCK, ResourceKind.SOCKET, ResourceKind.TREE,
                     ResourceKind.CHAR, ResourceKind.NONE)


def domain(devices: str = "", os: str = "", extra: str = "") -> str:
    return (f"<domain type='kvm'><name>g</name><uuid>{UUID}</uuid><os><type>hvm</type>{os}</os>{extra}"
            f"<devices>{devices}</devices></domain>")


# (what, xml, device, path, kind, label, applier without libvirt's driver, with it, a word of the reason)
TABLE = [
    ("disk file", domain("<disk type='file'><source file='/img/a.img'/><target dev='vda'/></disk>"),
     "disk vda", "/img/a.img", F, PRIVATE, S, L, ""),
    ("disk block", domain("<disk type='block'><source dev='/dev/vg/a'/><target dev='vdb'/></disk>"),
     "disk vdb", "/dev/vg/a", B, PRIVATE, S, L, ""),
    ("shareable disk", domain("<disk type='file'><source file='/img/s.img'/><target dev='vdc'/><shareable/></disk>"),
     "disk vdc", "/img/s.img", F, SHARED, S, L, ""),
    ("read-only disk", domain("<disk type='file'><source file='/img/r.img'/><target dev='vdd'/><readonly/></disk>"),
     "disk vdd", "/img/r.img", F, CONTENT, S, L, ""),
    ("cdrom", domain("<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/></disk>"),
     "cdrom sda", "/iso/x.iso", F, CONTENT, S, L, ""),
    ("backing layer", domain("<disk type='file'><driver type='qcow2'/><source file='/img/top.qcow2'/>"
                             "<backingStore type='file'><source file='/img/base.img'/><backingStore/></backingStore>"
                             "<target dev='vde'/></disk>"),
     "disk vde backing layer 1", "/img/base.img", F, CONTENT, S, L, ""),
    ("network disk", domain("<disk type='network'><source protocol='rbd' name='pool/img'/><target dev='vdf'/></disk>"),
     "disk vdf", "pool/img", X, "", N, N, "rbd"),
    ("pool volume", domain("<disk type='volume'><source pool='p' volume='v'/><target dev='vdg'/></disk>"),
     "disk vdg", "disk vdg", X, "", N, N, "pool volume"),
    ("nvme disk", domain("<disk type='nvme'><source type='pci' managed='yes'><address domain='0x0000' bus='0x01' "
                         "slot='0x00' function='0x0'/></source><target dev='vdh'/></disk>"),
     "disk vdh", "nvme bus=0x01 domain=0x0000 function=0x0 slot=0x00", X, "", N, L, "VFIO"),
    ("vhost-user disk", domain("<disk type='vhostuser'><source type='unix' path='/run/vu.sock'/>"
                               "<target dev='vdi'/></disk>"),
     "disk vdi", "/run/vu.sock", X, "", N, N, "vhost-user"),
    ("serial file", domain("<serial type='file'><source path='/var/log/g.serial'/><target port='0'/></serial>"),
     "serial0", "/var/log/g.serial", F, PRIVATE, S, L, ""),
    ("channel unix", domain("<channel type='unix'><source mode='bind' path='/var/lib/g.agent'/>"
                            "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"),
     "channel0 org.qemu.guest_agent.0", "/var/lib/g.agent", SO, PRIVATE, S, L, ""),
    ("console pty", domain("<console type='pty'><target type='serial'/></console>"),
     "console0", "pty", X, "", N, N, "no file"),
    ("parallel dev", domain("<parallel type='dev'><source path='/dev/parport0'/></parallel>"),
     "parallel0", "/dev/parport0", C, PRIVATE, N, L, "device node"),
    ("serial pipe", domain("<serial type='pipe'><source path='/var/lib/g.pipe'/></serial>"),
     "serial0", "/var/lib/g.pipe", X, "", N, L, "FIFO"),
    ("chardev log", domain("<serial type='pty'><log file='/var/log/libvirt/qemu/g-serial0.log'/></serial>"),
     "serial0 log", "/var/log/libvirt/qemu/g-serial0.log", F, PRIVATE, S, L, ""),
    ("virtiofs tree", domain("<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/g'/>"
                             "<target dir='s'/></filesystem>"),
     "filesystem s", "/srv/g", T, PRIVATE, S, S, ""),
    ("read-only 9p tree", domain("<filesystem type='mount'><source dir='/srv/ro'/><target dir='ro'/><readonly/>"
                                 "</filesystem>"),
     "filesystem ro", "/srv/ro", T, CONTENT, S, S, ""),
    ("external virtiofsd", domain("<filesystem type='mount'><driver type='virtiofs' queue='1024'/>"
                                  "<source socket='/run/vfsd.sock'/><target dir='e'/></filesystem>"),
     "filesystem e", "/run/vfsd.sock", X, "", N, N, "outside libvirt"),
    ("tpm emulator", domain("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"),
     "tpm emulator state", f"/var/lib/libvirt/swtpm/{UUID}", T, PRIVATE, S, L, ""),
    ("tpm passthrough", domain("<tpm><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"),
     "tpm passthrough", "/dev/tpm0", C, PRIVATE, N, L, "device node"),
    ("hostdev usb", domain("<hostdev mode='subsystem' type='usb'><source><address bus='1' device='2'/></source>"
                           "</hostdev>"),
     "hostdev usb", "usb bus=1 device=2", C, PRIVATE, N, L, "device node"),
    ("hostdev pci", domain("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' "
                           "bus='0x02' slot='0x00' function='0x0'/></source></hostdev>"),
     "hostdev pci", "pci bus=0x02 domain=0x0000 function=0x0 slot=0x00", C, PRIVATE, N, L, "device node"),
    ("hostdev scsi shareable", domain("<hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/>"
                                      "<address bus='0' target='0' unit='0'/></source><shareable/></hostdev>"),
     "hostdev scsi", "scsi scsi_host0 bus=0 target=0 unit=0", C, SHARED, N, L, "device node"),
    ("hostdev mdev", domain("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
                            "<address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>"),
     "hostdev mdev", "mdev uuid=c2177883-f1bb-47f0-914d-32a22e3a8804", C, PRIVATE, N, L, "device node"),
    ("evdev input", domain("<input type='evdev'><source dev='/dev/input/event1'/></input>"),
     "input0 evdev", "/dev/input/event1", C, PRIVATE, N, L, "device node"),
    ("emulated input", domain("<input type='tablet' bus='usb'/>"), "input0 tablet", "input0", X, "", N, N, "emulated"),
    ("nvdimm file", domain("<memory model='nvdimm'><source><path>/srv/g.nvdimm</path></source>"
                           "<target><size unit='MiB'>64</size></target></memory>"),
     "memory0 nvdimm", "/srv/g.nvdimm", F, PRIVATE, S, L, ""),
    ("virtio-pmem file", domain("<memory model='virtio-pmem'><source><path>/srv/g.pmem</path></source></memory>"),
     "memory0 virtio-pmem", "/srv/g.pmem", F, PRIVATE, S, L, ""),
    ("dimm", domain("<memory model='dimm'><target><size unit='MiB'>64</size></target></memory>"),
     "memory0 dimm", "memory0 dimm", X, "", N, N, "RAM"),
    ("smartcard passthrough", domain("<smartcard mode='passthrough' type='unix'><source mode='bind' "
                                     "path='/var/lib/g.sc'/></smartcard>"),
     "smartcard0 passthrough", "/var/lib/g.sc", SO, PRIVATE, S, L, ""),
    ("smartcard host-certificates", domain("<smartcard mode='host-certificates'><certificate>a</certificate>"
                                           "<database>/etc/pki/nssdb</database></smartcard>"),
     "smartcard0 host-certificates", "/etc/pki/nssdb", X, "", N, L, "certificate database"),
    ("rng random", domain("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"),
     "rng0", "/dev/urandom", X, "", N, N, "entropy"),
    ("rng egd", domain("<rng model='virtio'><backend model='egd' type='unix'><source mode='connect' "
                       "path='/run/egd.sock'/></backend></rng>"),
     "rng0 egd", "/run/egd.sock", SO, PRIVATE, S, L, ""),
    ("shmem", domain("<shmem name='sh1'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"),
     "shmem0 sh1", "/dev/shm/sh1", X, "", N, N, "shared memory"),
    ("vhost-user interface", domain("<interface type='vhostuser'><source type='unix' path='/run/vu-net.sock' "
                                    "mode='client'/><model type='virtio'/></interface>"),
     "interface0 vhostuser", "/run/vu-net.sock", X, "", N, N, "vhost-user"),
    ("network interface", domain("<interface type='network'><source network='default'/></interface>"),
     "interface0 network", "interface0 network", X, "", N, L, "tap"),
    ("graphics socket", domain("<graphics type='vnc' socket='/var/lib/g.vnc'/>"),
     "graphics0 vnc", "/var/lib/g.vnc", X, "", N, L, "graphics socket"),
    ("vsock", domain("<vsock model='virtio'><cid auto='yes'/></vsock>"),
     "vsock0", "/dev/vhost-vsock", X, "", N, N, "vhost-vsock"),
    ("audio file", domain("<audio id='1' type='file' path='/srv/g.wav'/>"),
     "audio0 file", "/srv/g.wav", F, PRIVATE, S, L, ""),
    ("pstore", domain("<pstore backend='acpi-erst'><path>/var/lib/g.pstore</path><size unit='KiB'>8</size>"
                      "</pstore>"),
     "pstore0 acpi-erst", "/var/lib/g.pstore", F, PRIVATE, S, L, ""),
    ("lease", domain("<lease><lockspace>s</lockspace><key>k</key><target path='/var/lib/lease'/></lease>"),
     "lease0", "/var/lib/lease", X, "", N, N, "lease"),
    ("redirdev", domain("<redirdev bus='usb' type='spicevmc'/>"), "redirdev0 spicevmc", "redirdev0", X, "", N, N,
     "redirection"),
    ("emulated watchdog", domain("<watchdog model='i6300esb'/>"), "watchdog0", "watchdog0", X, "", N, N, "emulated"),
    ("kernel", domain(os="<kernel>/srv/boot/vmlinuz</kernel>"), "kernel", "/srv/boot/vmlinuz", F, CONTENT, S, L, ""),
    ("initrd", domain(os="<initrd>/srv/boot/initrd</initrd>"), "initrd", "/srv/boot/initrd", F, CONTENT, S, L, ""),
    ("dtb", domain(os="<dtb>/srv/boot/x.dtb</dtb>"), "dtb", "/srv/boot/x.dtb", F, CONTENT, S, L, ""),
    ("nvram", domain(os="<nvram>/var/lib/libvirt/qemu/nvram/g_VARS.fd</nvram>"), "nvram",
     "/var/lib/libvirt/qemu/nvram/g_VARS.fd", F, PRIVATE, S, L, ""),
    ("loader", domain(os="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"), "loader",
     "/usr/share/OVMF/OVMF_CODE.fd", X, "", N, L, "firmware"),
    ("slic table", domain(os="<acpi><table type='slic'>/srv/slic.dat</table></acpi>"), "acpi table slic0",
     "/srv/slic.dat", F, CONTENT, S, L, ""),
    ("fw_cfg blob", domain(extra="<sysinfo type='fwcfg'><entry name='opt/com.example/x' file='/srv/x.bin'/>"
                                 "</sysinfo>"),
     "fw_cfg opt/com.example/x", "/srv/x.bin", F, CONTENT, S, L, ""),
]


@pytest.mark.parametrize(("what", "xml", "device", "path", "kind", "label", "without", "with_driver", "reason"),
                         TABLE, ids=[row[0] for row in TABLE])
def test_every_device_class(what: str, xml: str, device: str, path: str, kind: ResourceKind, label: str,
                            without: Applier, with_driver: Applier, reason: str) -> None:
    spec = parse_domain(xml)
    for driver, applier in ((False, without), (True, with_driver)):
        decisions = {(d.resource.device, d.path): d for d in decide_labels(spec, LEVEL, SPEC, driver)}
        assert (device, path) in decisions, f"{what}: {sorted(decisions)}"
        d = decisions[(device, path)]
        assert d.resource.kind is kind, what
        assert (d.target, d.applier) == (label if d.resource.rclass is not ResourceClass.UNHANDLED else "", applier), \
            f"{what} (libvirt SELinux driver: {driver})"
        if d.applier is Applier.NOBODY or d.resource.rclass is ResourceClass.UNHANDLED:
            assert reason in d.reason, f"{what}: {d.reason!r}"
            assert d.reason, f"{what}: nothing labels it, and Query must say why"
        elif d.applier is Applier.LIBVIRT:
            assert "libvirt's SELinux driver" in d.reason


def test_every_device_of_the_definition_is_listed() -> None:
    xml = domain("<disk type='file'><source file='/img/a.img'/><target dev='vda'/></disk>"
                 "<controller type='usb' model='none'/><video><model type='none'/></video><memballoon model='none'/>"
                 "<sound model='ich9'/><panic model='isa'/><iommu model='intel'/><crypto model='virtio' type='qemu'>"
                 "<backend model='builtin'/></crypto><hub type='usb'/>")
    devices = {r.device for r in parse_domain(xml).resources}
    assert devices >= {"disk vda", "controller0", "video0", "memballoon0", "sound0", "panic0", "iommu0",
                       "crypto0", "hub0"}


def test_per_disk_relabel_no_and_own_label_are_honoured() -> None:
    xml = domain("<disk type='file'><source file='/img/keep.img'><seclabel model='selinux' relabel='no'/></source>"
                 "<target dev='vda'/></disk>"
                 "<disk type='file'><source file='/img/own.img'><seclabel model='selinux' relabel='yes'>"
                 "<label>system_u:object_r:virt_content_t:s0</label></seclabel></source><target dev='vdb'/></disk>"
                 "<serial type='file'><source path='/var/log/s.log'><seclabel model='selinux' relabel='no'/>"
                 "</source></serial>"
                 "<disk type='file'><source file='/img/dac.img'><seclabel model='dac' relabel='no'/></source>"
                 "<target dev='vdc'/></disk>")
    for driver in (False, True):
        got = {d.path: d for d in decide_labels(parse_domain(xml), LEVEL, SPEC, driver)}
        assert got["/img/keep.img"].applier is Applier.NOBODY and "relabel='no'" in got["/img/keep.img"].reason
        assert got["/var/log/s.log"].applier is Applier.NOBODY
        assert got["/img/own.img"].target == CONTENT and got["/img/own.img"].applier is not Applier.NOBODY
        assert got["/img/dac.img"].target == PRIVATE  # a DAC seclabel says nothing about SELinux


def test_a_per_disk_label_with_another_guests_pair_is_refused() -> None:
    xml = domain("<disk type='file'><source file='/img/x.img'><seclabel model='selinux' relabel='yes'>"
                 "<label>system_u:object_r:svirt_image_t:s0:c1,c2</label></seclabel></source>"
                 "<target dev='vda'/></disk>")
    with pytest.raises(InvalidArgument, match="another guest"):
        decide_labels(parse_domain(xml), LEVEL, SPEC, False)


@pytest.mark.parametrize(("seclabel", "driver", "relabels"), [
    ("", True, True),
    ("", False, False),
    ("<seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:s0:c4,c9</label>"
     "</seclabel>", True, True),
    # a static label defaults to relabel='no' (libvirt's rule): svirtd's old definitions
    ("<seclabel type='static' model='selinux'><label>system_u:system_r:svirt_t:s0:c4,c9</label></seclabel>",
     True, False),
    ("<seclabel type='none'/>", True, False),
    ("<seclabel type='dynamic' model='dac'/>", True, True),
])
def test_who_labels_follows_the_driver_and_the_seclabel(seclabel: str, driver: bool, relabels: bool) -> None:
    assert parse_domain(domain(extra=seclabel)).libvirt_relabels(driver) is relabels


def test_the_old_top_of_a_snapshot_stays_private_a_shared_base_is_read_only() -> None:
    """After an external snapshot the old top is a backing layer: it keeps the guest's pair when the guest
    held it privately (libvirt leaves it so; read-only content would open its data to every guest); a
    base the guest never held privately is read-only content."""
    xml = domain("<disk type='file'><driver type='qcow2'/><source file='/img/overlay.qcow2'/>"
                 "<backingStore type='file'><source file='/img/top.img'/>"
                 "<backingStore type='file'><source file='/img/base.img'/><backingStore/></backingStore>"
                 "</backingStore><target dev='vda'/></disk>")
    got = {d.path: d.target for d in decide_labels(parse_domain(xml), LEVEL, SPEC, False,
                                                   own_private=frozenset({"/img/top.img"}))}
    assert got == {"/img/overlay.qcow2": PRIVATE, "/img/top.img": PRIVATE, "/img/base.img": CONTENT}
