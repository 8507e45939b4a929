"""Domain XML -> the guest's resources, each with its class (pure).

Classes follow libvirt's sVirt driver: a private top image gets the guest's pair, ``<shareable/>``
images the image type at s0, read-only content (``<readonly/>``, cdrom, backing-chain layers,
kernel/initrd/dtb) the content type at s0. Unlike libvirt, directory trees shared with the guest
(virtiofs/9p ``<filesystem>``) and TPM state are covered too, and anything svirtd does not relabel is
listed with the reason instead of being skipped silently.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pydantic import BaseModel, ConfigDict

from .errors import InvalidArgument
from .models import Resource, ResourceClass, ResourceKind, canonical_uuid

SVIRT_XMLNS = "https://svirtd.org/xmlns/domain/1"
DEFAULT_SWTPM_DIR = "/var/lib/libvirt/swtpm"

_CLASS_STRENGTH = {
    ResourceClass.PRIVATE: 3,
    ResourceClass.SHARED: 2,
    ResourceClass.READONLY: 1,
    ResourceClass.UNHANDLED: 0,
}


class SecLabel(BaseModel):
    """A <seclabel model='selinux'> element as written in the domain."""

    model_config = ConfigDict(frozen=True)

    type: str  # dynamic | static | none
    relabel: bool
    label: str | None


class DomainSpec(BaseModel):
    """What svirtd needs to know about a domain, parsed from its XML."""

    model_config = ConfigDict(frozen=True)

    uuid: str
    name: str
    virt_type: str  # kvm, qemu...
    resources: tuple[Resource, ...]
    seclabels: tuple[SecLabel, ...] = ()
    interfaces: tuple[str, ...] = ()  # interface types, for containment profiles
    svirt_metadata: dict[str, str] = {}

    @property
    def is_tcg(self) -> bool:
        return self.virt_type == "qemu"


def parse_domain(xml_text: str, swtpm_dir: str = DEFAULT_SWTPM_DIR) -> DomainSpec:
    """Parse a libvirt domain definition. InvalidArgument if it is not one."""
    try:
        # Python 3.11's expat refuses external entities and caps entity expansion (billion laughs);
        # the XML comes from libvirt or the libvirt hook, never from an anonymous bus caller.
        root = ET.fromstring(xml_text)  # noqa: S314
    except ET.ParseError as exc:
        raise InvalidArgument(f"domain XML does not parse: {exc}") from exc
    if root.tag != "domain":
        raise InvalidArgument(f"expected a <domain> document, got <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    uuid_text = (root.findtext("uuid") or "").strip()
    if not name or not uuid_text:
        raise InvalidArgument("domain XML lacks <name> or <uuid>")
    try:
        uuid = canonical_uuid(uuid_text)
    except ValueError as exc:
        raise InvalidArgument(f"domain <uuid> {uuid_text!r} is not a UUID") from exc

    found: list[Resource] = []
    found += _os_resources(root)
    devices = root.find("devices")
    if devices is not None:
        for disk in devices.findall("disk"):
            found += _disk_resources(disk)
        for tag in ("serial", "console", "parallel", "channel"):
            for index, chardev in enumerate(devices.findall(tag)):
                found += _chardev_resources(chardev, f"{tag}{index}")
        for fs in devices.findall("filesystem"):
            found += _filesystem_resources(fs)
        for tpm in devices.findall("tpm"):
            found += _tpm_resources(tpm, uuid, swtpm_dir)
        for hostdev in devices.findall("hostdev"):
            found.append(_hostdev_resource(hostdev))
    return DomainSpec(
        uuid=uuid,
        name=name,
        virt_type=root.get("type", ""),
        resources=_merge(found),
        seclabels=tuple(_seclabels(root)),
        interfaces=tuple(i.get("type", "") for i in devices.findall("interface")) if devices is not None else (),
        svirt_metadata=_svirt_metadata(root),
    )


def _merge(found: list[Resource]) -> tuple[Resource, ...]:
    """One entry per path; when a guest names a path twice, the most private class wins."""
    by_path: dict[str, Resource] = {}
    unhandled: list[Resource] = []
    for res in found:
        if res.rclass is ResourceClass.UNHANDLED:
            unhandled.append(res)
            continue
        old = by_path.get(res.path)
        if old is None or _CLASS_STRENGTH[res.rclass] > _CLASS_STRENGTH[old.rclass]:
            by_path[res.path] = res
    return tuple(sorted(by_path.values(), key=lambda r: r.path)) + tuple(unhandled)


def _os_resources(root: ET.Element) -> list[Resource]:
    out: list[Resource] = []
    os_el = root.find("os")
    if os_el is None:
        return out
    for tag in ("kernel", "initrd", "dtb"):
        path = (os_el.findtext(tag) or "").strip()
        if path:
            out.append(Resource(path=path, device=tag, kind=ResourceKind.FILE, rclass=ResourceClass.READONLY))
    nvram = os_el.find("nvram")
    if nvram is not None and (nvram.text or "").strip():
        # Created from its template by libvirt on first start: may be absent before that.
        out.append(
            Resource(
                path=(nvram.text or "").strip(),
                device="nvram",
                kind=ResourceKind.FILE,
                rclass=ResourceClass.PRIVATE,
                optional=True,
            )
        )
    loader = os_el.find("loader")
    if loader is not None and (loader.text or "").strip():
        out.append(
            Resource(
                path=(loader.text or "").strip(),
                device="loader",
                kind=ResourceKind.NONE,
                rclass=ResourceClass.UNHANDLED,
                note="firmware code is system content, readable by every guest under its policy label",
            )
        )
    return out


def _disk_resources(disk: ET.Element) -> list[Resource]:
    target = disk.find("target")
    dev = target.get("dev", "?") if target is not None else "?"
    device_kind = disk.get("device", "disk")
    label = f"{device_kind} {dev}"
    source = disk.find("source")
    dtype = disk.get("type", "file")
    if source is None:
        return []  # e.g. an empty cdrom drive
    if disk.find("readonly") is not None or device_kind == "cdrom":
        rclass = ResourceClass.READONLY
    elif disk.find("shareable") is not None:
        rclass = ResourceClass.SHARED
    else:
        rclass = ResourceClass.PRIVATE
    optional = source.get("startupPolicy") in ("optional", "requisite")
    out: list[Resource] = []
    top = _storage_resource(dtype, source, label, rclass, optional)
    if top is None:
        return []
    out.append(top)
    # Backing chain: every layer below the top is read-only content.
    layer = disk.find("backingStore")
    depth = 1
    while layer is not None and layer.get("type"):
        layer_source = layer.find("source")
        if layer_source is not None:
            res = _storage_resource(
                layer.get("type", "file"), layer_source, f"{label} backing layer {depth}", ResourceClass.READONLY, False
            )
            if res is not None:
                out.append(res)
        layer = layer.find("backingStore")
        depth += 1
    return out


def _storage_resource(
    dtype: str, source: ET.Element, label: str, rclass: ResourceClass, optional: bool
) -> Resource | None:
    if dtype == "file":
        path = source.get("file")
        if not path:
            return None
        return Resource(path=path, device=label, kind=ResourceKind.FILE, rclass=rclass, optional=optional)
    if dtype == "block":
        path = source.get("dev")
        if not path:
            return None
        return Resource(path=path, device=label, kind=ResourceKind.BLOCK, rclass=rclass, optional=optional)
    reasons = {
        "network": f"network storage ({source.get('protocol', '?')}): nothing on this host carries its label",
        "volume": "storage pool volume: define the disk by file or block path to have it relabeled",
        "dir": "type='dir' disk is exported read-only through a synthesized FAT image",
        "nvme": "NVMe device assigned through VFIO",
        "vhostuser": "vhost-user disk served by another process",
    }
    where = source.get("file") or source.get("dev") or source.get("dir") or source.get("name") or label
    return Resource(
        path=where,
        device=label,
        kind=ResourceKind.NONE,
        rclass=ResourceClass.UNHANDLED,
        note=reasons.get(dtype, f"disk type {dtype!r} is not relabeled"),
    )


def _chardev_resources(chardev: ET.Element, device: str) -> list[Resource]:
    out: list[Resource] = []
    ctype = chardev.get("type", "")
    target = chardev.find("target")
    if target is not None and target.get("name"):
        device = f"{device} {target.get('name')}"
    for source in chardev.findall("source"):
        path = source.get("path")
        if not path:
            continue
        if ctype == "file":
            out.append(Resource(path=path, device=device, kind=ResourceKind.FILE,
                                rclass=ResourceClass.PRIVATE, optional=True))
        elif ctype == "unix":
            out.append(Resource(path=path, device=device, kind=ResourceKind.SOCKET,
                                rclass=ResourceClass.PRIVATE, optional=True))
        elif ctype in ("dev", "pipe"):
            out.append(Resource(path=path, device=device, kind=ResourceKind.NONE, rclass=ResourceClass.UNHANDLED,
                                note=f"host {ctype} chardev: label it with the policy if the guest must reach it"))
    log = chardev.find("log")
    if log is not None and log.get("file"):
        out.append(Resource(path=log.get("file", ""), device=f"{device} log", kind=ResourceKind.FILE,
                            rclass=ResourceClass.PRIVATE, optional=True))
    return out


def _filesystem_resources(fs: ET.Element) -> list[Resource]:
    ftype = fs.get("type", "mount")
    source = fs.find("source")
    target = fs.find("target")
    device = f"filesystem {target.get('dir', '?') if target is not None else '?'}"
    if source is None:
        return []
    if ftype != "mount" or not source.get("dir"):
        where = source.get("dir") or source.get("file") or source.get("name") or device
        return [Resource(path=where, device=device, kind=ResourceKind.NONE, rclass=ResourceClass.UNHANDLED,
                         note=f"filesystem type {ftype!r} is not relabeled")]
    rclass = ResourceClass.READONLY if fs.find("readonly") is not None else ResourceClass.PRIVATE
    return [Resource(path=source.get("dir", ""), device=device, kind=ResourceKind.TREE, rclass=rclass)]


def _tpm_resources(tpm: ET.Element, uuid: str, swtpm_dir: str) -> list[Resource]:
    backend = tpm.find("backend")
    if backend is None:
        return []
    if backend.get("type") == "emulator":
        # libvirt keeps swtpm state in <swtpm_dir>/<uuid>; created on first start.
        return [Resource(path=f"{swtpm_dir.rstrip('/')}/{uuid}", device="tpm emulator state",
                         kind=ResourceKind.TREE, rclass=ResourceClass.PRIVATE, optional=True)]
    device = backend.find("device")
    path = device.get("path", "/dev/tpm0") if device is not None else "/dev/tpm0"
    return [Resource(path=path, device="tpm passthrough", kind=ResourceKind.NONE, rclass=ResourceClass.UNHANDLED,
                     note="host TPM passthrough: the device node keeps its policy label")]


def _hostdev_resource(hostdev: ET.Element) -> Resource:
    kind = hostdev.get("type", "?")
    address = hostdev.find("source/address")
    where = " ".join(f"{k}={v}" for k, v in sorted(address.attrib.items())) if address is not None else "?"
    return Resource(path=f"{kind} {where}", device=f"hostdev {kind}", kind=ResourceKind.NONE,
                    rclass=ResourceClass.UNHANDLED,
                    note=f"{kind.upper()} host device: assigned by libvirt (VFIO); "
                         "svirtd does not relabel host devices")


def _seclabels(root: ET.Element) -> list[SecLabel]:
    out: list[SecLabel] = []
    for el in root.findall("seclabel"):
        if el.get("model", "selinux") != "selinux":
            continue
        out.append(SecLabel(type=el.get("type", "dynamic"), relabel=el.get("relabel", "yes") != "no",
                            label=(el.findtext("label") or "").strip() or None))
    return out


def _svirt_metadata(root: ET.Element) -> dict[str, str]:
    el = root.find(f"metadata/{{{SVIRT_XMLNS}}}isolation")
    if el is None:
        return {}
    return {k: v for k, v in el.attrib.items() if isinstance(v, str)}
