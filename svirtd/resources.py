"""Domain XML -> every resource of the guest, each with its class and who can label it (pure).

Classes follow libvirt's sVirt driver: a private top image gets the guest's pair, ``<shareable/>``
images the image type at s0, read-only content (``<readonly/>``, cdrom, backing-chain layers,
kernel/initrd/dtb, ACPI tables, fw_cfg blobs) the content type at s0.

Every device of the definition is listed, also those nothing on the host labels (emulated devices,
network storage...), with the reason. Two flags say who CAN label a resource: libvirt's own SELinux
driver (all it labels when qemu starts and at hotplug, device nodes included) and svirtd (files and
directory trees it can open safely; never host device nodes, which udev and libvirt own). Who
actually does is decided per guest in label_plan.py.

One parser per device element, in DEVICE_PARSERS: a new device class is a new function and a line in
the table, not a branch somewhere else.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict

from . import xml_limits
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

# Why svirtd leaves a host device node to libvirt: it must carry the guest's label exactly while qemu
# holds it, udev recreates it with its own label, and labeling a node the definition names wrongly
# (/dev/mem as an "input device") would hand the host to the guest.
DEVICE_NODE_NOTE = ("host device node: libvirt's SELinux driver labels it with the guest's pair when qemu "
                    "starts and restores it after; svirtd never relabels device nodes")
EMULATED_NOTE = "emulated by qemu: nothing on the host to label"


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

    @classmethod
    def build(cls, **fields: Any) -> DomainSpec:
        """From the parser's values, already of the fields' types: not validated again, and one set of
        field names shared by all (a validated DomainSpec copies its tuples and holds its own set: 1.2 KB
        instead of 0.36 KB, and svirtd keeps one per guest)."""
        return cls.model_construct(cast("set[str]", _ALL_SET), **fields)  # frozen: never added to

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> DomainSpec:
        """BaseModel.model_copy would add to the shared set of field names: a new one is built instead."""
        if deep:
            return super().model_copy(deep=True)
        return DomainSpec.build(**{**self.__dict__, **(update or {})})

    @property
    def is_tcg(self) -> bool:
        return self.virt_type == "qemu"

    def libvirt_relabels(self, driver_active: bool) -> bool:
        """Does libvirt's SELinux driver label this guest's resources when it runs? Yes where the
        driver is active, unless the definition's seclabel says relabel='no' or type='none'."""
        if not driver_active:
            return False
        return all(s.relabel and s.type != "none" for s in self.seclabels)

    @property
    def running_label(self) -> str | None:
        """The process label libvirt chose, as found in a live definition (static or generated)."""
        for sec in self.seclabels:
            if sec.label and sec.type in ("static", "dynamic"):
                return sec.label
        return None

    def labeled(self) -> tuple[Resource, ...]:
        return tuple(r for r in self.resources if r.rclass is not ResourceClass.UNHANDLED)


def parse_domain(xml_text: str, swtpm_dir: str = DEFAULT_SWTPM_DIR) -> DomainSpec:
    """Parse a libvirt domain definition. InvalidArgument if it is not one."""
    # Untrusted (the hook hands svirtd whatever the definition says): size, depth, devices and DTDs
    # are refused before a tree is built.
    root = xml_limits.parse(xml_text)
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
    found += _sysinfo_resources(root)
    devices = root.find("devices")
    context = _Context(uuid=uuid, swtpm_dir=swtpm_dir)
    if devices is not None:
        counts: dict[str, int] = {}
        for el in devices:
            parser = DEVICE_PARSERS.get(el.tag)
            index = counts.get(el.tag, 0)
            counts[el.tag] = index + 1
            if parser is not None:
                found += parser(el, index, context)
            elif el.tag != "emulator":
                found.append(_nothing(f"{el.tag}{index}", f"{el.tag}{index}", EMULATED_NOTE))
    return DomainSpec.build(
        uuid=uuid,
        name=name,
        virt_type=root.get("type", ""),
        resources=tuple(_shared(r) for r in _merge(found)),
        seclabels=tuple(_seclabels(root)),
        interfaces=tuple(i.get("type", "") for i in devices.findall("interface")) if devices is not None else (),
        svirt_metadata=_svirt_metadata(root),
    )


_ALL_SET = frozenset(DomainSpec.model_fields)  # every field is given by the parser


class _Context(BaseModel):
    uuid: str
    swtpm_dir: str


def _merge(found: list[Resource]) -> tuple[Resource, ...]:
    """One entry per labeled path; when a guest names a path twice, the most private class wins (and a
    per-device relabel='no' on any of its names keeps svirtd's hands off it)."""
    by_path: dict[str, Resource] = {}
    unhandled: list[Resource] = []
    for res in found:
        if res.rclass is ResourceClass.UNHANDLED:
            unhandled.append(res)
            continue
        old = by_path.get(res.path)
        if old is None:
            by_path[res.path] = res
            continue
        keep = res if _CLASS_STRENGTH[res.rclass] > _CLASS_STRENGTH[old.rclass] else old
        by_path[res.path] = keep.model_copy(update={"relabel": old.relabel and res.relabel,
                                                    "optional": old.optional and res.optional})
    return tuple(sorted(by_path.values(), key=lambda r: r.path)) + tuple(unhandled)


# Emulated devices (controllers, inputs, video...) are the same Resource in nearly every definition: one
# frozen object shared by all the DomainSpecs that hold it (svirtd keeps one per guest: issue 19 measured
# ~9 KB of a diskless guest's 11 KB here). Bounded: emptied when full, as the parse cache of manager.py.
SHARED_KEPT = 1024
_SHARED: dict[Resource, Resource] = {}


def _shared(res: Resource) -> Resource:
    if res.rclass is not ResourceClass.UNHANDLED:  # a file: its own path, nothing to share
        return res
    kept = _SHARED.get(res)
    if kept is not None:
        return kept
    if len(_SHARED) >= SHARED_KEPT:
        _SHARED.clear()
    _SHARED[res] = res
    return res


def _nothing(path: str, device: str, note: str, libvirt_labels: bool = False) -> Resource:
    """A device with nothing svirtd labels."""
    return Resource(path=path, device=device, kind=ResourceKind.NONE, rclass=ResourceClass.UNHANDLED, note=note,
                    svirtd_labels=False, libvirt_labels=libvirt_labels)


def _device_node(path: str, device: str, rclass: ResourceClass = ResourceClass.PRIVATE) -> Resource:
    """A host device node the guest uses: libvirt's driver labels it, svirtd only reports it."""
    return Resource(path=path, device=device, kind=ResourceKind.CHAR, rclass=rclass, note=DEVICE_NODE_NOTE,
                    svirtd_labels=False, libvirt_labels=True)


def _with_seclabel(res: Resource, source: ET.Element | None) -> Resource:
    """Apply a per-device <seclabel model='selinux'> (inside <source>): relabel='no' or a label of its own."""
    if source is None:
        return res
    for sec in source.findall("seclabel"):
        if sec.get("model", "selinux") != "selinux":
            continue
        if sec.get("relabel", "yes") == "no":
            return res.model_copy(update={"relabel": False})
        label = (sec.findtext("label") or "").strip()
        if label:
            return res.model_copy(update={"label": label})
    return res


# -- <os>, <sysinfo> ------------------------------------------------------------------------------


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
        out.append(Resource(path=(nvram.text or "").strip(), device="nvram", kind=ResourceKind.FILE,
                            rclass=ResourceClass.PRIVATE, optional=True))
    loader = os_el.find("loader")
    if loader is not None and (loader.text or "").strip():
        # libvirt labels it read-only content; svirtd leaves system firmware (under /usr) as it is.
        out.append(_nothing((loader.text or "").strip(), "loader",
                            "firmware code is system content, readable by every guest under its policy label",
                            libvirt_labels=True))
    for index, table in enumerate(os_el.findall("acpi/table")):
        path = (table.text or "").strip()
        if path:
            out.append(Resource(path=path, device=f"acpi table {table.get('type', '?')}{index}",
                                kind=ResourceKind.FILE, rclass=ResourceClass.READONLY))
    return out


def _sysinfo_resources(root: ET.Element) -> list[Resource]:
    out: list[Resource] = []
    for sysinfo in root.findall("sysinfo"):
        if sysinfo.get("type") != "fwcfg":
            continue
        for entry in sysinfo.findall("entry"):
            path = entry.get("file")
            if path:
                out.append(Resource(path=path, device=f"fw_cfg {entry.get('name', '?')}", kind=ResourceKind.FILE,
                                    rclass=ResourceClass.READONLY))
    return out


# -- <devices> --------------------------------------------------------------------------------------


def _disk(disk: ET.Element, _index: int, _ctx: _Context) -> list[Resource]:
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
    top = _storage_resource(dtype, source, label, rclass, optional)
    if top is None:
        return []
    chain = disk.find("backingStore")
    if chain is None and top.kind in (ResourceKind.FILE, ResourceKind.BLOCK):
        # No <backingStore> at all: libvirt probes the image for one when qemu starts (an empty
        # <backingStore/> says there is none). svirtd probes the same way (label_plan, relabel).
        driver = disk.find("driver")
        fmt = driver.get("type", "") if driver is not None else ""
        top = top.model_copy(update={"probe_format": fmt})
    out: list[Resource] = [_with_seclabel(top, source)]
    # Backing chain: every layer below the top is read-only content.
    layer, depth = chain, 1
    while layer is not None and layer.get("type"):
        layer_source = layer.find("source")
        if layer_source is not None:
            res = _storage_resource(layer.get("type", "file"), layer_source, f"{label} backing layer {depth}",
                                    ResourceClass.READONLY, False)
            if res is not None:
                out.append(_with_seclabel(res.model_copy(update={"backing": True}), layer_source))
        layer = layer.find("backingStore")
        depth += 1
    return out


_STORAGE_NOTES = {
    "network": "network storage ({protocol}): nothing on this host carries its label",
    "volume": "storage pool volume: define the disk by file or block path to have it relabeled",
    "dir": "type='dir' disk is exported read-only through a synthesized FAT image",
    "vhostuser": "vhost-user disk served by another process: label its socket with that service's policy",
}


def _storage_resource(dtype: str, source: ET.Element, label: str, rclass: ResourceClass,
                      optional: bool) -> Resource | None:
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
    if dtype == "nvme":
        address = source.find("address")
        where = _address(address)
        return _nothing(f"nvme {where}", label, "NVMe controller assigned through VFIO: " + DEVICE_NODE_NOTE,
                        libvirt_labels=True)
    where = source.get("file") or source.get("dev") or source.get("dir") or source.get("name") \
        or source.get("path") or label
    note = _STORAGE_NOTES.get(dtype, f"disk type {dtype!r} is not relabeled").format(
        protocol=source.get("protocol", "?"))
    return _nothing(where, label, note)


def _chardev(chardev: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    out: list[Resource] = []
    ctype = chardev.get("type", "")
    device = f"{chardev.tag}{index}"
    target = chardev.find("target")
    if target is not None and target.get("name"):
        device = f"{device} {target.get('name')}"
    return out + _chardev_sources(chardev, ctype, device)


def _chardev_sources(el: ET.Element, ctype: str, device: str) -> list[Resource]:
    """The host side of a character device (serial, channel, smartcard passthrough, rng egd...)."""
    out: list[Resource] = []
    for source in el.findall("source"):
        path = source.get("path")
        if not path:
            continue
        if ctype == "file":
            res = Resource(path=path, device=device, kind=ResourceKind.FILE, rclass=ResourceClass.PRIVATE,
                           optional=True)
        elif ctype == "unix":
            res = Resource(path=path, device=device, kind=ResourceKind.SOCKET, rclass=ResourceClass.PRIVATE,
                           optional=True)
        elif ctype == "dev":
            res = _device_node(path, device)
        elif ctype == "pipe":
            res = _nothing(path, device, "named pipes (path.in/path.out): libvirt's SELinux driver labels them at "
                                         "start; svirtd never relabels FIFOs", libvirt_labels=True)
        else:
            continue
        out.append(_with_seclabel(res, source))
    if not out:
        out.append(_nothing(ctype or "?", device, f"{ctype or 'unknown'} character device: no file on the host"))
    log = el.find("log")
    if log is not None and log.get("file"):
        out.append(Resource(path=log.get("file", ""), device=f"{device} log", kind=ResourceKind.FILE,
                            rclass=ResourceClass.PRIVATE, optional=True))
    return out


def _filesystem(fs: ET.Element, _index: int, _ctx: _Context) -> list[Resource]:
    ftype = fs.get("type", "mount")
    source = fs.find("source")
    target = fs.find("target")
    device = f"filesystem {target.get('dir', '?') if target is not None else '?'}"
    if source is None:
        return [_nothing(device, device, "filesystem without a host source")]
    if source.get("socket"):
        return [_nothing(source.get("socket", ""), device,
                         "virtiofs daemon started outside libvirt: its socket and tree are that service's")]
    if ftype != "mount" or not source.get("dir"):
        where = source.get("dir") or source.get("file") or source.get("name") or device
        return [_nothing(where, device, f"filesystem type {ftype!r} is not relabeled")]
    rclass = ResourceClass.READONLY if fs.find("readonly") is not None else ResourceClass.PRIVATE
    # libvirt's driver does not label shared directory trees: svirtd does, always.
    return [_with_seclabel(Resource(path=source.get("dir", ""), device=device, kind=ResourceKind.TREE,
                                    rclass=rclass, libvirt_labels=False), source)]


def _tpm(tpm: ET.Element, _index: int, ctx: _Context) -> list[Resource]:
    backend = tpm.find("backend")
    if backend is None:
        return []
    btype = backend.get("type", "")
    if btype == "emulator":
        # libvirt keeps swtpm state in <swtpm_dir>/<uuid>; created on first start.
        return [Resource(path=f"{ctx.swtpm_dir.rstrip('/')}/{ctx.uuid}", device="tpm emulator state",
                         kind=ResourceKind.TREE, rclass=ResourceClass.PRIVATE, optional=True)]
    if btype == "external":
        source = backend.find("source")
        return [_nothing(source.get("path", "?") if source is not None else "?", "tpm external",
                         "swtpm started outside libvirt: its socket is that service's")]
    device = backend.find("device")
    path = device.get("path", "/dev/tpm0") if device is not None else "/dev/tpm0"
    return [_device_node(path, "tpm passthrough")]


def _hostdev(hostdev: ET.Element, _index: int, _ctx: _Context) -> list[Resource]:
    kind = hostdev.get("type", "?")
    address = hostdev.find("source/address")
    adapter = hostdev.find("source/adapter")
    where = _address(address)
    if adapter is not None:
        where = f"{adapter.get('name', '?')} {where}"
    if hostdev.get("mode") == "capabilities":
        block = hostdev.findtext("source/block") or hostdev.findtext("source/char") or where
        return [_device_node(block.strip(), f"hostdev {kind}")]
    rclass = ResourceClass.READONLY if hostdev.find("readonly") is not None else \
        ResourceClass.SHARED if hostdev.find("shareable") is not None else ResourceClass.PRIVATE
    return [_device_node(f"{kind} {where}", f"hostdev {kind}", rclass)]


def _input(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    source = el.find("source")
    if el.get("type") in ("evdev", "passthrough") and source is not None:
        path = source.get("dev") or source.get("evdev") or "?"
        return [_device_node(path, f"input{index} {el.get('type')}")]
    return [_nothing(f"input{index}", f"input{index} {el.get('type', '?')}", EMULATED_NOTE)]


def _memory(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    model = el.get("model", "?")
    path = (el.findtext("source/path") or "").strip()
    device = f"memory{index} {model}"
    if model in ("nvdimm", "virtio-pmem") and path:
        # A file (or a DAX device) holding the guest's persistent memory.
        if path.startswith("/dev/"):
            return [_device_node(path, device)]
        return [Resource(path=path, device=device, kind=ResourceKind.FILE, rclass=ResourceClass.PRIVATE)]
    return [_nothing(device, device, "guest RAM from the host's memory: nothing on the host to label")]


def _smartcard(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    mode = el.get("mode", "?")
    device = f"smartcard{index} {mode}"
    if mode == "passthrough":
        return _chardev_sources(el, el.get("type", ""), device)
    database = (el.findtext("database") or "").strip()
    if database:
        return [_nothing(database, device, "certificate database read by qemu: libvirt's SELinux driver labels "
                                           "it read-only at start; svirtd leaves it to the host's policy",
                         libvirt_labels=True)]
    return [_nothing(device, device, "smartcard of the host's NSS database: nothing on the host to label")]


def _rng(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    backend = el.find("backend")
    device = f"rng{index}"
    if backend is not None and backend.get("model") == "egd":
        return _chardev_sources(backend, backend.get("type", ""), f"{device} egd")
    path = (backend.text or "").strip() if backend is not None else ""
    return [_nothing(path or "/dev/urandom", device,
                     "host entropy device: every guest may read it under its policy label")]


def _shmem(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    name = el.get("name", "?")
    server = el.find("server")
    note = (f"shared memory '{name}': shared with every guest that names it, by design (svirtd gives it no "
            "guest's pair)")
    if server is not None and server.get("path"):
        return [_nothing(server.get("path", ""), f"shmem{index} {name}", note + "; its server socket is "
                         "ivshmem-server's")]
    return [_nothing(f"/dev/shm/{name}", f"shmem{index} {name}", note)]  # noqa: S108 - shown, never opened


def _interface(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    itype = el.get("type", "?")
    device = f"interface{index} {itype}"
    if itype == "vhostuser":
        source = el.find("source")
        path = source.get("path", "?") if source is not None else "?"
        return [_nothing(path, device, "vhost-user socket served by another process (a switch): label it with "
                                       "that service's policy")]
    if itype == "hostdev":
        return [_device_node(_address(el.find("source/address")), device)]
    return [_nothing(device, device, "network interface: libvirt labels its tap descriptor; network containment "
                                     "is the profile's (nwfilter) and the policy's", libvirt_labels=True)]


def _graphics(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    gtype = el.get("type", "?")
    socket = el.get("socket") or next((lst.get("socket") for lst in el.findall("listen") if lst.get("socket")), None)
    device = f"graphics{index} {gtype}"
    if socket:
        return [_nothing(socket, device, "graphics socket qemu creates in libvirt's per-guest directory (labeled "
                                         "by libvirt)", libvirt_labels=True)]
    return [_nothing(device, device, "graphics over the network (or none): nothing on the host to label")]


def _lease(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    target = el.find("target")
    path = target.get("path", "?") if target is not None else "?"
    return [_nothing(path, f"lease{index}", "lock manager lease (sanlock): used by the host's lock manager, not qemu")]


def _vsock(_el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    return [_nothing("/dev/vhost-vsock", f"vsock{index}",
                     "libvirt opens /dev/vhost-vsock itself and hands qemu the descriptor")]


def _audio(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    if el.get("type") == "file" and el.get("path"):
        return [Resource(path=el.get("path", ""), device=f"audio{index} file", kind=ResourceKind.FILE,
                         rclass=ResourceClass.PRIVATE, optional=True)]
    return [_nothing(f"audio{index}", f"audio{index} {el.get('type', '?')}", "audio backend of the host: nothing "
                                                                             "to label")]


def _pstore(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    path = (el.findtext("path") or "").strip()
    if not path:
        return [_nothing(f"pstore{index}", f"pstore{index}", EMULATED_NOTE)]
    return [Resource(path=path, device=f"pstore{index} {el.get('backend', '?')}", kind=ResourceKind.FILE,
                     rclass=ResourceClass.PRIVATE, optional=True)]


def _redirdev(el: ET.Element, index: int, _ctx: _Context) -> list[Resource]:
    return [_nothing(f"redirdev{index}", f"redirdev{index} {el.get('type', '?')}",
                     "USB redirection over the graphics/network channel: nothing on the host to label")]


DeviceParser = Callable[[ET.Element, int, _Context], list[Resource]]

DEVICE_PARSERS: dict[str, DeviceParser] = {
    "disk": _disk,
    "serial": _chardev,
    "console": _chardev,
    "parallel": _chardev,
    "channel": _chardev,
    "filesystem": _filesystem,
    "tpm": _tpm,
    "hostdev": _hostdev,
    "input": _input,
    "memory": _memory,
    "smartcard": _smartcard,
    "rng": _rng,
    "shmem": _shmem,
    "interface": _interface,
    "graphics": _graphics,
    "lease": _lease,
    "vsock": _vsock,
    "audio": _audio,
    "pstore": _pstore,
    "redirdev": _redirdev,
}


def _address(address: ET.Element | None) -> str:
    if address is None:
        return "?"
    return " ".join(f"{k}={v}" for k, v in sorted(address.attrib.items()))


def _seclabels(root: ET.Element) -> list[SecLabel]:
    out: list[SecLabel] = []
    for el in root.findall("seclabel"):
        if el.get("model", "selinux") != "selinux":
            continue
        kind = el.get("type", "dynamic")
        # libvirt's defaults: a static label is not relabeled unless asked, a dynamic one is.
        relabel = el.get("relabel", "no" if kind == "static" else "yes") != "no"
        out.append(SecLabel(type=kind, relabel=relabel, label=(el.findtext("label") or "").strip() or None))
    return out


def _svirt_metadata(root: ET.Element) -> dict[str, str]:
    el = root.find(f"metadata/{{{SVIRT_XMLNS}}}isolation")
    if el is None:
        return {}
    return {k: v for k, v in el.attrib.items() if isinstance(v, str)}
